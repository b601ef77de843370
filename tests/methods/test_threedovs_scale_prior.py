"""The scale priors of the Selection Volume (issue 8: DINO, cross-view agreement) against simple reference
implementations."""

import pytest
import torch
import torch.nn.functional as F

from ovs3d import losses as L
from ovs3d.methods.threedovs.scale_prior import agreement_scales, dino_purity, pixel_scale_prior, preferred_scales


def _purity_loop(dino, radii, shift):
    f = F.normalize(dino, dim=-1)
    h, w, _ = f.shape
    out = torch.zeros(h, w, len(radii))
    for y in range(h):
        for x in range(w):
            for s, r in enumerate(radii):
                ys, xs = slice(max(0, y - r), min(h, y + r + 1)), slice(max(0, x - r), min(w, x + r + 1))
                sim = (f[ys, xs] @ f[y, x]) > shift
                out[y, x, s] = sim.float().mean()
    return out


def test_purity_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    dino = torch.randn(7, 9, 5, generator=g)
    radii = [3, 1, 0]
    torch.testing.assert_close(dino_purity(dino, radii, 0.2), _purity_loop(dino, radii, 0.2))


def test_preferred_scale_is_the_largest_mostly_pure_window():
    purity = torch.tensor([[0.9, 0.9, 1.0], [0.3, 0.6, 1.0], [0.2, 0.4, 0.45], [0.1, 0.2, 1.0]])
    assert preferred_scales(purity, 0.5).tolist() == [0, 1, 2, 2]


def test_small_segment_prefers_the_small_scale():
    """A 2x2-cell object on a uniform background: the background far away reads the largest window,
    the object the smallest."""
    dino = torch.zeros(16, 16, 4)
    dino[..., 0] = 1.0
    dino[7:9, 7:9] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    # CLIP grid at twice the cell density (cells_per_px = 4 / (1 * 8) = 0.5), windows of 12, 8 and 4 px
    prior = pixel_scale_prior(dino, (32, 32), 4.0, 1.0, 8, [12, 8, 4], shift=0.7).reshape(32, 32)
    assert prior[0, 0] == 0  # background corner: the largest window is all background
    assert (prior[15:17, 15:17] == 2).all()  # on the object: only the smallest window is mostly object


def _rays_in_voxels(voxel_of_ray: torch.Tensor):
    """One sample per ray at the centre of voxel ``voxel_of_ray[r]`` of a 4x1x1 grid in the unit box."""
    aabb = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    xyz = torch.stack(
        [
            (voxel_of_ray.float() + 0.5) / 4,
            torch.full_like(voxel_of_ray, 0.5, dtype=torch.float32),
            torch.full_like(voxel_of_ray, 0.5, dtype=torch.float32),
        ],
        -1,
    )[:, None]  # [R, 1, 3]
    return xyz, torch.ones(len(voxel_of_ray), 1), aabb, (4, 1, 1)


def _agreement_loop(relevancy, voxel_of_ray, threshold):
    r, s, _ = relevancy.shape
    own = relevancy.argmax(-1)
    out = []
    for i in range(r):
        peers = voxel_of_ray == voxel_of_ray[i]
        agree = [float((own[peers, k] == own[i, k]).float().mean()) for k in range(s)]
        ok = [k for k in range(s) if agree[k] >= threshold]
        out.append(max(ok) if ok else max(range(s), key=lambda k: agree[k]))
    return out


def test_agreement_prior_matches_a_loop():
    g = torch.Generator().manual_seed(3)
    voxel_of_ray = torch.randint(0, 4, (40,), generator=g)
    rel = torch.rand(40, 3, 4, generator=g)
    xyz, w, aabb, res = _rays_in_voxels(voxel_of_ray)
    for threshold in (0.3, 0.5, 0.8):
        got = agreement_scales(rel, xyz, w, aabb, res, threshold)
        assert got.tolist() == _agreement_loop(rel, voxel_of_ray, threshold)


def test_agreement_prior_takes_the_finest_window_the_views_confirm():
    """Five views of each of two points. Point A: every scale agrees, so the finest window is taken. Point B:
    the finest window reads a different label in every view (a small crop without context), the middle one
    agrees, so the middle one is taken. Point C: no scale reaches a majority: the most agreed one."""
    voxel_of_ray = torch.tensor([0] * 5 + [1] * 5 + [2] * 5)
    labels = torch.tensor(
        [[1, 1, 1]] * 5  # A
        + [[0, 2, k] for k in range(5)]  # B: fine scale votes 0..4
        + [[k % 3, [0, 0, 1, 1, 2][k], k] for k in range(5)]  # C: 2/5, 2/5 at best, 1/5
    )
    rel = F.one_hot(labels, 5).float()
    xyz, w, aabb, res = _rays_in_voxels(voxel_of_ray)
    got = agreement_scales(rel, xyz, w, aabb, res, 0.5)
    assert got[:5].tolist() == [2] * 5
    assert got[5:10].tolist() == [1] * 5
    assert got[10:].tolist() == _agreement_loop(rel, voxel_of_ray, 0.5)[10:]
    assert all(k in (0, 1) for k in got[10:].tolist())


def test_rda_temperature_sharpens_the_target():
    rel = torch.tensor([[0.6, 0.5, 0.1]])
    q1 = L.relevancy_distribution(rel, mode="code")
    q02 = L.relevancy_distribution(rel, mode="code", temperature=0.2)
    torch.testing.assert_close(q02, torch.softmax(rel / 0.2, -1))
    assert q02[0, 0] > q1[0, 0] and q02.argmax() == q1.argmax()
    p1 = L.relevancy_distribution(rel, mode="paper")
    p05 = L.relevancy_distribution(rel, mode="paper", temperature=0.5)
    assert p05[0, 0] > p1[0, 0]
    torch.testing.assert_close(p05.sum(-1), torch.ones(1))


def test_balanced_ray_weights_give_each_pseudo_class_an_equal_share():
    from ovs3d.methods.threedovs.method import balanced_ray_weights

    # 90 rays whose relevancy says class 0, 10 that say class 2 (scales averaged)
    rel = torch.zeros(100, 3, 3)
    rel[:90, :, 0] = 1.0
    rel[90:, :, 2] = 1.0
    w = balanced_ray_weights(rel)
    assert w[:90].sum() == pytest.approx(1.0) and w[90:].sum() == pytest.approx(1.0)
    # with a preferred scale, the pseudo-class is read at that scale
    rel[:5, 2] = torch.tensor([0.0, 1.0, 0.0])
    w = balanced_ray_weights(rel, torch.tensor([2] * 5 + [0] * 95))
    assert w[:5].sum() == pytest.approx(1.0)


def test_semantic_grid_lets_features_depend_on_position():
    from ovs3d.field.semantic import SemanticHeads

    aabb = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    plain = SemanticHeads(aabb, (8, 8, 8), app_dim=4, feature_dim=6, width=8, seed=0)
    heads = SemanticHeads(aabb, (8, 8, 8), app_dim=4, feature_dim=6, width=8, seed=0, semantic_components=(2, 2, 2))
    app = torch.ones(2, 4)  # the same appearance at two places
    xyz = torch.tensor([[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]])
    f = heads.features(app, xyz)
    assert not torch.allclose(f[0], f[1])
    torch.testing.assert_close(plain.features(app)[0], plain.features(app)[1])
    with pytest.raises(ValueError, match="positions"):
        heads.features(app)


def _border_loop(cls):
    """Reference: 4-neighbour class changes, regions by flood fill, a region's border kept only with an interior."""
    h, w = cls.shape

    def nbrs(y, x):
        steps = ((1, 0), (-1, 0), (0, 1), (0, -1))
        return [(y + a, x + b) for a, b in steps if 0 <= y + a < h and 0 <= x + b < w]

    border = [[any(cls[q] != cls[y, x] for q in nbrs(y, x)) for x in range(w)] for y in range(h)]
    region = -torch.ones(h, w, dtype=torch.long)
    n = 0
    for y in range(h):
        for x in range(w):
            if region[y, x] >= 0:
                continue
            stack, region[y, x] = [(y, x)], n
            while stack:
                p = stack.pop()
                for q in nbrs(*p):
                    if region[q] < 0 and cls[q] == cls[p]:
                        region[q] = n
                        stack.append(q)
            n += 1
    interior = {int(region[y, x]) for y in range(h) for x in range(w) if not border[y][x]}
    return torch.tensor([[border[y][x] and int(region[y, x]) in interior for x in range(w)] for y in range(h)])


def test_label_border_rays_match_a_loop_and_spare_regions_without_an_interior():
    from ovs3d.methods.threedovs.method import label_border_rays

    cls = torch.zeros(6, 7, dtype=torch.long)
    cls[1:5, 1:5] = 1  # a 4x4 object: its ring is a border, its 2x2 centre is not
    cls[0, 6] = 2  # one pixel: no interior, keeps its ray
    cls[5, 5:7] = 3  # a 1x2 strip: no interior either
    got = label_border_rays(cls.reshape(-1), 1, (7, 6)).reshape(6, 7)
    assert torch.equal(got, _border_loop(cls))
    assert not got[0, 6] and not got[5, 5:].any() and got[1, 1:5].all() and not got[2:4, 2:4].any()
    # random maps, two views laid out row-major
    g = torch.Generator().manual_seed(0)
    maps = torch.randint(0, 3, (2, 9, 11), generator=g)
    maps[:, 2:7, 3:9] = 1  # a large region among the noise
    got = label_border_rays(maps.reshape(-1), 2, (11, 9)).reshape(2, 9, 11)
    for v in range(2):
        assert torch.equal(got[v], _border_loop(maps[v]))
