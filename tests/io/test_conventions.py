"""Camera-frame conversions: round trips and a hand-checked camera."""

import numpy as np

from ovs3d.io.conventions import (
    llff_to_opencv,
    opencv_to_llff,
    opencv_to_opengl,
    opengl_to_opencv,
    to_homogeneous,
)


def _random_c2w(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    q = q * np.sign(np.linalg.det(q))[:, None, None]  # proper rotations
    return np.concatenate([q, rng.normal(size=(n, 3, 1))], axis=-1)


def test_llff_opencv_round_trip():
    c2w = _random_c2w(5)
    np.testing.assert_allclose(llff_to_opencv(opencv_to_llff(c2w)), c2w, atol=1e-12)
    np.testing.assert_allclose(opencv_to_llff(llff_to_opencv(c2w)), c2w, atol=1e-12)


def test_llff_to_opencv_drops_hwf_column():
    c2w = _random_c2w(3)
    llff = np.concatenate([opencv_to_llff(c2w), np.tile([[[12.0], [16.0], [20.0]]], (3, 1, 1))], axis=-1)
    np.testing.assert_allclose(llff_to_opencv(llff), c2w, atol=1e-12)


def test_opengl_opencv_round_trip_and_4x4_input():
    c2w = _random_c2w(4, seed=1)
    np.testing.assert_allclose(opengl_to_opencv(opencv_to_opengl(c2w)), c2w, atol=1e-12)
    out = opengl_to_opencv(to_homogeneous(c2w))
    assert out.shape == (4, 3, 4)
    # flipping camera y and z: right stays, up -> down, back -> forward; the centre is unchanged
    np.testing.assert_allclose(out[:, :, 0], c2w[:, :, 0])
    np.testing.assert_allclose(out[:, :, 1], -c2w[:, :, 1])
    np.testing.assert_allclose(out[:, :, 2], -c2w[:, :, 2])
    np.testing.assert_allclose(out[:, :, 3], c2w[:, :, 3])


def test_llff_and_opengl_describe_the_same_camera():
    """LLFF [down, right, back] and OpenGL [right, up, back] of one camera map to one OpenCV c2w."""
    cv = _random_c2w(3, seed=2)
    llff = opencv_to_llff(cv)
    gl = opencv_to_opengl(cv)
    down, right, back = llff[:, :, 0], llff[:, :, 1], llff[:, :, 2]
    np.testing.assert_allclose(gl[:, :, 0], right)
    np.testing.assert_allclose(gl[:, :, 1], -down)
    np.testing.assert_allclose(gl[:, :, 2], back)


def test_hand_checked_llff_camera():
    """LLFF rotation = identity: down = world x, right = world y, back = world z.

    The OpenCV camera then has right = +y, down = +x and looks (+z) along world -z.
    """
    llff = np.concatenate([np.eye(3), [[1.0], [2.0], [3.0]]], axis=1)[None]
    cv = llff_to_opencv(llff)[0]
    np.testing.assert_allclose(cv[:, 0], [0, 1, 0])  # right
    np.testing.assert_allclose(cv[:, 1], [1, 0, 0])  # down
    np.testing.assert_allclose(cv[:, 2], [0, 0, -1])  # forward = world -z
    np.testing.assert_allclose(cv[:, 3], [1, 2, 3])
    assert np.isclose(np.linalg.det(cv[:, :3]), 1.0)
    # a point 2 units in front of the camera is at t - 2 z in the world
    p_cam = np.array([0.0, 0.0, 2.0])
    np.testing.assert_allclose(cv[:, :3] @ p_cam + cv[:, 3], [1, 2, 1])


def test_to_homogeneous():
    c2w = _random_c2w(2)
    h = to_homogeneous(c2w)
    assert h.shape == (2, 4, 4)
    np.testing.assert_allclose(h[:, 3], [[0, 0, 0, 1]] * 2)
    np.testing.assert_allclose(h[:, :3], c2w)
