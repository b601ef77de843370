"""Field-frame points back to the world and camera depth (the scale unit of LERF's language field)."""

import numpy as np
import pytest
import torch

from ovs3d.io.loader import load_scene
from ovs3d.render.contraction import uncontract
from ovs3d.render.rays import camera_rays
from ovs3d.render.scene_rays import camera_depth, field_to_world, rays_at


def test_ndc_points_map_back_to_their_world_points(tiny_scene_dir):
    scene = load_scene(tiny_scene_dir)
    assert scene.kind == "forward"
    u = torch.tensor([3.5, 20.5, 60.5])
    v = torch.tensor([2.5, 30.5, 40.5])
    intr = torch.as_tensor(scene.intrinsics_at(1.0)[1])
    o, d = camera_rays(torch.as_tensor(scene.c2w[1]), intr, u, v)
    depths = torch.tensor([1.5, 3.0, 7.0])  # camera depth: rays_d has camera z = 1
    world = o + depths[:, None] * d
    # the same points as NDC samples of the view's NDC rays
    o_n, d_n = rays_at(scene, 1, 1.0, u, v)
    w, h = scene.image_size(1.0)
    fx, fy = (float(f) for f in scene.intrinsics_at(1.0)[0][:2])
    x, y, z = world.unbind(-1)  # NDC projection of the points (near plane 1), as ndc_rays maps origins
    p_n = torch.stack([-2 * fx / w * x / z, -2 * fy / h * y / z, 1 + 2 / z], -1)
    assert torch.allclose(field_to_world(scene, p_n), world, atol=1e-3)
    assert torch.allclose(camera_depth(scene, 1, p_n), depths, atol=1e-3)
    # and the NDC rays pass through those points
    t = (p_n - o_n)[:, 2] / d_n[:, 2]
    assert torch.allclose(o_n + t[:, None] * d_n, p_n, atol=1e-4)


def test_camera_depth_in_a_bounded_scene_is_along_the_optical_axis(tiny_scene_dir):
    scene = load_scene(tiny_scene_dir, kind="bounded")
    c2w = np.asarray(scene.c2w[0])
    p = torch.as_tensor(c2w[:3, 3] + 2.0 * c2w[:3, 2] + 0.3 * c2w[:3, 0], dtype=torch.float32)
    assert abs(float(camera_depth(scene, 0, p[None])[0]) - 2.0) < 1e-5


# -- the input poses' frame (SPEC §6): the loader's recentring/scaling and NDC undone ----------------------


def _look_at(eye, target, up=(0.0, -1.0, 0.0)) -> np.ndarray:
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z, eye], axis=-1)


def _file_cameras(kind: str) -> np.ndarray:
    """OpenCV c2w in a rotated, shifted, scaled file world: a forward grid or a 360° ring."""
    if kind == "forward":
        cams = [
            _look_at([(i - 1) * 0.5, (j - 1) * 0.4, 0.0], [0.1 * i, -0.1 * j, 10.0]) for i in range(3) for j in range(3)
        ]
    else:
        cams = [
            _look_at([4 * np.cos(a), 4 * np.sin(a), 1.5], [0.0, 0.0, 0.0], up=(0.0, 0.0, 1.0))
            for a in np.linspace(0, 2 * np.pi, 12, endpoint=False)
        ]
    c2w = np.stack(cams)
    q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    out = c2w.copy()
    out[:, :, :3] = q @ c2w[:, :, :3]
    out[:, :, 3] = 2.5 * c2w[:, :, 3] @ q.T + np.array([3.0, -1.0, 2.0])
    return out


@pytest.mark.parametrize(
    ("fmt", "cams"), [("llff", "forward"), ("json", "forward"), ("json", "ring"), ("llff", "ring-far")]
)
def test_a_file_world_point_round_trips_through_the_loader_and_ndc(tmp_path, fmt, cams):
    from PIL import Image

    from ovs3d.io.loader import write_poses_bounds, write_transforms_json
    from ovs3d.render.scene_rays import c2w_from_input, c2w_to_input, field_to_input, input_to_world, world_to_field

    w, h, f = 32, 24, 28.0
    c2w = _file_cameras(cams)
    n = len(c2w)
    (tmp_path / "images").mkdir()
    for i in range(n):
        Image.new("RGB", (w, h), (10 * i, 50, 90)).save(tmp_path / "images" / f"{i:02d}.png")
    bounds = {"forward": [5.0, 60.0], "ring": [1.0, 15.0], "ring-far": [1.0, 200.0]}[cams]
    near_far = np.tile(bounds, (n, 1))
    if fmt == "llff":
        write_poses_bounds(tmp_path / "poses_bounds.npy", c2w, w, h, f, near_far)
    else:
        names = [f"images/{i:02d}.png" for i in range(n)]
        write_transforms_json(tmp_path / "transforms.json", c2w, np.array([f, f, w / 2, h / 2]), w, h, names, near_far)
    scene = load_scene(tmp_path)
    assert scene.kind == {"forward": "forward", "ring": "bounded", "ring-far": "unbounded"}[cams]
    # cameras come back to the file's frame, and the viewer's inverse maps them in again
    np.testing.assert_allclose(c2w_to_input(scene, scene.c2w), c2w, atol=1e-4)
    np.testing.assert_allclose(c2w_from_input(scene, c2w), scene.c2w, atol=1e-4)
    # a known point of the file's world, seen by view 4 at depth 12 (forward) or 3 (ring)
    view, depth = 4, {"forward": 12.0, "ring": 3.0, "ring-far": 150.0}[cams]  # ring-far: the far background
    cam = np.array([0.13, -0.08, 1.0]) * depth
    p_file = c2w[view, :, :3] @ cam + c2w[view, :, 3]
    u, v = f * cam[0] / cam[2] + w / 2, f * cam[1] / cam[2] + h / 2  # its pixel, from the file's own camera
    rays_o, rays_d = rays_at(scene, view, 1.0, torch.tensor([float(u)]), torch.tensor([float(v)]))
    p_field = world_to_field(scene, torch.as_tensor(input_to_world(scene, p_file[None]), dtype=torch.float32))
    # the point lies on its pixel's ray in the field's frame (NDC for forward scenes; unbounded scenes march
    # world rays and contract the samples), in front of the camera
    ray_point = p_field if scene.kind != "unbounded" else uncontract(p_field)
    t = float(((ray_point - rays_o) * rays_d).sum() / (rays_d * rays_d).sum())
    assert t > 0
    assert torch.allclose(rays_o + t * rays_d, ray_point, rtol=1e-4, atol=1e-4)
    # and the way back lands where it started
    np.testing.assert_allclose(field_to_input(scene, p_field)[0], p_file, rtol=1e-3, atol=1e-3)
