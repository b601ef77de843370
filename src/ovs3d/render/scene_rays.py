"""Rays of a scene's views in the field's coordinate frame.

Forward-facing scenes are marched in NDC (near plane 1, defined by view 0's intrinsics at the stage's
resolution, as the LLFF/TensoRF loaders do); bounded scenes in the normalised world box.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ovs3d.io.scene import Scene
from ovs3d.render.contraction import contract, uncontract
from ovs3d.render.rays import camera_rays, ndc_rays, pixel_grid

#: NDC box of forward-facing scenes: x, y slightly beyond [-1, 1] (other views see a little more than
#: view 0), z in [-1, 1] from the near plane to infinity.
NDC_AABB = ((-1.5, -1.5, -1.0), (1.5, 1.5, 1.0))


def field_aabb(scene: Scene) -> Tensor:
    """``[2, 3]`` box the field spans: the NDC box for forward-facing scenes, else the scene's ``aabb`` (the
    world box of a bounded scene, contracted space's ``[-2, 2]^3`` for an unbounded one)."""
    if scene.kind == "forward":
        return torch.tensor(NDC_AABB, dtype=torch.float32)
    return torch.as_tensor(np.asarray(scene.aabb), dtype=torch.float32)


def rays_at(scene: Scene, view: int, downscale: float, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Rays through image points of a view, in the field's frame.

    Args:
        scene: the scene.
        view: view index.
        downscale: resolution the image coordinates refer to (``1/downscale`` of full size).
        u: ``[R]`` horizontal pixel coordinates at that resolution (pixel centres at ``x + 0.5``).
        v: ``[R]`` vertical pixel coordinates.

    Returns:
        ``rays_o`` ``[R, 3]``, ``rays_d`` ``[R, 3]`` (NDC for forward-facing scenes).
    """
    intr = scene.intrinsics_at(downscale)
    return camera_rays_in_field(scene, scene.c2w[view], intr[view], downscale, u, v)


def camera_rays_in_field(
    scene: Scene, c2w: np.ndarray, intrinsics: np.ndarray, downscale: float, u: Tensor, v: Tensor
) -> tuple[Tensor, Tensor]:
    """Rays of any camera (e.g. on a rendering path) in the field's frame.

    Args:
        scene: the scene (its kind and view 0's intrinsics define the NDC frame).
        c2w: ``[3, 4]`` OpenCV camera-to-world in the scene's normalised world.
        intrinsics: ``[4]`` ``(fx, fy, cx, cy)`` at ``1/downscale``.
        downscale: resolution of ``u``, ``v``.
        u: ``[R]`` pixel coordinates.
        v: ``[R]``.

    Returns:
        ``rays_o`` ``[R, 3]``, ``rays_d`` ``[R, 3]``.
    """
    intr = torch.as_tensor(np.asarray(intrinsics), dtype=torch.float32)
    rays_o, rays_d = camera_rays(torch.as_tensor(np.asarray(c2w), dtype=torch.float32), intr, u, v)
    if scene.kind == "forward":
        w, h = scene.image_size(downscale)
        ref = torch.as_tensor(scene.intrinsics_at(downscale)[0])
        rays_o, rays_d = ndc_rays(rays_o, rays_d, ref, w, h, near=1.0)
    return rays_o, rays_d


def view_rays(scene: Scene, view: int, downscale: float) -> tuple[Tensor, Tensor]:
    """All pixel rays of a view at ``1/downscale``, row-major: ``[H * W, 3]`` origins and directions."""
    w, h = scene.image_size(downscale)
    u, v = pixel_grid(w, h)
    return rays_at(scene, view, downscale, u, v)


def ray_near(scene: Scene) -> float:
    """Smallest ray parameter to march from: 0 in NDC (the near plane), else a fraction of the nearest bound."""
    if scene.kind == "forward":
        return 0.0
    return float(np.min(scene.near_far[:, 0])) * 0.5


def field_to_world(scene: Scene, xyz: Tensor) -> Tensor:
    """Points of the field's frame in the scene's normalised world: NDC undone for forward-facing scenes, the
    contraction for unbounded ones.

    Args:
        scene: the scene (view 0's intrinsics define the NDC frame, near plane 1).
        xyz: ``[..., 3]`` points in the field's frame.

    Returns:
        ``[..., 3]`` world points (points at NDC depth 1, i.e. infinitely far, are clamped just before it).
    """
    if scene.kind == "unbounded":
        return uncontract(xyz)
    if scene.kind != "forward":
        return xyz
    w, h = scene.image_size(1.0)
    fx, fy = (float(f) for f in scene.intrinsics_at(1.0)[0][:2])
    ax, ay = -2.0 * fx / w, -2.0 * fy / h
    z = 2.0 / (xyz[..., 2].clamp(max=1.0 - 1e-4) - 1.0)  # inverse of z_ndc = 1 + 2 near / z (near = 1)
    return torch.stack([xyz[..., 0] * z / ax, xyz[..., 1] * z / ay, z], dim=-1)


def camera_depth(scene: Scene, view: int, xyz: Tensor) -> Tensor:
    """Depth along a view's optical axis (OpenCV +z) of field-frame points, in normalised world units.

    Args:
        scene: the scene.
        view: the camera.
        xyz: ``[..., 3]`` points in the field's frame.

    Returns:
        ``[...]`` depth (negative behind the camera).
    """
    c2w = torch.as_tensor(np.asarray(scene.c2w[view]), dtype=torch.float32)
    world = field_to_world(scene, xyz.float())
    return (world - c2w[:3, 3]) @ c2w[:3, 2]


def world_to_field(scene: Scene, xyz: Tensor) -> Tensor:
    """Inverse of :func:`field_to_world`: normalised-world points ``[..., 3]`` to the field's frame (NDC for
    forward-facing scenes, points at or behind the near plane mapping to NDC z <= -1; contracted for unbounded
    scenes)."""
    if scene.kind == "unbounded":
        return contract(xyz)
    if scene.kind != "forward":
        return xyz
    w, h = scene.image_size(1.0)
    fx, fy = (float(f) for f in scene.intrinsics_at(1.0)[0][:2])
    ax, ay = -2.0 * fx / w, -2.0 * fy / h
    z = xyz[..., 2]
    return torch.stack([ax * xyz[..., 0] / z, ay * xyz[..., 1] / z, 1.0 + 2.0 / z], dim=-1)


def _similarity(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(scene.world_from_file, dtype=np.float64)
    return m[:3, :3], m[:3, 3]


def world_to_input(scene: Scene, xyz: Tensor | np.ndarray) -> np.ndarray:
    """Normalised-world points ``[..., 3]`` in the frame of the scene's input poses (SPEC §6): the loader's
    recentring, rotation and scaling (``Scene.world_from_file``) undone. Returns float64 numpy."""
    a, b = _similarity(scene)
    p = np.asarray(xyz.detach().cpu() if isinstance(xyz, Tensor) else xyz, dtype=np.float64)
    return (p - b) @ np.linalg.inv(a).T


def input_to_world(scene: Scene, xyz: np.ndarray) -> np.ndarray:
    """Points ``[..., 3]`` of the input poses' frame in the normalised world (float64)."""
    a, b = _similarity(scene)
    return np.asarray(xyz, dtype=np.float64) @ a.T + b


def field_to_input(scene: Scene, xyz: Tensor) -> np.ndarray:
    """Field-frame points ``[..., 3]`` (NDC for forward-facing scenes) in the input poses' frame (float64)."""
    return world_to_input(scene, field_to_world(scene, xyz.float()))


def input_scale(scene: Scene) -> float:
    """Length of one normalised-world unit in the input frame (the inverse of the loader's scale)."""
    a, _ = _similarity(scene)
    return float(1.0 / np.cbrt(abs(np.linalg.det(a))))


def c2w_to_input(scene: Scene, c2w: np.ndarray) -> np.ndarray:
    """OpenCV camera-to-world ``[..., 3, 4]`` of the normalised world in the input frame (still OpenCV)."""
    a, _ = _similarity(scene)
    rot = a / np.cbrt(np.linalg.det(a))
    c2w = np.asarray(c2w, dtype=np.float64)
    out = np.empty_like(c2w)
    out[..., :3, :3] = rot.T @ c2w[..., :3, :3]
    out[..., :3, 3] = world_to_input(scene, c2w[..., :3, 3])
    return out


def c2w_from_input(scene: Scene, c2w: np.ndarray) -> np.ndarray:
    """Inverse of :func:`c2w_to_input`: an OpenCV camera of the input frame ``[..., 3, 4]`` in the normalised
    world (e.g. the viewer's camera, which lives in the input frame)."""
    a, _ = _similarity(scene)
    rot = a / np.cbrt(np.linalg.det(a))
    c2w = np.asarray(c2w, dtype=np.float64)
    out = np.empty_like(c2w)
    out[..., :3, :3] = rot @ c2w[..., :3, :3]
    out[..., :3, 3] = input_to_world(scene, c2w[..., :3, 3])
    return out
