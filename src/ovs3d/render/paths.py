"""Smooth camera paths for videos (numpy; OpenCV camera-to-world in the scene's normalised world)."""

from __future__ import annotations

import numpy as np


def _look_at(position: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """OpenCV c2w ``[3, 4]`` at ``position`` looking at ``target`` with world ``up`` (image y points down)."""
    fwd = target - position
    fwd = fwd / np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    right = right / np.linalg.norm(right)
    down = np.cross(fwd, right)
    return np.stack([right, down, fwd, position], axis=-1)


def spiral_path(
    c2w: np.ndarray, near_far: np.ndarray, n_frames: int = 60, rotations: int = 2, zrate: float = 0.5
) -> np.ndarray:
    """LLFF's spiral around the average camera of a forward-facing scene.

    Radii are the 90th percentile of the cameras' offsets from their mean, the focus depth is LLFF's
    ``1 / ((1 - dt) / near + dt / far)`` with ``dt = 0.75``.

    Args:
        c2w: ``[N, 3, 4]`` OpenCV camera-to-world of the views.
        near_far: ``[N, 2]`` depth bounds.
        n_frames: frames on the path.
        rotations: turns of the spiral.
        zrate: turns along the viewing axis per turn.

    Returns:
        ``[n_frames, 3, 4]`` OpenCV camera-to-world.
    """
    centers = c2w[:, :, 3]
    center = centers.mean(0)
    fwd = c2w[:, :, 2].mean(0)
    fwd /= np.linalg.norm(fwd)
    down = c2w[:, :, 1].mean(0)
    right = np.cross(down, fwd)
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    rot = np.stack([right, down, fwd], -1)  # [3, 3] columns in world
    local = (centers - center) @ rot  # offsets in the average camera's frame
    radii = np.percentile(np.abs(local), 90, axis=0)
    near, far = float(near_far[:, 0].min()) * 0.9, float(near_far[:, 1].max()) * 5.0
    dt = 0.75
    focal = 1.0 / ((1.0 - dt) / near + dt / far)
    target = center + focal * fwd
    out = []
    for theta in np.linspace(0.0, 2.0 * np.pi * rotations, n_frames, endpoint=False):
        offset = np.array([np.cos(theta), -np.sin(theta), -np.sin(theta * zrate)]) * radii
        pos = center + rot @ offset
        out.append(_look_at(pos, target, -down))
    return np.stack(out)


def orbit_path(c2w: np.ndarray, center: np.ndarray, n_frames: int = 60) -> np.ndarray:
    """A circle through the cameras' mean height around ``center`` ``[3]``, looking at it (bounded scenes).

    Returns:
        ``[n_frames, 3, 4]`` OpenCV camera-to-world.
    """
    centers = c2w[:, :, 3]
    up = -c2w[:, :, 1].mean(0)
    up /= np.linalg.norm(up)
    rel = centers - center
    height = float((rel @ up).mean())
    flat = rel - np.outer(rel @ up, up)
    radius = float(np.linalg.norm(flat, axis=1).mean())
    a = flat[0] / max(np.linalg.norm(flat[0]), 1e-9)
    b = np.cross(up, a)
    out = []
    for theta in np.linspace(0.0, 2.0 * np.pi, n_frames, endpoint=False):
        pos = center + height * up + radius * (np.cos(theta) * a + np.sin(theta) * b)
        out.append(_look_at(pos, center, up))
    return np.stack(out)


def free_space_center(c2w: np.ndarray) -> np.ndarray:
    """The mean of the training camera centres: a point in free space to spin novel cameras around.

    The cameras were somewhere with a view, so their mean is usually inside the room and off the
    surfaces (OV-NeRF spins around the world origin or a hand-set ``loaded_center``, which can land
    inside a wall; reference digest §A.5).

    Args:
        c2w: ``[N, 3, 4]`` OpenCV camera-to-world, ``N >= 1``.

    Returns:
        ``[3]`` float64 world point.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] != (3, 4) or len(c2w) == 0:
        raise ValueError(f"c2w must be [N, 3, 4] with N >= 1, got {c2w.shape}")
    return c2w[:, :, 3].mean(axis=0)


def up_from_cameras(c2w: np.ndarray) -> np.ndarray:
    """World "up" as the cameras hold it: the mean of their image-up axes (``-y``), normalised.

    Args:
        c2w: ``[N, 3, 4]`` OpenCV camera-to-world (camera +y points down in the image).

    Returns:
        ``[3]`` float64 unit vector.

    Raises:
        ValueError: bad shape, or the cameras' up axes cancel out.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] != (3, 4) or len(c2w) == 0:
        raise ValueError(f"c2w must be [N, 3, 4] with N >= 1, got {c2w.shape}")
    up = -c2w[:, :, 1].mean(axis=0)  # [3]
    norm = float(np.linalg.norm(up))
    if norm < 1e-8:
        raise ValueError("the cameras' up axes cancel out; pass an explicit up vector")
    return up / norm


def panorama_poses(center: np.ndarray, n: int, radius: float, pitch_deg: float, up: np.ndarray) -> np.ndarray:
    """Outward-looking cameras on a small horizontal circle: a 360° panorama from about one point.

    This is OV-NeRF's "spin" path for Cross-view Self-enhancement novel views (reference digest §A.5)
    with its implicit constants made explicit. OV-NeRF's release uses ``n = 120`` (the paper: 60),
    ``radius = 0.005`` in its normalised units (camera centres within ±1), a downward pitch of
    ``atan(0.001 / 0.005) ≈ 11.31°``, and spins around the origin; :func:`free_space_center` and
    :func:`up_from_cameras` give a centre and an up axis from the training cameras instead.

    Camera ``k`` (``k = 0..n-1``) has yaw ``θ_k = 2πk / n`` around ``up``:

    - ``d_k = cos θ_k · a + sin θ_k · b`` with ``(a, b, up)`` a right-handed orthonormal frame (``a`` is the
      world axis least aligned with ``up``, made orthogonal to it);
    - position ``center + radius · d_k``: all cameras on the circle of ``radius`` around ``center`` in
      the plane orthogonal to ``up``;
    - optical axis (+z) ``cos(pitch) · d_k − sin(pitch) · up``: outward, from the centre through the
      camera, tilted towards ``-up`` by ``pitch_deg`` (negative values tilt towards ``+up``);
    - image +x = normalize(axis × up) (right), image +y = axis × x, which is ≈ ``-up`` (down).

    Args:
        center: ``[3]`` world point the circle is centred on.
        n: number of cameras (``>= 1``).
        radius: circle radius in world units (``>= 0``; 0 puts every camera at ``center``).
        pitch_deg: downward tilt of the optical axis in degrees, in ``(-90, 90)``.
        up: ``[3]`` world up direction (any length but 0).

    Returns:
        ``[n, 3, 4]`` float64 OpenCV camera-to-world ``[right, down, forward | position]``.
    """
    center = np.asarray(center, dtype=np.float64).reshape(3)
    up = np.asarray(up, dtype=np.float64).reshape(3)
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if not -90.0 < pitch_deg < 90.0:
        raise ValueError(f"pitch_deg must lie in (-90, 90) (the axis would be parallel to up), got {pitch_deg}")
    norm = float(np.linalg.norm(up))
    if norm < 1e-12:
        raise ValueError("up must be a non-zero vector")
    up = up / norm
    # a: the world axis least aligned with up, made orthogonal to it; b completes (a, b, up) right-handed
    a = np.eye(3)[int(np.argmin(np.abs(up)))]
    a = a - (a @ up) * up
    a = a / np.linalg.norm(a)
    b = np.cross(up, a)
    pitch = np.deg2rad(pitch_deg)
    out = []
    for theta in 2.0 * np.pi * np.arange(int(n)) / int(n):
        d = np.cos(theta) * a + np.sin(theta) * b  # [3] horizontal outward direction
        position = center + radius * d
        axis = np.cos(pitch) * d - np.sin(pitch) * up  # [3] unit: d ⟂ up
        out.append(_look_at(position, position + axis, up))
    return np.stack(out)
