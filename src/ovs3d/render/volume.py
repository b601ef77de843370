"""Volume rendering as pure functions (NeRF quadrature, Eq. 1 of 3D-OVS).

Dense layout: ``R`` rays by ``N`` samples, with a boolean ``valid`` mask for samples that were skipped
(outside the box or in empty space); skipped samples have zero density and therefore zero weight.
"""

from __future__ import annotations

import torch
from torch import Tensor


def alpha_from_density(sigmas: Tensor, deltas: Tensor, distance_scale: float = 1.0) -> Tensor:
    """Opacity of each sample, ``alpha = 1 - exp(-sigma * delta * distance_scale)``.

    Args:
        sigmas: ``[R, N]`` non-negative densities.
        deltas: ``[R, N]`` segment lengths.
        distance_scale: TensoRF's ``distance_scale`` (25) multiplying every segment length.

    Returns:
        ``[R, N]`` opacities in [0, 1).
    """
    return 1.0 - torch.exp(-sigmas * deltas * distance_scale)


def render_weights(alphas: Tensor) -> tuple[Tensor, Tensor]:
    """Compositing weights ``w_i = T_i * alpha_i`` with ``T_i = prod_{j<i} (1 - alpha_j)``.

    Args:
        alphas: ``[R, N]`` opacities along each ray, front to back.

    Returns:
        ``weights`` ``[R, N]`` and ``transmittance`` ``[R, N]`` (light reaching each sample).
    """
    ones = torch.ones_like(alphas[..., :1])
    # +1e-10 as in NeRF/TensoRF: keeps the product differentiable when alpha reaches 1.
    trans = torch.cumprod(torch.cat([ones, 1.0 - alphas + 1e-10], dim=-1), dim=-1)[..., :-1]
    return alphas * trans, trans


def accumulate(weights: Tensor, values: Tensor) -> Tensor:
    """Weighted sum of per-sample values along each ray.

    Args:
        weights: ``[R, N]`` compositing weights.
        values: ``[R, N, D]`` per-sample values (colours, features...).

    Returns:
        ``[R, D]``.
    """
    return torch.einsum("rn,rnd->rd", weights, values)


def accumulate_packed(weights: Tensor, values: Tensor, ray_indices: Tensor, n_rays: int) -> Tensor:
    """Weighted sum for samples stored packed (only the samples that matter).

    Args:
        weights: ``[M]`` weights of the kept samples.
        values: ``[M, D]`` their values.
        ray_indices: ``[M]`` long, the ray each sample belongs to.
        n_rays: number of rays ``R``.

    Returns:
        ``[R, D]``; rays without samples get zeros.
    """
    out = values.new_zeros(n_rays, values.shape[-1])
    return out.index_add(0, ray_indices, weights[:, None] * values)


def composite_background(rgb: Tensor, acc: Tensor, background: Tensor) -> Tensor:
    """A ray's colour over a background: ``rgb + (1 - acc) * background``.

    Args:
        rgb: ``[R, 3]`` accumulated colours (:func:`accumulate`; implicitly over black).
        acc: ``[R]`` opacities (sum of the weights).
        background: ``[R, 3]`` or ``[3]`` background colour.

    Returns:
        ``[R, 3]``.
    """
    return rgb + (1.0 - acc)[..., None] * background


def expected_background_mse(rgb: Tensor, acc: Tensor, target: Tensor, scale: float = 1.0) -> Tensor:
    """The mean squared error over a uniform random background, in expectation, in closed form.

    ``E_b mean((rgb + (1 - acc) b - target)^2)`` for ``b ~ U(0, s)^3`` per ray equals the error over the grey
    ``s / 2`` plus ``Var(b) (1 - acc)^2 = s^2 (1 - acc)^2 / 12`` per channel: the random background's pull
    towards opacity without its sampling noise.

    Args:
        rgb: ``[R, 3]`` accumulated colours (over black).
        acc: ``[R]`` opacities.
        target: ``[R, 3]`` pixel colours.
        scale: ``s``, the upper end of the background's range.

    Returns:
        ``[]`` the expected mean over rays and channels.
    """
    grey = composite_background(rgb, acc, torch.full((3,), scale / 2, dtype=rgb.dtype, device=rgb.device))
    return torch.mean((grey - target) ** 2) + scale**2 * torch.mean((1.0 - acc) ** 2) / 12.0


def expected_depth(weights: Tensor, t_mid: Tensor) -> Tensor:
    """Expected ray parameter ``sum_i w_i t_i`` ``[R]`` from ``weights`` ``[R, N]`` and ``t_mid`` ``[R, N]``."""
    return (weights * t_mid).sum(-1)


def depth_spread(weights: Tensor, t_mid: Tensor, eps: float = 1e-10) -> Tensor:
    """How far each ray's weight spreads along it: the standard deviation of the ray parameter under the
    ray's normalised weights ``[R]`` (0 when it sits at one sample or the ray carries no weight).

    A diagnostic of the fog that :func:`distortion_loss` penalises (which also counts the bins' lengths).

    Args:
        weights: ``[R, N]`` compositing weights.
        t_mid: ``[R, N]`` sample positions (ray parameter).
        eps: floor of a ray's total weight.

    Returns:
        ``[R]`` spread, in ray-parameter units.
    """
    w = weights / weights.sum(-1, keepdim=True).clamp_min(eps)
    mean = (w * t_mid).sum(-1, keepdim=True)
    return (w * (t_mid - mean).pow(2)).sum(-1).sqrt()


def distortion_loss(weights: Tensor, t_mid: Tensor, dt: Tensor) -> Tensor:
    """Mip-NeRF 360's distortion regulariser, in O(N) per ray with prefix sums.

    ``L = sum_ij w_i w_j |t_i - t_j| + 1/3 sum_i w_i^2 dt_i``: small when each ray's weight sits in one
    compact interval, i.e. it removes the semi-transparent "fog" that forward-facing fits leave in front of
    surfaces, which sharpens depth and makes the weight-carrying samples few.

    Args:
        weights: ``[R, N]`` compositing weights, samples sorted along each ray.
        t_mid: ``[R, N]`` sample positions (ray parameter).
        dt: ``[R, N]`` bin lengths.

    Returns:
        Scalar, mean over rays.
    """
    wt = weights * t_mid
    w_before = torch.cumsum(weights, -1) - weights  # sum_{j<i} w_j
    wt_before = torch.cumsum(wt, -1) - wt  # sum_{j<i} w_j t_j
    # sum over ordered pairs = 2 * sum_i w_i * sum_{j<i} w_j (t_i - t_j)
    inter = 2.0 * (weights * (t_mid * w_before - wt_before)).sum(-1)
    intra = (weights.pow(2) * dt).sum(-1) / 3.0
    return (inter + intra).mean()
