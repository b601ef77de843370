"""Rendering a TensoRF field: ray marching with empty-space skipping, then compositing.

:func:`march` places samples, drops those outside the box or in unoccupied voxels *before* querying the
field, evaluates density only at the rest and returns dense ``[R, N]`` weights; :func:`render_rgb`
evaluates appearance only where the weight is above a threshold (TensoRF's ``rayMarch_weight_thres``).
The same marching result serves the semantic stage, which caches the weight-carrying samples of each ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ovs3d.field.occupancy import query_occupancy
from ovs3d.field.tensorf import TensoRFField
from ovs3d.render.contraction import contract, contracted_sample_count, contracted_samples
from ovs3d.render.rays import ray_aabb_intersect
from ovs3d.render.sampling import samples_per_ray, stratified_samples
from ovs3d.render.volume import accumulate_packed, alpha_from_density, render_weights
from ovs3d.utils.config import rule


@dataclass
class MarchConfig:
    """How rays are marched."""

    step_ratio: float = field(default=0.5, metadata=rule(gt=0))
    """Step length in voxels of the current grid (TensoRF: 0.5)."""
    distance_scale: float = field(default=25.0, metadata=rule(gt=0))
    """Multiplier of segment lengths in the alpha computation (TensoRF: 25)."""
    weight_threshold: float = field(default=1e-4, metadata=rule(ge=0, lt=1))
    """Samples with a compositing weight below this skip the appearance branch (TensoRF: 1e-4)."""
    max_samples: int = field(default=1024, metadata=rule(ge=1, le=2**20))
    """Upper bound on uniform samples per ray."""


@dataclass
class MarchResult:
    """Samples of a batch of rays after marching.

    Attributes:
        xyz: ``[R, N, 3]`` sample positions.
        weights: ``[R, N]`` compositing weights (0 for skipped samples).
        t_mid: ``[R, N]`` sample ray parameters.
        valid: ``[R, N]`` bool, samples whose density was evaluated.
        n_samples: uniform candidates per ray ``N``.
        dt: ``[R, N]`` bin lengths (ray parameter).
    """

    xyz: Tensor
    weights: Tensor
    t_mid: Tensor
    valid: Tensor
    n_samples: int
    dt: Tensor


def march(
    field: TensoRFField,
    occupancy: Tensor | None,
    rays_o: Tensor,
    rays_d: Tensor,
    cfg: MarchConfig,
    near: Tensor | float = 0.0,
    perturb: bool = False,
    generator: torch.Generator | None = None,
) -> MarchResult:
    """March rays through the field's box, evaluating density only in occupied voxels.

    A field with ``contracted`` set (unbounded scenes) is marched from ``near`` to infinity in world space,
    its samples contracted into the box (:mod:`ovs3d.render.contraction`); ``xyz`` is then in contracted space.

    Args:
        field: the radiance field (density branch used).
        occupancy: ``[G_z, G_y, G_x]`` bool grid over ``field.aabb`` or ``None`` (no skipping).
        rays_o: ``[R, 3]`` origins (world or NDC).
        rays_d: ``[R, 3]`` directions.
        cfg: marching settings.
        near: minimum ray parameter (scalar or ``[R]``).
        perturb: stratified jitter (training).
        generator: RNG for the jitter.

    Returns:
        A :class:`MarchResult`.
    """
    aabb = field.aabb
    voxel = (aabb[1] - aabb[0]) / field.resolution.to(aabb.dtype)
    near_t = torch.as_tensor(near, dtype=rays_o.dtype, device=rays_o.device)
    if getattr(field, "contracted", False):
        # Unbounded scene: world rays from near to infinity, samples uniform in contracted ray distance,
        # positions contracted into the field's [-2, 2]^3 box (render/contraction.py).
        norm = rays_d.norm(dim=-1)  # ray parameters are in units of |rays_d| (camera depth)
        start = (near_t * norm).expand(rays_o.shape[0]) if near_t.dim() == 0 else near_t * norm
        n = contracted_sample_count(start, voxel, cfg.step_ratio, cfg.max_samples)
        dist_mid, dist_dt = contracted_samples(start, n, perturb, generator)
        t_mid, dt = dist_mid / norm[:, None], dist_dt / norm[:, None]
        xyz = contract(rays_o[:, None, :] + t_mid[..., None] * rays_d[:, None, :])
        inside = torch.ones_like(t_mid, dtype=torch.bool)
    else:
        t_near, t_far = ray_aabb_intersect(rays_o, rays_d, aabb)
        t_near = torch.maximum(t_near, near_t)
        n = samples_per_ray(rays_d, t_near, t_far, voxel, cfg.step_ratio, cfg.max_samples)
        t_mid, dt = stratified_samples(t_near, t_far, n, perturb, generator)  # [R, N]
        xyz = rays_o[:, None, :] + t_mid[..., None] * rays_d[:, None, :]  # [R, N, 3]
        inside = ((xyz >= aabb[0]) & (xyz <= aabb[1])).all(-1) & (t_far > t_near)[:, None]  # [R, N]
    valid = inside.clone()
    if occupancy is not None and inside.any():
        valid[inside] = query_occupancy(occupancy, aabb, xyz[inside])
    sigmas = torch.zeros_like(t_mid)
    if valid.any():
        sigmas = sigmas.masked_scatter(valid, field.density(xyz[valid]))
    deltas = dt * rays_d.norm(dim=-1, keepdim=True)
    alphas = alpha_from_density(sigmas, deltas, cfg.distance_scale)
    weights, _ = render_weights(alphas)
    return MarchResult(xyz=xyz, weights=weights, t_mid=t_mid, valid=valid, n_samples=n, dt=dt)


def render_rgb(field: TensoRFField, marched: MarchResult, rays_d: Tensor, cfg: MarchConfig) -> dict[str, Tensor]:
    """Composite colour, depth and opacity from a marching result.

    Args:
        field: the radiance field (appearance branch used).
        marched: output of :func:`march` for the same rays.
        rays_d: ``[R, 3]`` ray directions (normalised into view directions).
        cfg: marching settings (weight threshold).

    Returns:
        ``rgb`` ``[R, 3]``, ``depth`` ``[R]`` (expected ray parameter), ``acc`` ``[R]`` (opacity),
        ``n_density`` and ``n_app`` (number of density/appearance evaluations, scalars).
    """
    w = marched.weights
    keep = w > cfg.weight_threshold  # [R, N]
    ray_idx = keep.nonzero()[:, 0]
    n_rays = w.shape[0]
    viewdirs = F.normalize(rays_d, dim=-1)
    if ray_idx.numel():
        feats = field.app_features(marched.xyz[keep])
        colors = field.rgb(feats, viewdirs[ray_idx])
        rgb = accumulate_packed(w[keep], colors, ray_idx, n_rays)
    else:
        rgb = w.new_zeros(n_rays, 3)
    return {
        "rgb": rgb,
        "depth": (w * marched.t_mid).sum(-1),
        "acc": w.sum(-1),
        "n_density": marched.valid.sum(),
        "n_app": keep.sum(),
    }
