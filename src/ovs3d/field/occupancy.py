"""Occupancy (alpha) grid for empty-space skipping.

A boolean voxel grid over the field's box marks where the density could matter. Samples that fall in
unoccupied voxels are skipped before the field is queried, which is where most of the ray-marching time
goes. It plays the role of TensoRF's alpha mask (updated a few times during training, from the current
density; dilated by one voxel so that thin surfaces are never lost).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def voxel_centers(aabb: Tensor, resolution: Sequence[int]) -> Tensor:
    """Voxel-centre world points ``[G_z, G_y, G_x, 3]`` of a grid spanning ``aabb`` ``[2, 3]``."""
    axes = [
        aabb[0, i]
        + (torch.arange(resolution[i], dtype=torch.float32, device=aabb.device) + 0.5)
        * ((aabb[1, i] - aabb[0, i]) / resolution[i])
        for i in range(3)
    ]
    zz, yy, xx = torch.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return torch.stack([xx, yy, zz], -1)


@torch.no_grad()
def compute_occupancy(
    density_fn: Callable[[Tensor], Tensor],
    aabb: Tensor,
    resolution: Sequence[int],
    step_size: float,
    distance_scale: float,
    alpha_threshold: float = 1e-4,
    dilate: int = 1,
    chunk: int = 1 << 18,
) -> Tensor:
    """Evaluate the density at voxel centres and mark voxels whose alpha exceeds a threshold.

    Args:
        density_fn: maps world points ``[M, 3]`` to densities ``[M]``.
        aabb: ``[2, 3]`` box.
        resolution: ``(G_x, G_y, G_z)`` of the occupancy grid.
        step_size: marching step length used to turn density into alpha.
        distance_scale: the renderer's distance scale.
        alpha_threshold: voxels with ``alpha <= alpha_threshold`` are empty (TensoRF: 1e-4).
        dilate: voxels of dilation (max pooling) so that boundaries are kept.
        chunk: points per density evaluation.

    Returns:
        ``[G_z, G_y, G_x]`` bool occupancy.
    """
    pts = voxel_centers(aabb, resolution).reshape(-1, 3)
    sig = torch.cat([density_fn(pts[i : i + chunk]) for i in range(0, pts.shape[0], chunk)])
    alpha = 1.0 - torch.exp(-sig * step_size * distance_scale)
    occ = (alpha > alpha_threshold).view(resolution[2], resolution[1], resolution[0])
    return dilate_grid(occ, dilate) if dilate > 0 else occ


def query_occupancy(occupancy: Tensor, aabb: Tensor, xyz: Tensor) -> Tensor:
    """Nearest-voxel lookup: ``[M]`` bool, True where ``xyz`` ``[M, 3]`` is in an occupied voxel (False outside)."""
    flat, inside = voxel_indices(occupancy.shape, aabb, xyz)
    return inside & occupancy.reshape(-1)[flat]


def voxel_indices(occupancy_shape: Sequence[int], aabb: Tensor, xyz: Tensor) -> tuple[Tensor, Tensor]:
    """Flat voxel index ``[M]`` of points ``[M, 3]`` in a ``[G_z, G_y, G_x]`` grid, and ``[M]`` bool "inside"."""
    gz, gy, gx = occupancy_shape
    res = torch.tensor([gx, gy, gz], device=xyz.device)
    idx = ((xyz - aabb[0]) / (aabb[1] - aabb[0]) * res.to(xyz.dtype)).floor().long()
    inside = ((idx >= 0) & (idx < res)).all(-1)
    idx = torch.minimum(idx.clamp_min(0), res - 1)
    return (idx[:, 2] * gy + idx[:, 1]) * gx + idx[:, 0], inside


def visible_voxels(
    occupancy_shape: Sequence[int], aabb: Tensor, xyz: Tensor, weights: Tensor, threshold: float = 1e-4
) -> Tensor:
    """Voxels that some ray sees: max compositing weight per voxel above ``threshold``.

    Space that no training camera can see (behind walls and inside objects) keeps whatever density it was
    initialised with; marking it empty removes most of the density queries of a forward-facing scene.

    Args:
        occupancy_shape: ``(G_z, G_y, G_x)``.
        aabb: ``[2, 3]`` box.
        xyz: ``[M, 3]`` sample positions of marched rays.
        weights: ``[M]`` their compositing weights.
        threshold: weight above which a sample counts as seen.

    Returns:
        ``[G_z, G_y, G_x]`` bool.
    """
    flat, inside = voxel_indices(occupancy_shape, aabb, xyz)
    seen = torch.zeros(int(torch.tensor(occupancy_shape).prod()), dtype=torch.bool, device=xyz.device)
    seen[flat[inside & (weights > threshold)]] = True
    return seen.view(*occupancy_shape)


def dilate_grid(occupancy: Tensor, voxels: int = 1) -> Tensor:
    """Grow an occupancy grid ``[G_z, G_y, G_x]`` by ``voxels`` in every direction (max pooling)."""
    occ = occupancy.float()[None, None]
    occ = F.max_pool3d(occ, kernel_size=2 * voxels + 1, stride=1, padding=voxels)
    return occ[0, 0] > 0
