"""Camera rays (OpenCV convention) and NDC rays for forward-facing scenes.

Pure functions over tensors. Pixel ``(u, v)`` is sampled through its centre ``(u + 0.5, v + 0.5)``;
camera-frame directions are ``((u + 0.5 - cx) / fx, (v + 0.5 - cy) / fy, 1)``, rotated into the world by
the OpenCV camera-to-world matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pixel_grid(width: int, height: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates of an image, row-major.

    Returns:
        ``u`` ``[H * W]`` and ``v`` ``[H * W]`` float32 pixel-centre coordinates (``x + 0.5``, ``y + 0.5``).
    """
    v, u = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=device),
        torch.arange(width, dtype=torch.float32, device=device),
        indexing="ij",
    )
    return u.reshape(-1) + 0.5, v.reshape(-1) + 0.5


def camera_rays(c2w: Tensor, intrinsics: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """World-space rays through image points of one camera.

    Args:
        c2w: ``[3, 4]`` OpenCV camera-to-world.
        intrinsics: ``[4]`` ``(fx, fy, cx, cy)`` in pixels.
        u: ``[R]`` horizontal image coordinates (pixel centres are at ``x + 0.5``).
        v: ``[R]`` vertical image coordinates.

    Returns:
        ``rays_o`` ``[R, 3]`` origins and ``rays_d`` ``[R, 3]`` directions (camera z component 1, so
        ``t`` along the ray is camera depth; not normalised).
    """
    fx, fy, cx, cy = intrinsics.unbind(-1)
    dirs_cam = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u)], dim=-1)  # [R, 3]
    rays_d = dirs_cam @ c2w[:3, :3].T  # [R, 3]
    rays_o = c2w[:3, 3].expand_as(rays_d)  # [R, 3]
    return rays_o.contiguous(), rays_d


def image_rays(c2w: Tensor, intrinsics: Tensor, width: int, height: int) -> tuple[Tensor, Tensor]:
    """All pixel rays of one image, row-major: ``rays_o`` ``[H * W, 3]``, ``rays_d`` ``[H * W, 3]``."""
    u, v = pixel_grid(width, height, device=c2w.device)
    return camera_rays(c2w, intrinsics, u, v)


def ndc_rays(rays_o: Tensor, rays_d: Tensor, intrinsics: Tensor, width: int, height: int, near: float = 1.0):
    """Map world rays of a forward-facing scene into normalised device coordinates.

    The standard NeRF/LLFF construction (``ndc_rays_blender``) for a world whose cameras look along
    world -z: origins are first moved to the plane ``z = -near``; NDC then maps ``z in (-inf, -near]`` to
    ``[1, -1]`` so that ``t in [0, 1]`` on the returned ray covers near plane to infinity.

    Args:
        rays_o: ``[R, 3]`` world origins.
        rays_d: ``[R, 3]`` world directions.
        intrinsics: ``[4]`` ``(fx, fy, cx, cy)`` of the images the NDC frame is defined for.
        width: image width of those intrinsics.
        height: image height.
        near: world distance of the near plane (1 after the LLFF bound scaling).

    Returns:
        ``rays_o`` ``[R, 3]`` and ``rays_d`` ``[R, 3]`` in NDC.
    """
    fx, fy = intrinsics[0], intrinsics[1]
    t = -(near + rays_o[..., 2]) / rays_d[..., 2]
    rays_o = rays_o + t[..., None] * rays_d
    ox, oy, oz = rays_o.unbind(-1)
    dx, dy, dz = rays_d.unbind(-1)
    ax = -2.0 * fx / width
    ay = -2.0 * fy / height
    o0 = ax * ox / oz
    o1 = ay * oy / oz
    o2 = 1.0 + 2.0 * near / oz
    d0 = ax * (dx / dz - ox / oz)
    d1 = ay * (dy / dz - oy / oz)
    d2 = -2.0 * near / oz
    return torch.stack([o0, o1, o2], -1), torch.stack([d0, d1, d2], -1)


def ray_aabb_intersect(rays_o: Tensor, rays_d: Tensor, aabb: Tensor) -> tuple[Tensor, Tensor]:
    """Entry and exit distance of rays through an axis-aligned box (slab method).

    Args:
        rays_o: ``[R, 3]`` origins.
        rays_d: ``[R, 3]`` directions.
        aabb: ``[2, 3]`` box min and max.

    Returns:
        ``t_near`` ``[R]`` and ``t_far`` ``[R]``; rays that miss have ``t_far <= t_near``.
    """
    safe_d = torch.where(rays_d.abs() < 1e-9, torch.full_like(rays_d, 1e-9), rays_d)
    t0 = (aabb[0] - rays_o) / safe_d
    t1 = (aabb[1] - rays_o) / safe_d
    t_near = torch.minimum(t0, t1).amax(-1)
    t_far = torch.maximum(t0, t1).amin(-1)
    return t_near, t_far
