"""The dense CRF over a rendered view (issue 8, round 13) against simple reference implementations."""

import math

import pytest
import torch

from ovs3d.render.crf import dense_crf, joint_bilateral


def _bilateral_loop(values, rgb, depth, radius, s_rgb, s_dep, skip_self):
    h, w, _ = values.shape
    out = torch.zeros_like(values)
    for y in range(h):
        for x in range(w):
            num, den = torch.zeros(values.shape[-1]), 0.0
            for qy in range(max(0, y - radius), min(h, y + radius + 1)):
                for qx in range(max(0, x - radius), min(w, x + radius + 1)):
                    if skip_self and (qy, qx) == (y, x):
                        continue
                    d2 = (qy - y) ** 2 + (qx - x) ** 2
                    c2 = float(((rgb[qy, qx] - rgb[y, x]) ** 2).sum())
                    z2 = float((depth[qy, qx] - depth[y, x]) / depth[y, x]) ** 2
                    wgt = math.exp(-d2 / (2 * radius**2) - c2 / (2 * s_rgb**2) - z2 / (2 * s_dep**2))
                    num += wgt * values[qy, qx]
                    den += wgt
            out[y, x] = num / den
    return out


@pytest.mark.parametrize("skip_self", [False, True])
def test_joint_bilateral_matches_a_loop(skip_self):
    g = torch.Generator().manual_seed(0)
    values, rgb = torch.rand(7, 9, 4, generator=g), torch.rand(7, 9, 3, generator=g)
    depth = 0.5 + torch.rand(7, 9, generator=g)
    got = joint_bilateral(values, rgb, depth, 2, 0.3, 0.2, skip_self=skip_self)
    assert torch.allclose(got, _bilateral_loop(values, rgb, depth, 2, 0.3, 0.2, skip_self), atol=1e-5)


def _two_regions():
    """A 9x9 view: a square object (label 1, red, near) on a wall (label 0, grey, far)."""
    rgb = torch.full((9, 9, 3), 0.5)
    depth = torch.full((9, 9), 2.0)
    obj = torch.zeros(9, 9, dtype=torch.bool)
    obj[2:7, 2:7] = True
    rgb[obj] = torch.tensor([0.9, 0.1, 0.1])
    depth[obj] = 1.0
    return rgb, depth, obj


def test_dense_crf_moves_a_border_pixel_to_the_neighbours_it_looks_like():
    rgb, depth, obj = _two_regions()
    logits = torch.where(obj[..., None], torch.tensor([0.0, 2.0]), torch.tensor([2.0, 0.0]))
    logits[2, 4] = torch.tensor([0.5, 0.0])  # an object pixel on its edge, mildly read as wall
    logits[1, 4] = torch.tensor([0.0, 0.5])  # a wall pixel beside it, mildly read as object
    assert dense_crf(logits, rgb, depth, 4.0, 2, 0.1, 0.05, iters=0).argmax(-1)[2, 4] == 0  # iters 0: the argmax
    labels = dense_crf(logits, rgb, depth, 4.0, 2, 0.1, 0.05, iters=5).argmax(-1)
    assert torch.equal(labels, obj.long())


def test_dense_crf_keeps_confident_pixels_and_a_region_that_looks_like_nothing_around_it():
    rgb, depth, obj = _two_regions()
    small = torch.zeros(9, 9, dtype=torch.bool)
    small[4, 4] = True  # one pixel of its own label, coloured and placed unlike its neighbours
    rgb[small], depth[small] = torch.tensor([0.1, 0.9, 0.1]), 0.8
    logits = torch.zeros(9, 9, 3)
    logits[..., 0] = 2.0 * ~obj
    logits[..., 1] = 2.0 * (obj & ~small)
    logits[..., 2] = 2.0 * small
    labels = dense_crf(logits * 10, rgb, depth, 4.0, 2, 0.1, 0.05, iters=5).argmax(-1)
    assert labels[4, 4] == 2 and torch.equal(labels[~small], obj[~small].long())
    q = dense_crf(logits, rgb, depth, 4.0, 2, 0.1, 0.05, iters=3)
    assert torch.allclose(q.sum(-1), torch.ones(9, 9))


def test_fill_from_nearest_matches_a_brute_force_search():
    from ovs3d.render.crf import fill_from_nearest

    g = torch.Generator().manual_seed(3)
    values = torch.randn(7, 9, 4, generator=g)
    keep = torch.rand(7, 9, generator=g) > 0.6
    out = fill_from_nearest(values, keep)
    ys, xs = torch.nonzero(keep, as_tuple=True)
    for y in range(7):
        for x in range(9):
            if keep[y, x]:
                assert torch.equal(out[y, x], values[y, x])
                continue
            d2 = (ys - y) ** 2 + (xs - x) ** 2
            nearest = torch.nonzero(d2 == d2.min()).flatten()  # ties: any of them
            assert any(torch.equal(out[y, x], values[ys[i], xs[i]]) for i in nearest)
    assert fill_from_nearest(values, torch.ones(7, 9, dtype=torch.bool)) is values
    assert fill_from_nearest(values, torch.zeros(7, 9, dtype=torch.bool)) is values
