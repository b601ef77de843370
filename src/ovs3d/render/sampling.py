"""Sample placement along rays (pure functions)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def samples_per_ray(
    rays_d: Tensor, t_near: Tensor, t_far: Tensor, voxel_size: Tensor, step_ratio: float, max_samples: int = 2048
) -> int:
    """Number of uniform samples so that the step is ``step_ratio`` voxels on the longest ray of the batch.

    Args:
        rays_d: ``[R, 3]`` directions.
        t_near: ``[R]`` entry parameters.
        t_far: ``[R]`` exit parameters.
        voxel_size: ``[3]`` voxel edge lengths of the grid being marched.
        step_ratio: step length in voxels (TensoRF: 0.5).
        max_samples: upper bound.

    Returns:
        The sample count ``N`` (at least 2).
    """
    span = (rays_d * (t_far - t_near).clamp_min(0)[:, None] / voxel_size).norm(dim=-1)  # [R] voxels crossed
    n = int(math.ceil(float(span.max()) / step_ratio)) if span.numel() else 2
    return max(2, min(max_samples, n))


def stratified_samples(
    t_near: Tensor, t_far: Tensor, n_samples: int, perturb: bool, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Stratified sample positions between ``t_near`` and ``t_far``.

    Each ray's interval is cut into ``n_samples`` equal bins; the sample sits at a uniformly random point of
    its bin when ``perturb`` (training) and at the bin centre otherwise (evaluation, deterministic).

    Args:
        t_near: ``[R]``.
        t_far: ``[R]`` (rays with ``t_far <= t_near`` get zero-length bins).
        n_samples: samples per ray ``N``.
        perturb: jitter inside the bins.
        generator: random generator for the jitter.

    Returns:
        ``t_mid`` ``[R, N]`` sample parameters and ``dt`` ``[R, N]`` bin lengths (in ray-parameter units).
    """
    span = (t_far - t_near).clamp_min(0.0)  # [R]
    step = span / n_samples  # [R]
    base = torch.arange(n_samples, dtype=t_near.dtype, device=t_near.device)  # [N]
    if perturb:
        u = torch.rand(t_near.shape[0], n_samples, generator=generator, device=t_near.device, dtype=t_near.dtype)
    else:
        u = torch.full((t_near.shape[0], n_samples), 0.5, dtype=t_near.dtype, device=t_near.device)
    t_mid = t_near[:, None] + (base[None, :] + u) * step[:, None]
    return t_mid, step[:, None].expand(-1, n_samples)
