"""A dense CRF over a rendered view's label scores, guided by the same render's colour and depth.

The semantic field's label borders come from 2D evidence painted over windows, so a border pixel is often given
its neighbour's label (bench/RESULTS.md §4, round 13); the field's own colour and depth renders are sharp there.
Mean-field inference of a fully connected CRF (Krähenbühl & Koltun 2011) with a Potts model over a window, whose
pairwise kernel is a joint bilateral one on the render's colour and relative depth, moves such pixels to the
label of the neighbours that look like them and lie at their depth. Pure tensor functions on one image.
"""

from __future__ import annotations

import torch
from torch import Tensor


def joint_bilateral(
    values: Tensor,
    rgb: Tensor,
    depth: Tensor,
    radius: int,
    sigma_rgb: float,
    sigma_depth: float,
    skip_self: bool = False,
) -> Tensor:
    """Window average of ``values`` with joint bilateral weights from colour and relative depth.

    The weight of neighbour ``q`` for pixel ``p`` (``|q − p|∞ ≤ radius``) is
    ``exp(−|q − p|² / 2 radius² − |rgb_q − rgb_p|² / 2 σ_rgb² − ((d_q − d_p) / d_p)² / 2 σ_depth²)``;
    neighbours outside the image are left out.

    Args:
        values: ``[H, W, C]`` what is averaged.
        rgb: ``[H, W, 3]`` guiding colour in [0, 1].
        depth: ``[H, W]`` guiding depth (any positive ray parameter; compared relatively).
        radius: window half-size in pixels.
        sigma_rgb: colour bandwidth (``inf``: colour ignored).
        sigma_depth: relative-depth bandwidth (``inf``: depth ignored).
        skip_self: leave the pixel itself out (the CRF's message passing).

    Returns:
        ``[H, W, C]`` float32 weighted means.
    """
    h, w, _ = values.shape
    values, rgb, depth = values.float(), rgb.float(), depth.float()
    num = torch.zeros_like(values)
    den = torch.zeros(h, w, 1, dtype=values.dtype, device=values.device)
    spatial = 2.0 * max(radius, 1) ** 2
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if skip_self and dy == 0 and dx == 0:
                continue
            # pixels of the destination slice ``yd, xd`` read their neighbour at (+dy, +dx) in ``ys, xs``
            ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h + min(-dy, 0))
            xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w + min(-dx, 0))
            d_rgb = ((rgb[ys, xs] - rgb[yd, xd]) ** 2).sum(-1)
            d_dep = ((depth[ys, xs] - depth[yd, xd]) / depth[yd, xd].clamp_min(1e-6)) ** 2
            log_w = -(dy * dy + dx * dx) / spatial - d_rgb / (2 * sigma_rgb**2) - d_dep / (2 * sigma_depth**2)
            wgt = torch.exp(log_w)[..., None]
            num[yd, xd] += wgt * values[ys, xs]
            den[yd, xd] += wgt
    return num / den.clamp_min(1e-12)


def dense_crf(
    logits: Tensor,
    rgb: Tensor,
    depth: Tensor,
    weight: float,
    radius: int,
    sigma_rgb: float,
    sigma_depth: float,
    iters: int,
) -> Tensor:
    """Label probabilities of a dense CRF over one view by mean-field updates.

    ``Q ← softmax(logits + weight · M(Q))`` ``iters`` times from ``Q = softmax(logits)``, where ``M`` is the
    :func:`joint_bilateral` average of the neighbours' ``Q`` (the pixel itself left out): a Potts model that
    rewards agreeing with the neighbours of like colour and depth, normalised per pixel.

    Args:
        logits: ``[H, W, C]`` unary scores (e.g. CLIP's logit scale × the label cosines).
        rgb: ``[H, W, 3]`` rendered colour.
        depth: ``[H, W]`` rendered depth.
        weight: pairwise weight, in logit units.
        radius: window half-size in pixels.
        sigma_rgb: colour bandwidth.
        sigma_depth: relative-depth bandwidth.
        iters: mean-field iterations (0: ``softmax(logits)``).

    Returns:
        ``[H, W, C]`` float32 probabilities.
    """
    logits = logits.float()
    q = torch.softmax(logits, -1)
    for _ in range(iters):
        message = joint_bilateral(q, rgb, depth, radius, sigma_rgb, sigma_depth, skip_self=True)
        q = torch.softmax(logits + weight * message, -1)
    return q


def fill_from_nearest(values: Tensor, keep: Tensor) -> Tensor:
    """Each pixel outside ``keep`` takes the values of the nearest pixel inside it (Euclidean, in pixels; ties
    as :func:`scipy.ndimage.distance_transform_edt` breaks them).

    Used on a view's label scores where a ray hits no surface: its rendered feature is empty, so its scores are
    only the labels' offsets, not evidence about the pixel.

    Args:
        values: ``[H, W, C]`` per-pixel values.
        keep: ``[H, W]`` bool, the pixels whose values stand.

    Returns:
        ``[H, W, C]``: ``values`` itself where every pixel or none is kept.
    """
    if bool(keep.all()) or not bool(keep.any()):
        return values
    from scipy.ndimage import distance_transform_edt

    _, (iy, ix) = distance_transform_edt(~keep.cpu().numpy(), return_indices=True)
    iy, ix = torch.from_numpy(iy).to(values.device), torch.from_numpy(ix).to(values.device)
    return values[iy, ix]
