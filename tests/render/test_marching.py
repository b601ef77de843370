"""The marcher with occupancy skipping must composite exactly what marching without it does."""

import pytest
import torch

from ovs3d.field.occupancy import compute_occupancy
from ovs3d.render.marching import MarchConfig, march

AABB = torch.tensor([[-1.0, -1.0, 0.0], [1.0, 1.5, 2.0]])  # a different extent per axis
RESOLUTION = [10, 10, 20]  # (G_x, G_y, G_z): voxels of 0.2 x 0.25 x 0.1
BOX = torch.tensor([[0.2, -0.5, 0.4], [0.6, 0.0, 1.0]])  # off-centre, a different size per axis


class BoxField:
    """A field-like object with density 30 inside :data:`BOX` and 0 elsewhere (what ``march`` reads)."""

    aabb = AABB
    resolution = torch.tensor(RESOLUTION)

    def density(self, xyz: torch.Tensor) -> torch.Tensor:
        inside = ((xyz >= BOX[0]) & (xyz <= BOX[1])).all(-1)
        return inside.float() * 30.0


def _rays(n: int = 256):
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([0.8, 1.0]) + torch.tensor([0.0, -0.75])
    o = torch.cat([xy, torch.full((n, 1), -0.5)], -1)
    d = torch.nn.functional.normalize(torch.cat([0.2 * torch.randn(n, 2, generator=g), torch.ones(n, 1)], -1), dim=-1)
    return o, d


def test_occupancy_skipping_matches_marching_everything():
    field, cfg = BoxField(), MarchConfig(step_ratio=0.5)
    step = float(((AABB[1] - AABB[0]) / torch.tensor(RESOLUTION)).norm()) * cfg.step_ratio / 3**0.5
    occ = compute_occupancy(field.density, AABB, RESOLUTION, step, cfg.distance_scale)
    assert occ.shape == (RESOLUTION[2], RESOLUTION[1], RESOLUTION[0])
    assert 0 < occ.float().mean() < 0.2  # it does skip most of the box
    o, d = _rays()
    full = march(field, None, o, d, cfg)
    skip = march(field, occ, o, d, cfg)
    assert full.weights.sum(-1).max() > 0.5  # the rays do hit the box
    assert skip.valid.sum() < 0.5 * full.valid.sum()  # far fewer density queries
    torch.testing.assert_close(skip.weights, full.weights)


def test_an_axis_swapped_occupancy_grid_fails():
    field, cfg = BoxField(), MarchConfig(step_ratio=0.5)
    step = float(((AABB[1] - AABB[0]) / torch.tensor(RESOLUTION)).norm()) * cfg.step_ratio / 3**0.5
    occ = compute_occupancy(field.density, AABB, RESOLUTION, step, cfg.distance_scale)
    swapped = occ.permute(2, 1, 0)  # [G_x, G_y, G_z] read as [G_z, G_y, G_x]
    o, d = _rays()
    full = march(field, None, o, d, cfg)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(march(field, swapped, o, d, cfg).weights, full.weights)
