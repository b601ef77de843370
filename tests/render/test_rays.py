import math

import numpy as np
import torch

from ovs3d.io.conventions import llff_to_opencv, opencv_to_llff
from ovs3d.render.rays import camera_rays, image_rays, ndc_rays, pixel_grid, ray_aabb_intersect


def test_pixel_grid_centres_row_major():
    u, v = pixel_grid(3, 2)
    assert u.tolist() == [0.5, 1.5, 2.5, 0.5, 1.5, 2.5]
    assert v.tolist() == [0.5, 0.5, 0.5, 1.5, 1.5, 1.5]


def test_identity_camera_opencv():
    # OpenCV identity camera: looks along +z, image x right, image y down.
    c2w = torch.eye(4)[:3]
    intr = torch.tensor([100.0, 100.0, 50.0, 40.0])
    o, d = camera_rays(c2w, intr, torch.tensor([50.0, 150.0, 50.0]), torch.tensor([40.0, 40.0, 140.0]))
    assert torch.allclose(o, torch.zeros(3, 3))
    assert torch.allclose(d[0], torch.tensor([0.0, 0.0, 1.0]))  # principal point -> optical axis
    assert torch.allclose(d[1], torch.tensor([1.0, 0.0, 1.0]))  # 100 px right at f=100 -> 45 deg right
    assert torch.allclose(d[2], torch.tensor([0.0, 1.0, 1.0]))  # 100 px down -> +y (down)


def test_hand_checked_llff_camera():
    # An LLFF camera at (1, 2, 3) whose [down, right, back] axes are world (-y, +x, +z):
    # a standard OpenGL camera (right = x, up = y, back = z) that looks along world -z.
    llff = np.zeros((1, 3, 4))
    llff[0, :, 0] = [0, -1, 0]  # down
    llff[0, :, 1] = [1, 0, 0]  # right
    llff[0, :, 2] = [0, 0, 1]  # back
    llff[0, :, 3] = [1, 2, 3]
    c2w = llff_to_opencv(llff)
    assert np.allclose(opencv_to_llff(c2w), llff)
    intr = torch.tensor([10.0, 10.0, 2.0, 2.0])
    o, d = image_rays(torch.as_tensor(c2w[0], dtype=torch.float32), intr, 4, 4)
    centre = d.reshape(4, 4, 3)
    # the principal point (2, 2) is the corner between pixels (1,1) and (2,2): average of their rays
    axis = (centre[1, 1] + centre[2, 2]) / 2
    assert torch.allclose(axis / axis.norm(), torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)
    # a pixel to the right of centre goes to world +x, a pixel below goes to world -y
    assert d.reshape(4, 4, 3)[2, 3, 0] > 0
    assert d.reshape(4, 4, 3)[3, 2, 1] < 0
    assert torch.allclose(o, torch.tensor([1.0, 2.0, 3.0]).expand(16, 3))


def test_ndc_maps_near_plane_and_infinity():
    # camera at origin looking along -z (OpenCV rotation diag(1,-1,-1)), f = W/2 so that NDC x = -x/z.
    c2w = torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 0]])
    intr = torch.tensor([2.0, 2.0, 2.0, 2.0])
    o, d = camera_rays(c2w, intr, torch.tensor([3.0]), torch.tensor([1.0]))
    no, nd = ndc_rays(o, d, intr, 4, 4, near=1.0)
    # t = 0: the near plane (NDC z = -1); t = 1: infinity (NDC z = +1)
    assert math.isclose(float(no[0, 2]), -1.0, abs_tol=1e-6)
    assert math.isclose(float((no + nd)[0, 2]), 1.0, abs_tol=1e-6)
    # a world point on the ray at depth 4 maps to NDC z = 1 - 2 * near / depth
    world = o + 4.0 * d / -d[:, 2:3]
    z_ndc = 1 + 2 * 1.0 / world[0, 2]
    t = (z_ndc - no[0, 2]) / nd[0, 2]
    x_ndc = (no + t * nd)[0, 0]
    assert torch.isclose(x_ndc, -(2 * 2.0 / 4) * world[0, 0] / world[0, 2], atol=1e-6)


def test_ray_aabb_intersect():
    o = torch.tensor([[0.0, 0, -5], [5.0, 5, -5]])
    d = torch.tensor([[0.0, 0, 1], [0.0, 0, 1]])
    tn, tf = ray_aabb_intersect(o, d, torch.tensor([[-1.0, -1, -1], [1.0, 1, 1]]))
    assert torch.allclose(tn[0], torch.tensor(4.0)) and torch.allclose(tf[0], torch.tensor(6.0))
    assert tf[1] <= tn[1]
