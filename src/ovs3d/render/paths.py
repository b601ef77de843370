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
