import torch

from ovs3d.field.occupancy import compute_occupancy, query_occupancy, voxel_centers
from ovs3d.field.tensorf import MAT_MODE, VEC_MODE, TensoRFField, resample_vm, resolution_for_voxels, vm_sample


def _bilinear(img, x, y):
    # img [C, H, W]; x, y in [-1, 1] with align_corners=True
    c, h, w = img.shape
    fx, fy = (x + 1) / 2 * (w - 1), (y + 1) / 2 * (h - 1)
    x0, y0 = int(fx), int(fy)
    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
    ax, ay = fx - x0, fy - y0
    return (
        img[:, y0, x0] * (1 - ax) * (1 - ay)
        + img[:, y0, x1] * ax * (1 - ay)
        + img[:, y1, x0] * (1 - ax) * ay
        + img[:, y1, x1] * ax * ay
    )


def test_vm_sample_matches_explicit_products():
    g = torch.Generator().manual_seed(0)
    res = [5, 4, 3]
    planes = [torch.randn(1, 2, res[b], res[a], generator=g, dtype=torch.float64) for a, b in MAT_MODE]
    lines = [torch.randn(1, 2, res[c], 1, generator=g, dtype=torch.float64) for c in VEC_MODE]
    pts = torch.rand(6, 3, generator=g, dtype=torch.float64) * 2 - 1
    out = vm_sample(planes, lines, pts)
    for m, p in enumerate(pts):
        ref = []
        for plane, line, (a, b), c in zip(planes, lines, MAT_MODE, VEC_MODE):
            pv = _bilinear(plane[0], float(p[a]), float(p[b]))
            lv = _bilinear(line[0], 0.0, float(p[c]))
            ref.append(pv * lv)
        assert torch.allclose(out[m], torch.cat(ref), atol=1e-10)


def test_resample_keeps_corner_values_and_shapes():
    planes = [torch.randn(1, 2, 4, 5) for _ in range(3)]
    lines = [torch.randn(1, 2, 3, 1) for _ in range(3)]
    new_p, new_l = resample_vm(planes, lines, [9, 7, 5])
    assert new_p[0].shape == (1, 2, 7, 9) and new_p[1].shape == (1, 2, 5, 9) and new_p[2].shape == (1, 2, 5, 7)
    assert new_l[0].shape == (1, 2, 5, 1)
    assert torch.allclose(new_p[0][..., 0, 0], planes[0][..., 0, 0])


def test_upsample_preserves_field_values():
    aabb = torch.tensor([[-1.0, -1, -1], [1.0, 1, 1]])
    f = TensoRFField(aabb, [8, 8, 8], (2, 1, 1), (3, 2, 2), app_dim=4, mlp_width=8)
    pts = torch.rand(50, 3) * 2 - 1
    before = f.density(pts)
    f.upsample([15, 15, 15])  # 2x-1 nodes: the old nodes and their midpoints, so each factor is unchanged
    assert f.grid_resolution == [15, 15, 15]
    assert torch.allclose(f.density(pts), before, atol=1e-5)


def test_resolution_for_voxels_cubic():
    res = resolution_for_voxels(1000, torch.tensor([[0.0, 0, 0], [2.0, 1, 1]]))
    assert res[0] == 2 * res[1] and abs(res[0] * res[1] * res[2] - 1000) < 300


def test_occupancy_marks_dense_region_only():
    aabb = torch.tensor([[-1.0, -1, -1], [1.0, 1, 1]])

    def density(x):  # a ball of radius 0.3
        return (x.norm(dim=-1) < 0.3).float() * 10

    occ = compute_occupancy(density, aabb, [16, 16, 16], step_size=0.1, distance_scale=1.0, dilate=0)
    centers = voxel_centers(aabb, [16, 16, 16])
    assert torch.equal(occ, centers.norm(dim=-1) < 0.3)
    pts = torch.tensor([[0.0, 0, 0], [0.9, 0.9, 0.9], [2.0, 0, 0]])
    assert query_occupancy(occ, aabb, pts).tolist() == [True, False, False]


def test_shrink_keeps_the_field_inside_the_new_box():
    """TensoRF's shrink: the grids are cropped to the points enclosing a box; values inside it are unchanged."""
    aabb = torch.tensor([[-1.0, -2.0, -1.0], [1.0, 2.0, 3.0]])
    f = TensoRFField(aabb, [9, 11, 13], (2, 1, 1), (3, 2, 2), app_dim=4, mlp_width=8, seed=3)
    with torch.no_grad():  # an asymmetric field: an axis mix-up would change the values
        for p in [*f.density_planes, *f.density_lines, *f.app_planes, *f.app_lines]:
            p.copy_(torch.randn_like(p))
    box = torch.tensor([[-0.3, 0.1, 0.2], [0.6, 1.7, 2.1]])
    g = torch.Generator().manual_seed(0)
    pts = box[0] + torch.rand(200, 3, generator=g) * (box[1] - box[0])
    dens, app = f.density(pts), f.app_features(pts)
    f.shrink(box)
    assert (f.aabb[0] <= box[0]).all() and (f.aabb[1] >= box[1]).all()  # encloses the box
    units_before = (aabb[1] - aabb[0]) / (torch.tensor([9, 11, 13]) - 1)
    assert ((f.aabb[0] - box[0]).abs() < units_before + 1e-6).all()  # and is at most one grid step wider
    assert ((f.aabb[1] - box[1]).abs() < units_before + 1e-6).all()
    res = f.grid_resolution
    assert res == [6, 6, 8]  # x: points 2..7 of 9, y: 5..10 of 11, z: 3..10 of 13
    assert f.density_planes[0].shape[-2:] == (res[1], res[0]) and f.density_lines[0].shape[-2] == res[2]
    assert torch.allclose(f.density(pts), dens, atol=1e-5)
    assert torch.allclose(f.app_features(pts), app, atol=1e-5)
    f.shrink(torch.tensor([[-5.0, -5, -5], [5.0, 5, 5]]))  # a box larger than the field keeps it whole
    assert f.grid_resolution == res


def test_init_scales_set_each_grid_family_alone():
    aabb = torch.tensor([[-1.0, -1, -1], [1.0, 1, 1]])
    ref = TensoRFField(aabb, [20, 20, 20], (4, 2, 2), (6, 3, 3), app_dim=4, mlp_width=8, seed=3)
    f = TensoRFField(aabb, [20, 20, 20], (4, 2, 2), (6, 3, 3), app_dim=4, mlp_width=8, seed=3, density_init_scale=0.01)
    # same draws, scaled: the density grids by 0.01 / 0.1, the appearance grids and the network untouched
    for a, b in zip(f.density_planes, ref.density_planes):
        assert torch.allclose(a, 0.1 * b)
    for a, b in zip(f.density_lines, ref.density_lines):
        assert torch.allclose(a, 0.1 * b)
    for a, b in zip(f.app_planes, ref.app_planes):
        assert torch.equal(a, b)
    assert torch.equal(f.basis_mat.weight, ref.basis_mat.weight)
    assert abs(float(f.density_planes[0].detach().std()) - 0.01) < 0.002
