"""Field-frame points back to the world and camera depth (the scale unit of LERF's language field)."""

import numpy as np
import torch

from ovs3d.io.loader import load_scene
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
