"""Training targets shared by the semantic methods: per-pixel CLIP targets and DINO patches."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def patch_indices(
    n_views: int, grid_h: int, grid_w: int, patch: int, n_patches: int, generator: torch.Generator
) -> Tensor:
    """Random square patches of cells: ``[n_patches, patch * patch]`` flat indices into the views' cells.

    Each patch picks a random view and a uniformly random top-left corner (the reference's patch
    sampler); patches larger than the grid are clipped to it.
    """
    ph, pw = min(patch, grid_h), min(patch, grid_w)
    view = torch.randint(0, n_views, (n_patches,), generator=generator)
    top = torch.randint(0, grid_h - ph + 1, (n_patches,), generator=generator)
    left = torch.randint(0, grid_w - pw + 1, (n_patches,), generator=generator)
    dy, dx = torch.meshgrid(torch.arange(ph), torch.arange(pw), indexing="ij")
    rows = top[:, None] + dy.reshape(1, -1)
    cols = left[:, None] + dx.reshape(1, -1)
    return view[:, None] * (grid_h * grid_w) + rows * grid_w + cols


def normalized_clip_targets(features: np.ndarray) -> Tensor:
    """Per-scale L2-normalised pixel CLIP features of one view: ``[S, h, w, D]`` -> ``[h * w, S, D]`` float16."""
    t = torch.from_numpy(np.asarray(features, dtype=np.float32))
    t = F.normalize(t, dim=-1)
    s, h, w, d = t.shape
    return t.permute(1, 2, 0, 3).reshape(h * w, s, d).to(torch.float16)
