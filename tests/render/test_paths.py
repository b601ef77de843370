"""Camera paths: the OV-NeRF panorama ("spin") poses and the helpers that place them."""

from __future__ import annotations

import numpy as np
import pytest

from ovs3d.render.paths import free_space_center, panorama_poses, up_from_cameras


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


@pytest.mark.parametrize(
    ("up", "center", "pitch"),
    [
        ((0.0, 0.0, 1.0), (0.0, 0.0, 0.0), 11.31),
        ((0.0, -1.0, 0.0), (0.3, -0.2, 1.5), 0.0),
        ((0.2, -0.9, 0.4), (1.0, 2.0, 3.0), 25.0),
        ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), -15.0),
    ],
)
def test_panorama_poses_geometry(up, center, pitch):
    n, radius = 12, 0.25
    c2w = panorama_poses(np.array(center), n, radius, pitch, np.array(up))
    up_u, center = _unit(up), np.asarray(center)
    assert c2w.shape == (n, 3, 4) and c2w.dtype == np.float64
    rot, pos = c2w[:, :, :3], c2w[:, :, 3]
    # rotations: orthonormal, det +1
    np.testing.assert_allclose(rot.transpose(0, 2, 1) @ rot, np.broadcast_to(np.eye(3), (n, 3, 3)), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-12)
    # centres on the circle: at radius from center, in the plane through center orthogonal to up
    offset = pos - center
    np.testing.assert_allclose(np.linalg.norm(offset, axis=1), radius, atol=1e-12)
    np.testing.assert_allclose(offset @ up_u, 0.0, atol=1e-12)
    outward = offset / radius  # [n, 3] unit, horizontal
    right, down, fwd = rot[:, :, 0], rot[:, :, 1], rot[:, :, 2]
    # optical axis (+z): outward, tilted by the pitch towards -up
    expected_fwd = np.cos(np.deg2rad(pitch)) * outward - np.sin(np.deg2rad(pitch)) * up_u
    np.testing.assert_allclose(fwd, expected_fwd, atol=1e-12)
    np.testing.assert_allclose(np.degrees(np.arcsin(-(fwd @ up_u))), pitch, atol=1e-9)
    assert np.all(np.einsum("ij,ij->i", fwd, outward) > 0)  # looks away from the centre
    # image x is horizontal and to the right of the axis; image y points down (against up)
    np.testing.assert_allclose(right @ up_u, 0.0, atol=1e-12)
    np.testing.assert_allclose(right, np.cross(fwd, up_u) / np.linalg.norm(np.cross(fwd, up_u), axis=1)[:, None])
    np.testing.assert_allclose(down @ up_u, -np.cos(np.deg2rad(pitch)), atol=1e-12)
    # yaws: n distinct, evenly spread over 360° (consecutive steps 360/n, same sense of turn)
    a = outward[0]
    b = np.cross(up_u, a)
    yaw = np.degrees(np.arctan2(outward @ b, outward @ a))  # [n] in (-180, 180]
    steps = (np.diff(yaw) + 180.0) % 360.0 - 180.0  # wrapped differences
    np.testing.assert_allclose(steps, 360.0 / n, atol=1e-9)
    assert len(np.unique(np.round(yaw % 360.0, 6) % 360.0)) == n


def test_panorama_poses_match_ovnerf_spin_construction():
    """OV-NeRF's look-at (digest §A.5) gives the same rotations for world +z up and pitch atan(0.2)."""
    n, r, h = 8, 0.005, -0.001
    ours = panorama_poses(np.zeros(3), n, r, np.degrees(np.arctan(-h / r)), np.array([0.0, 0.0, 1.0]))
    for k in range(n):
        theta = 2 * np.pi * k / n
        p = np.array([r * np.cos(theta), r * np.sin(theta), h])
        z = _unit(-p)
        x = _unit(np.cross([0.0, 0.0, -1.0], z))
        y = np.cross(z, x)
        rot = np.stack([-x, y, -z], axis=-1)
        np.testing.assert_allclose(ours[k, :, :3], rot, atol=1e-12)
        np.testing.assert_allclose(ours[k, :2, 3], p[:2], atol=1e-15)  # same yaw; OV-NeRF also drops by h


def test_panorama_poses_edge_cases_and_errors():
    one = panorama_poses(np.ones(3), 1, 0.0, 0.0, np.array([0.0, 0.0, 2.0]))
    assert one.shape == (1, 3, 4)
    np.testing.assert_allclose(one[0, :, 3], np.ones(3))
    for kwargs in ({"n": 0}, {"radius": -1.0}, {"pitch_deg": 90.0}, {"pitch_deg": -95.0}, {"up": np.zeros(3)}):
        args = {"center": np.zeros(3), "n": 4, "radius": 1.0, "pitch_deg": 0.0, "up": np.array([0.0, 0.0, 1.0])}
        args.update(kwargs)
        with pytest.raises(ValueError):
            panorama_poses(**args)


def _camera(position, fwd, up):
    fwd = _unit(fwd)
    right = _unit(np.cross(fwd, up))
    return np.stack([right, np.cross(fwd, right), fwd, np.asarray(position, dtype=np.float64)], axis=-1)


def test_free_space_center_and_up_from_cameras():
    up = _unit([0.1, -1.0, 0.2])
    rng = np.random.default_rng(0)
    cams = []
    for _ in range(6):
        fwd = rng.normal(size=3)
        fwd -= (fwd @ up) * up  # level cameras: image up = world up exactly
        cams.append(_camera(rng.normal(size=3), fwd, up))
    c2w = np.stack(cams)
    np.testing.assert_allclose(free_space_center(c2w), c2w[:, :, 3].mean(0))
    np.testing.assert_allclose(up_from_cameras(c2w), up, atol=1e-12)
    # tilted cameras: the normalised mean of their -y axes
    tilted = np.stack([_camera([0, 0, 0], [0, 0.3, 1], up), _camera([1, 0, 0], [1, -0.2, 0], up)])
    expected = _unit(-(tilted[0, :, 1] + tilted[1, :, 1]))
    np.testing.assert_allclose(up_from_cameras(tilted), expected)
    with pytest.raises(ValueError):
        free_space_center(np.zeros((0, 3, 4)))
    flipped = np.stack([c2w[0], c2w[0] * np.array([1.0, -1.0, 1.0, 1.0])])  # -y axes cancel
    with pytest.raises(ValueError):
        up_from_cameras(flipped)
