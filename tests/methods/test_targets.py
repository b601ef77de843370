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
