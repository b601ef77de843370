"""Training data of the semantic stage, with the frozen geometry marched once.

Density never changes in the 3D-OVS semantic stage, so the compositing weights of every training ray are
fixed. Instead of marching each ray from scratch at every step (the reference's 482 samples per ray),
each ray is marched once here and only its ``K`` heaviest samples (position and weight) are kept; a
training step then evaluates the appearance, feature and selection branches at ``K`` points per ray.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ovs3d.io.scene import Scene
from ovs3d.methods.radiance import march
from ovs3d.methods.reconstruction import TrainedField
from ovs3d.methods.scene_rays import ray_near, rays_at
from ovs3d.render.rays import pixel_grid
from ovs3d.utils.console import progress


@dataclass
class RaySamples:
    """The weight-carrying samples of a set of rays.

    Attributes:
        xyz: ``[R, K, 3]`` sample positions (field frame).
        weights: ``[R, K]`` compositing weights (0 for padding), rescaled per ray to sum to the weight the
            full render composites, so ``Σ w c`` over the kept samples estimates the full colour.
        viewdirs: ``[R, 3]`` unit ray directions.
        captured: ``[R]`` fraction of each ray's total weight that the ``K`` samples keep.
        depth: ``[R]`` expected ray parameter ``Σ w t`` over *all* marched samples (for depth maps).
    """

    xyz: Tensor
    weights: Tensor
    viewdirs: Tensor
    captured: Tensor
    depth: Tensor

    _FIELDS = ("xyz", "weights", "viewdirs", "captured", "depth")

    def __len__(self) -> int:
        return self.xyz.shape[0]

    def index(self, idx: Tensor) -> RaySamples:
        """Subset of rays ``idx`` ``[B]``."""
        return RaySamples(*(getattr(self, k)[idx] for k in self._FIELDS))

    def to(self, device) -> RaySamples:
        """Move to ``device``."""
        return RaySamples(*(getattr(self, k).to(device) for k in self._FIELDS))

    @staticmethod
    def cat(items: list[RaySamples]) -> RaySamples:
        """Concatenate along rays."""
        return RaySamples(*(torch.cat([getattr(i, k) for i in items]) for k in RaySamples._FIELDS))


@torch.no_grad()
def top_samples(
    trained: TrainedField, rays_o: Tensor, rays_d: Tensor, near: float, k: int, chunk: int = 4096
) -> RaySamples:
    """March rays through the frozen density and keep each ray's ``k`` heaviest samples.

    Args:
        trained: the reconstructed field.
        rays_o: ``[R, 3]`` origins (field frame).
        rays_d: ``[R, 3]`` directions.
        near: minimum ray parameter.
        k: samples kept per ray.
        chunk: rays marched at once.

    Returns:
        :class:`RaySamples` (samples below the marching weight threshold are zero-weight padding).
    """
    device = trained.field.aabb.device
    out = []
    thr = trained.config.march.weight_threshold
    for i in range(0, rays_o.shape[0], chunk):
        o, d = rays_o[i : i + chunk].to(device), rays_d[i : i + chunk].to(device)
        m = march(trained.field, trained.occupancy, o, d, trained.config.march, near=near)
        kk = min(k, m.weights.shape[1])
        w, idx = m.weights.topk(kk, dim=1)  # [r, K]
        idx, order = idx.sort(dim=1)  # front to back
        w = torch.gather(w, 1, order)
        xyz = torch.gather(m.xyz, 1, idx[..., None].expand(-1, -1, 3))
        w = torch.where(w > thr, w, torch.zeros_like(w))
        total = m.weights.sum(1).clamp_min(1e-8)
        captured = w.sum(1) / total
        # Rescale the kept weights to what the full render composites (every sample above the threshold):
        # truncated weights would darken colours, and the joint phase's RGB loss would then brighten the
        # appearance to compensate, which ruins full renders (~33 -> ~19 dB on tabletop seed 0).
        composited = torch.where(m.weights > thr, m.weights, torch.zeros_like(m.weights)).sum(1)
        w = w * (composited / w.sum(1).clamp_min(1e-8))[:, None]
        depth = (m.weights * m.t_mid).sum(1)  # the same expectation as render_rgb's depth
        out.append(RaySamples(xyz.cpu(), w.cpu(), F.normalize(d, dim=-1).cpu(), captured.cpu(), depth.cpu()))
    return RaySamples.cat(out)


def view_pixel_samples(
    trained: TrainedField, scene: Scene, views: list[int], downscale: float, k: int, desc: str = "caching ray samples"
) -> RaySamples:
    """Samples of every pixel ray of ``views`` at ``1/downscale``, views concatenated, row-major."""
    w, h = scene.image_size(downscale)
    u, v = pixel_grid(w, h)
    near = ray_near(scene)
    parts = []
    for view in progress(views, desc=desc):
        o, d = rays_at(scene, view, downscale, u, v)
        parts.append(top_samples(trained, o, d, near, k))
    return RaySamples.cat(parts)


def token_grid(width: int, height: int, stride: int) -> tuple[Tensor, Tensor]:
    """Image coordinates of the centres of the ``stride`` x ``stride`` cells of a feature map.

    A ray through a cell centre stands for the cell (the reference averages the 8x8 rays of the cell,
    which for a pinhole camera is the same ray up to its length).

    Returns:
        ``u`` ``[h * w]`` and ``v`` ``[h * w]`` with ``h = height // stride``, ``w = width // stride``.
    """
    gh, gw = height // stride, width // stride
    v, u = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32), indexing="ij")
    return (u.reshape(-1) + 0.5) * stride, (v.reshape(-1) + 0.5) * stride


def view_token_samples(
    trained: TrainedField, scene: Scene, views: list[int], downscale: float, stride: int, k: int
) -> RaySamples:
    """Samples of the rays through the DINO cells of ``views`` (images at ``1/downscale``), row-major."""
    w, h = scene.image_size(downscale)
    u, v = token_grid(w, h, stride)
    near = ray_near(scene)
    parts = []
    for view in progress(views, desc="caching DINO-cell rays"):
        o, d = rays_at(scene, view, downscale, u, v)
        parts.append(top_samples(trained, o, d, near, k))
    return RaySamples.cat(parts)


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


def dino_purity(dino: Tensor, radii: list[int], shift: float) -> Tensor:
    """Share of each cell's square neighbourhood that DINO calls the same thing, per neighbourhood size.

    ``purity[y, x, s]`` is the fraction of the in-image cells ``q`` within ``radii[s]`` cells of ``(y, x)``
    (Chebyshev distance) with ``cos(dino[y, x], dino[q]) > shift`` — the similarity test FDA uses (Eq. 13).

    Args:
        dino: ``[h, w, Dd]`` DINO features of one view (any norm).
        radii: ``S`` neighbourhood half-sizes in cells (``0`` = the cell alone).
        shift: similarity threshold ``b``.

    Returns:
        ``[h, w, S]`` float32 in (0, 1].
    """
    f = F.normalize(dino.float(), dim=-1)
    h, w, _ = f.shape
    rmax = max(radii)
    same = torch.zeros(len(radii), h, w)
    count = torch.zeros(len(radii), h, w)
    ones = torch.ones(h, w)
    for dy in range(-rmax, rmax + 1):
        for dx in range(-rmax, rmax + 1):
            ys, yd = slice(max(0, dy), h + min(0, dy)), slice(max(0, -dy), h + min(0, -dy))
            xs, xd = slice(max(0, dx), w + min(0, dx)), slice(max(0, -dx), w + min(0, -dx))
            sim = torch.zeros(h, w)
            valid = torch.zeros(h, w)
            sim[yd, xd] = ((f[yd, xd] * f[ys, xs]).sum(-1) > shift).float()
            valid[yd, xd] = ones[ys, xs]
            for s, r in enumerate(radii):
                if max(abs(dy), abs(dx)) <= r:
                    same[s] += sim
                    count[s] += valid
    return (same / count.clamp_min(1)).permute(1, 2, 0)


def preferred_scales(purity: Tensor, threshold: float = 0.5) -> Tensor:
    """Index of the scale each cell should read its CLIP feature from, from DINO purity.

    The Selection Volume is meant to pick "the scale indicative of the object size within a patch"
    (3D-OVS §3.1): the largest window that still mostly shows the cell's own DINO segment, or the smallest
    window when none does. Scales are ordered largest window first, as the pixel CLIP features.

    Args:
        purity: ``[..., S]`` from :func:`dino_purity` (scale 0 = largest window).
        threshold: a window is "mostly its own segment" when its purity reaches this share.

    Returns:
        ``[...]`` int64 scale indices.
    """
    n = purity.shape[-1]
    pure = purity >= threshold  # [..., S]
    first = torch.where(pure.any(-1), pure.float().argmax(-1), torch.full(pure.shape[:-1], n - 1))
    return first.long()


def pixel_scale_prior(
    dino: Tensor,
    clip_size: tuple[int, int],
    clip_downscale: float,
    dino_downscale: float,
    stride: int,
    patches: list[int],
    shift: float,
    threshold: float = 0.5,
) -> Tensor:
    """Preferred CLIP scale of every pixel of a view's CLIP grid, from that view's DINO features.

    Args:
        dino: ``[gh, gw, Dd]`` DINO cells of the view (images at ``1/dino_downscale``, ``stride`` px cells).
        clip_size: ``(w, h)`` of the CLIP feature grid (images at ``1/clip_downscale``).
        clip_downscale: downscale of the CLIP grid.
        dino_downscale: downscale of the DINO input image.
        stride: DINO cell size in pixels of its input image.
        patches: Alg. 1 window side of each scale in CLIP-grid pixels, largest first.
        shift: DINO similarity threshold (FDA's ``b``).
        threshold: purity a window needs (:func:`preferred_scales`).

    Returns:
        ``[h * w]`` int64 scale indices, row-major.
    """
    gh, gw = dino.shape[:2]
    cells_per_px = clip_downscale / (dino_downscale * stride)  # DINO cells per CLIP-grid pixel
    radii = [int(p * cells_per_px / 2) for p in patches]
    best = preferred_scales(dino_purity(dino, radii, shift), threshold)  # [gh, gw]
    w, h = clip_size
    rows = ((torch.arange(h) + 0.5) * cells_per_px).long().clamp(0, gh - 1)
    cols = ((torch.arange(w) + 0.5) * cells_per_px).long().clamp(0, gw - 1)
    return best[rows[:, None], cols[None, :]].reshape(-1)
