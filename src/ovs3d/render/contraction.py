"""Scene contraction for unbounded 360° scenes (mip-NeRF 360, Eq. 10) and the ray samples that go with it.

Space within the unit ball is kept as it is; everything outside is squeezed into the shell between radius 1
and 2: ``contract(x) = x`` for ``|x| <= 1``, else ``(2 - 1/|x|) x/|x|``. A field over the box ``[-2, 2]^3`` of
contracted space then covers the whole world, with the detail where the cameras look (the normalised scene
puts them on the unit sphere around the object) and ever coarser cells towards infinity.

Samples are placed uniformly in a *ray distance* ``s(t)`` that is linear up to ``T`` (the inner ball's
diameter seen from the camera sphere) and then uniform in disparity: ``s(t) = t`` for ``t <= T``, else
``2T - T^2/t`` (continuous with slope 1 at ``T``, ``s -> 2T`` as ``t -> inf``). Equal steps in ``s`` are
roughly equal steps in contracted space, so the sample count follows the contracted grid's cells.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ovs3d.io.scene import CONTRACTED_AABB

__all__ = ["CONTRACTED_AABB", "contract", "contracted_sample_count", "contracted_samples", "uncontract"]

LINEAR_DISTANCE = 2.0
"""``T``: ray distance sampled linearly (the unit ball's diameter, from a camera on the unit sphere)."""


def contract(x: Tensor) -> Tensor:
    """mip-NeRF 360's contraction.

    Args:
        x: ``[..., 3]`` world points.

    Returns:
        ``[..., 3]`` points with norm below 2.
    """
    norm = x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.where(norm <= 1.0, x, (2.0 - 1.0 / norm) * x / norm)


def uncontract(y: Tensor, max_norm: float = 2.0 - 1e-4) -> Tensor:
    """Inverse of :func:`contract` (points at the outer shell, norm 2, are infinitely far: clamped before it).

    Args:
        y: ``[..., 3]`` contracted points.
        max_norm: norms are clamped to this first.

    Returns:
        ``[..., 3]`` world points.
    """
    norm = y.norm(dim=-1, keepdim=True).clamp(1e-12, max_norm)
    return torch.where(norm <= 1.0, y, y / norm / (2.0 - norm))


def ray_distance(t: Tensor, linear: float = LINEAR_DISTANCE) -> Tensor:
    """``s(t)``: distance along a ray, linear to ``linear`` and uniform in disparity beyond (``s < 2·linear``)."""
    return torch.where(t <= linear, t, 2.0 * linear - linear * linear / t.clamp_min(1e-12))


def ray_distance_inverse(s: Tensor, linear: float = LINEAR_DISTANCE) -> Tensor:
    """Inverse of :func:`ray_distance` (``s`` clamped below ``2·linear``)."""
    s = s.clamp(max=2.0 * linear * (1.0 - 1e-6))
    return torch.where(s <= linear, s, linear * linear / (2.0 * linear - s))


def contracted_samples(
    t_near: Tensor,
    n_samples: int,
    perturb: bool,
    generator: torch.Generator | None = None,
    linear: float = LINEAR_DISTANCE,
) -> tuple[Tensor, Tensor]:
    """Samples from ``t_near`` to infinity, uniform in :func:`ray_distance`.

    Args:
        t_near: ``[R]`` start distances (along unit directions).
        n_samples: samples per ray ``N``.
        perturb: jitter inside each bin (training); else bin centres.
        generator: RNG for the jitter.
        linear: ``T`` of :func:`ray_distance`.

    Returns:
        ``t_mid`` ``[R, N]`` sample distances and ``dt`` ``[R, N]`` their bin lengths, both in distance units.
    """
    s_near = ray_distance(t_near, linear)
    s_far = torch.full_like(s_near, 2.0 * linear)
    edges_u = torch.linspace(0.0, 1.0, n_samples + 1, dtype=t_near.dtype, device=t_near.device)
    s_edges = s_near[:, None] + (s_far - s_near)[:, None] * edges_u[None]  # [R, N + 1]
    t_edges = ray_distance_inverse(s_edges, linear)
    if perturb:
        u = torch.rand(t_near.shape[0], n_samples, generator=generator, device=t_near.device, dtype=t_near.dtype)
    else:
        u = torch.full((t_near.shape[0], n_samples), 0.5, dtype=t_near.dtype, device=t_near.device)
    s_mid = s_edges[:, :-1] + u * (s_edges[:, 1:] - s_edges[:, :-1])
    return ray_distance_inverse(s_mid, linear), t_edges[:, 1:] - t_edges[:, :-1]


def contracted_sample_count(
    t_near: Tensor, voxel_size: Tensor, step_ratio: float, max_samples: int, linear: float = LINEAR_DISTANCE
) -> int:
    """Samples per ray so that a step in :func:`ray_distance` is ``step_ratio`` cells of the contracted grid.

    Args:
        t_near: ``[R]`` start distances.
        voxel_size: ``[3]`` cell edges of the grid over contracted space.
        step_ratio: step in cells.
        max_samples: upper bound.
        linear: ``T``.

    Returns:
        ``N`` (at least 2).
    """
    span = float((2.0 * linear - ray_distance(t_near, linear)).max()) if t_near.numel() else 0.0
    n = int(span / (float(voxel_size.min()) * step_ratio) + 0.999)
    return max(2, min(max_samples, n))
