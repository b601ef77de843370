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


def edge_aware_targets(
    targets: Tensor,
    rgb: Tensor,
    depth: Tensor,
    radius: int,
    sigma_rgb: float,
    sigma_depth: float,
    chunk: int = 256,
) -> Tensor:
    """One view's pixel CLIP targets averaged over neighbours of like colour and depth, then re-normalised.

    A pixel's CLIP window straddles the border of the object it shows, so its feature leans towards the
    neighbour's; the photo and the reconstruction's depth are sharp there. The
    :func:`~ovs3d.render.crf.joint_bilateral` average (the pixel itself included) replaces each pixel's feature
    by that of its neighbours on the same side of a colour or depth edge, per scale.

    Args:
        targets: ``[h * w, S, D]`` per-scale unit features of one view, row-major.
        rgb: ``[h, w, 3]`` the view's photo in [0, 1] at the targets' resolution.
        depth: ``[h, w]`` the reconstruction's depth of the view's pixel rays (positive).
        radius: window half-size in pixels.
        sigma_rgb: colour bandwidth.
        sigma_depth: relative-depth bandwidth.
        chunk: feature channels filtered at once (memory).

    Returns:
        ``[h * w, S, D]`` unit features, ``targets``' dtype.
    """
    from ovs3d.render.crf import joint_bilateral

    h, w, _ = rgb.shape
    n, s, d = targets.shape
    flat = targets.reshape(h, w, s * d)
    out = torch.cat(
        [
            joint_bilateral(flat[..., i : i + chunk], rgb, depth, radius, sigma_rgb, sigma_depth)
            for i in range(0, s * d, chunk)
        ],
        dim=-1,
    )
    return F.normalize(out.reshape(n, s, d), dim=-1).to(targets.dtype)


def voxel_consensus(
    xyz: Tensor, weights: Tensor, values: Tensor, aabb: Tensor, resolution, eps: float = 1e-8
) -> Tensor:
    """Per-ray values pooled across rays in a voxel grid: what every ray that reaches a point says about it.

    Each ray's value is splatted into the voxels of its samples with the samples' compositing weights; a
    voxel's value is the weighted mean of what reached it; each ray then reads back the weighted mean of its
    samples' voxels. Rays from many views that end on the same surface thus share one value, so evidence
    that one view alone shows (or misses) is outvoted by the others. A ray without weight keeps its own.

    Args:
        xyz: ``[R, K, 3]`` sample positions in the frame of ``aabb``.
        weights: ``[R, K]`` compositing weights (0 for padding).
        values: ``[R, C]`` per-ray values (any float dtype; pooled in float32).
        aabb: ``[2, 3]`` box the grid spans; samples outside are clamped to its border voxels.
        resolution: voxels per axis ``(G_x, G_y, G_z)``.
        eps: smallest weight that counts.

    Returns:
        ``[R, C]`` float32 pooled values.
    """
    res = torch.as_tensor(list(resolution), dtype=torch.long)
    lo, hi = aabb[0].float(), aabb[1].float()
    cell = ((xyz.float() - lo) / (hi - lo) * res).long()
    cell = torch.minimum(cell.clamp_min(0), res - 1)  # [R, K, 3]
    flat = (cell[..., 2] * res[1] + cell[..., 1]) * res[0] + cell[..., 0]  # [R, K]
    # Only the voxels that samples reach are stored (a dense grid at the field's resolution can hold 10^7).
    occupied, slot = torch.unique(flat.reshape(-1), return_inverse=True)
    slot = slot.reshape(flat.shape)  # [R, K]
    n_c = values.shape[-1]
    w = weights.float()
    vals = values.float()
    # One sample slot at a time: memory stays [R, C], not [R, K, C].
    num = torch.zeros(len(occupied), n_c)
    for k in range(slot.shape[1]):
        num.index_add_(0, slot[:, k], w[:, k, None] * vals)
    den = torch.zeros(len(occupied)).index_add_(0, slot.reshape(-1), w.reshape(-1))
    voxel = num / den.clamp_min(eps)[:, None]  # [V_occupied, C]
    total = w.sum(1)  # [R]
    pooled = torch.zeros_like(vals)
    for k in range(slot.shape[1]):
        pooled += w[:, k, None] * voxel[slot[:, k]]
    pooled /= total.clamp_min(eps)[:, None]
    return torch.where((total > eps)[:, None], pooled, vals)
