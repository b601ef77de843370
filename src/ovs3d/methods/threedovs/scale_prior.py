"""Priors on the Selection Volume (ours, off by default): which CLIP scale each pixel ray should read, from DINO
(the window that fits the pixel's object) or from agreement across views (the finest window other views confirm)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ovs3d.methods.targets import voxel_consensus


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


def agreement_scales(
    relevancy: Tensor, xyz: Tensor, weights: Tensor, aabb: Tensor, resolution, threshold: float = 0.5
) -> Tensor:
    """Preferred CLIP scale of every pixel ray: the finest window whose reading the other views confirm.

    A small window sees a small object that a large one averages away, but a small window also has the least
    context, so with a real CLIP it can misread plain surfaces (a tenth of a wall, upsampled). Which of the two
    happens at a point is visible across views: each view's vote (the argmax label of its normalised relevancy
    at that scale) is pooled over every training ray that reaches the same voxel of the reconstruction
    (:func:`~ovs3d.methods.targets.voxel_consensus`), and a ray's agreement at a scale is the share of that pool
    that votes as the ray does. The preferred scale is the finest one whose agreement reaches ``threshold``
    (a majority by default); when none does, the scale with the highest agreement.

    Args:
        relevancy: ``[R, S, C]`` per-view normalised relevancies, scale 0 = largest window.
        xyz: ``[R, K, 3]`` sample positions of the rays.
        weights: ``[R, K]`` their compositing weights (0 for padding).
        aabb: ``[2, 3]`` box of the voxel grid.
        resolution: voxels per axis ``(G_x, G_y, G_z)``.
        threshold: share of the pooled votes that must agree with the ray's own.

    Returns:
        ``[R]`` int64 scale indices.
    """
    r, s, c = relevancy.shape
    own = relevancy.argmax(-1)  # [R, S]
    votes = F.one_hot(own, c).to(torch.float32).reshape(r, s * c)
    pooled = voxel_consensus(xyz, weights, votes, aabb, resolution).reshape(r, s, c)
    agree = pooled.gather(-1, own[..., None])[..., 0]  # [R, S]
    confirmed = agree >= threshold
    finest = (s - 1) - confirmed.flip(-1).to(torch.int64).argmax(-1)  # last confirmed scale
    return torch.where(confirmed.any(-1), finest, agree.argmax(-1))
