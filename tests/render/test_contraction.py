"""Scene contraction (mip-NeRF 360) and its ray samples, and marching an unbounded field."""

from __future__ import annotations

import numpy as np
import torch

from ovs3d.render.contraction import (
    contract,
    contracted_samples,
    ray_distance,
    ray_distance_inverse,
    uncontract,
)


def test_contract_matches_the_formula_and_inverts():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 3, generator=gen) * torch.logspace(-1, 3, 1000)[:, None]
    y = contract(x)
    n = x.norm(dim=-1, keepdim=True)
    ref = torch.where(n <= 1, x, (2 - 1 / n) * (x / n))
    assert torch.allclose(y, ref)
    assert (y.norm(dim=-1) < 2).all()
    keep = n[:, 0] < 1e3  # float32 cannot invert points within 1e-4 of the outer shell
    assert torch.allclose(uncontract(y[keep]), x[keep], rtol=1e-3, atol=1e-5)
    # continuous across the unit sphere
    u = torch.tensor([[1 - 1e-6, 0, 0], [1 + 1e-6, 0, 0]])
    assert torch.allclose(contract(u)[0], contract(u)[1], atol=1e-5)


def test_ray_distance_is_continuous_monotone_and_inverts():
    t = torch.linspace(0, 500, 20001)
    s = ray_distance(t)
    assert (s[1:] >= s[:-1]).all() and float(s.max()) < 4.0
    assert torch.allclose(ray_distance_inverse(s), t, rtol=1e-4, atol=1e-4)


def test_contracted_samples_cover_near_to_infinity_in_order():
    t_near = torch.tensor([0.1, 0.5, 3.0])
    t_mid, dt = contracted_samples(t_near, 64, perturb=False)
    assert (t_mid[:, 1:] > t_mid[:, :-1]).all()
    assert (t_mid[:, 0] > t_near).all() and (t_mid[:, -1] > 100).all()
    # the bins tile [near, edge of the last bin]: their lengths add up
    s = ray_distance(t_near)
    last_edge = ray_distance_inverse(s + (4.0 - s) * (63 / 64))
    assert torch.allclose(t_near + dt[:, :-1].sum(1), last_edge, rtol=1e-4)
    gen = torch.Generator().manual_seed(1)
    jittered, _ = contracted_samples(t_near, 64, perturb=True, generator=gen)
    assert (jittered[:, 1:] >= jittered[:, :-1]).all()


def test_a_contracted_field_renders_a_distant_wall_at_its_depth():
    """A sphere of density at world radius 12 around the camera: marched in contracted space, the rays end on it."""
    from ovs3d.field.tensorf import TensoRFField
    from ovs3d.render.marching import MarchConfig, march

    field = TensoRFField(torch.tensor([[-2.0] * 3, [2.0] * 3]), [64, 64, 64], (4, 2, 2), (4, 2, 2), 8, 16)
    field.contracted = True
    wall = float(contract(torch.tensor([[12.0, 0, 0]])).norm())

    def density(xyz):
        return 200.0 * (xyz.norm(dim=-1) > wall).float()

    field.density = density  # a hand-made density in contracted space
    gen = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(16, 3, generator=gen), dim=-1)
    o = torch.zeros(16, 3)
    m = march(field, None, o, d, MarchConfig(), near=0.05)
    depth = (m.weights * m.t_mid).sum(-1) / m.weights.sum(-1)
    assert (m.xyz.norm(dim=-1) < 2).all()
    np.testing.assert_allclose(depth.numpy(), 12.0, rtol=0.1)
    assert (m.weights.sum(-1) > 0.99).all()
