"""Shared training targets: the voxel consensus against a loop over voxels."""

from __future__ import annotations

import torch

from ovs3d.methods.targets import voxel_consensus


def _consensus_loop(xyz, weights, values, aabb, res):
    """Reference: a dict of voxels, filled ray by ray and sample by sample."""
    size = (aabb[1] - aabb[0]) / torch.tensor(res, dtype=torch.float32)
    num, den = {}, {}
    keys = []
    for r in range(xyz.shape[0]):
        row = []
        for k in range(xyz.shape[1]):
            cell = tuple(
                min(max(int(((xyz[r, k, a] - aabb[0, a]) / size[a]).floor()), 0), res[a] - 1) for a in range(3)
            )
            row.append(cell)
            num[cell] = num.get(cell, 0) + weights[r, k] * values[r]
            den[cell] = den.get(cell, 0) + weights[r, k]
        keys.append(row)
    out = values.clone()
    for r, row in enumerate(keys):
        total = weights[r].sum()
        if total > 1e-8:
            out[r] = sum(weights[r, k] * num[c] / max(den[c], 1e-8) for k, c in enumerate(row)) / total
    return out


def test_voxel_consensus_matches_loop():
    g = torch.Generator().manual_seed(0)
    aabb = torch.tensor([[-1.0, -0.5, 0.0], [1.0, 0.5, 2.0]])
    res = (4, 3, 5)
    # samples inside and (a few) outside the box, so clamping is exercised
    xyz = torch.rand(40, 3, 3, generator=g) * torch.tensor([2.4, 1.2, 2.4]) + torch.tensor([-1.2, -0.6, -0.2])
    weights = torch.rand(40, 3, generator=g)
    weights[5] = 0  # a ray without weight keeps its own value
    weights[7, 1] = 0  # padding
    values = torch.rand(40, 6, generator=g)
    got = voxel_consensus(xyz, weights, values, aabb, res)
    torch.testing.assert_close(got, _consensus_loop(xyz, weights, values, aabb, res), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[5], values[5])


def test_voxel_consensus_outvotes_one_view():
    """Nine rays ending in one voxel say class 0, one says class 1: all of them read back mostly class 0."""
    aabb = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    xyz = torch.full((10, 1, 3), 0.3)
    weights = torch.ones(10, 1)
    values = torch.zeros(10, 2)
    values[:9, 0] = 1
    values[9, 1] = 1
    got = voxel_consensus(xyz, weights, values, aabb, (2, 2, 2))
    assert (got.argmax(-1) == 0).all()
    torch.testing.assert_close(got[9], torch.tensor([0.9, 0.1]))


def test_edge_aware_targets_match_a_per_pixel_loop_and_renormalise():
    import math

    from ovs3d.methods.targets import edge_aware_targets

    g = torch.Generator().manual_seed(3)
    h, w, s, d = 5, 6, 2, 3
    targets = torch.nn.functional.normalize(torch.randn(h * w, s, d, generator=g), dim=-1)
    rgb, depth = torch.rand(h, w, 3, generator=g), 1 + torch.rand(h, w, generator=g)
    got = edge_aware_targets(targets, rgb, depth, radius=1, sigma_rgb=0.3, sigma_depth=0.2, chunk=4)
    expected = torch.zeros(h * w, s, d)
    for y in range(h):
        for x in range(w):
            acc, tot = torch.zeros(s, d), 0.0
            for yy in range(max(0, y - 1), min(h, y + 2)):
                for xx in range(max(0, x - 1), min(w, x + 2)):
                    d2 = (yy - y) ** 2 + (xx - x) ** 2
                    c2 = float(((rgb[yy, xx] - rgb[y, x]) ** 2).sum())
                    z2 = float((depth[yy, xx] - depth[y, x]) / depth[y, x]) ** 2
                    wt = math.exp(-d2 / 2 - c2 / (2 * 0.3**2) - z2 / (2 * 0.2**2))
                    acc += wt * targets[yy * w + xx]
                    tot += wt
            expected[y * w + x] = torch.nn.functional.normalize(acc / tot, dim=-1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_edge_aware_targets_give_a_border_pixel_the_features_of_its_own_side():
    from ovs3d.methods.targets import edge_aware_targets

    h, w = 4, 8
    rgb = torch.zeros(h, w, 3)
    rgb[:, 4:] = 1.0  # two regions of different colour, the edge between columns 3 and 4
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    feats = torch.where(torch.arange(w)[None, :, None] < 3, a, b).expand(h, w, 2).clone()  # column 3 reads b
    out = edge_aware_targets(feats.reshape(h * w, 1, 2), rgb, torch.ones(h, w), 2, 0.1, 0.05).reshape(h, w, 2)
    assert bool((out[:, 3, 0] > out[:, 3, 1]).all())  # the misread border column now leans to its side's a
    assert bool((out[:, 4:, 1] > 0.99).all())  # the other side keeps b
