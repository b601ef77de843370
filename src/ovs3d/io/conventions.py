"""Camera conventions: the only place where frames are converted.

Inside ovs3d every camera is an **OpenCV camera-to-world** matrix ``c2w`` ``[3, 4]`` (camera +x right,
+y down, +z forward, looking along +z). File formats use other frames, converted here at I/O:

* LLFF ``poses_bounds.npy``: rotation columns are ``[down, right, backwards]``.
* nerfstudio / NeRF / Blender ``transforms.json``: OpenGL, columns ``[right, up, backwards]``.

The *world* frame is left as the file gives it (after the loader's recentring and scaling), so for
forward-facing LLFF scenes the world has cameras looking roughly along world -z, as NDC rays require.
"""

from __future__ import annotations

import numpy as np

_GL_TO_CV = np.diag([1.0, -1.0, -1.0])


def llff_to_opencv(poses: np.ndarray) -> np.ndarray:
    """LLFF ``[down, right, back | t]`` poses to OpenCV c2w.

    Args:
        poses: ``[N, 3, 4]`` (or ``[N, 3, 5]``, the hwf column is dropped) LLFF camera-to-world.

    Returns:
        ``[N, 3, 4]`` OpenCV camera-to-world ``[right, down, forward | t]``.
    """
    poses = np.asarray(poses, dtype=np.float64)
    down, right, back, t = (poses[:, :, i] for i in range(4))
    return np.stack([right, down, -back, t], axis=-1)


def opencv_to_llff(c2w: np.ndarray) -> np.ndarray:
    """Inverse of :func:`llff_to_opencv`: ``[N, 3, 4]`` OpenCV c2w to LLFF ``[down, right, back | t]``."""
    c2w = np.asarray(c2w, dtype=np.float64)
    right, down, fwd, t = (c2w[:, :, i] for i in range(4))
    return np.stack([down, right, -fwd, t], axis=-1)


def opengl_to_opencv(c2w: np.ndarray) -> np.ndarray:
    """OpenGL/nerfstudio camera-to-world ``[..., 3|4, 4]`` to OpenCV ``[..., 3, 4]`` (flip camera y and z)."""
    c2w = np.asarray(c2w, dtype=np.float64)[..., :3, :4]
    out = c2w.copy()
    out[..., :3, :3] = c2w[..., :3, :3] @ _GL_TO_CV
    return out


def opencv_to_opengl(c2w: np.ndarray) -> np.ndarray:
    """OpenCV camera-to-world ``[..., 3, 4]`` to OpenGL/nerfstudio ``[..., 3, 4]`` (the same flip)."""
    return opengl_to_opencv(c2w)


def to_homogeneous(c2w: np.ndarray) -> np.ndarray:
    """``[..., 3, 4]`` to ``[..., 4, 4]`` with the last row ``[0, 0, 0, 1]``."""
    c2w = np.asarray(c2w, dtype=np.float64)
    bottom = np.broadcast_to(np.array([0.0, 0.0, 0.0, 1.0]), c2w.shape[:-2] + (1, 4))
    return np.concatenate([c2w[..., :3, :4], bottom], axis=-2)
