"""``ovs3d export``: fusion and surface picking against simple references, PLY round trips, a real export."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ovs3d.errors import OVS3DError
from ovs3d.export import (
    ExportConfig,
    PointCloud,
    export_run,
    fuse_points,
    marching_cubes_mesh,
    median_surface,
    read_points,
    write_gaussians_ply,
    write_points_ply,
)

# -- pure parts against references ------------------------------------------------------------------------


def test_median_surface_matches_a_loop():
    gen = torch.Generator().manual_seed(0)
    xyz = torch.randn(50, 8, 3, generator=gen)
    w = torch.rand(50, 8, generator=gen) * (torch.rand(50, 8, generator=gen) > 0.3)
    got = median_surface(xyz, w)
    for r in range(50):
        total, acc = float(w[r].sum()), 0.0
        k = 7
        for i in range(8):
            acc += float(w[r, i])
            if acc >= 0.5 * total:
                k = i
                break
        assert torch.equal(got[r], xyz[r, k])


def test_marching_cubes_keeps_a_cut_surface_on_the_grids_cells():
    # a block that fills the grid up to its bounds on three sides: its closing faces lie in the zero border
    volume = np.zeros((6, 5, 4))
    volume[2:, :, :] = 1.0
    # a low level puts an unclipped border vertex 0.8 of a cell past the last sample: 0.3 past the grid's cells
    verts, faces = marching_cubes_mesh(volume, 0.2)
    assert len(faces) > 0
    assert (verts >= -0.5).all() and (verts <= np.array(volume.shape) - 0.5).all()
    assert np.isclose(verts[:, 0].min(), 1.2) and np.isclose(verts[:, 0].max(), 5.5)  # inner face kept, outer clipped


def test_fuse_points_matches_a_dictionary_reference():
    rng = np.random.default_rng(1)
    n, c, voxel = 400, 4, 0.25
    xyz = rng.uniform(-1, 1, (n, 3))
    rgb = rng.uniform(0, 1, (n, 3))
    label = rng.integers(-1, c, n)
    score = rng.uniform(0.1, 1, n)
    radius = rng.uniform(0.01, 0.02, n)
    rel = rng.uniform(0, 1, n)
    out = fuse_points(xyz, rgb, label, score, radius, voxel, c, {"rel_x": rel})
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(xyz):
        groups.setdefault(tuple(np.floor(p / voxel).astype(int)), []).append(i)
    assert len(out["label"]) == len(groups)
    for members in groups.values():
        j = out["inverse"][members[0]]
        assert (out["inverse"][members] == j).all()
        np.testing.assert_allclose(out["field_xyz"][j], xyz[members].mean(0), atol=1e-6)
        np.testing.assert_allclose(out["rgb"][j], rgb[members].mean(0), atol=1e-6)
        np.testing.assert_allclose(out["rel_x"][j], rel[members].mean(), atol=1e-6)
        votes = {k: score[[m for m in members if label[m] == k]].sum() for k in range(c)}
        voted = [m for m in members if label[m] >= 0]
        if not voted:
            assert out["label"][j] == -1 and out["score"][j] == 0
            continue
        best = max(votes, key=lambda k: (votes[k], -k))
        assert out["label"][j] == best
        np.testing.assert_allclose(out["score"][j], votes[best] / sum(label[m] == best for m in members), rtol=1e-6)


def _cloud(n: int = 30) -> PointCloud:
    rng = np.random.default_rng(2)
    return PointCloud(
        xyz=rng.normal(size=(n, 3)).astype(np.float32),
        rgb=rng.integers(0, 256, (n, 3)).astype(np.uint8),
        label=rng.integers(-1, 3, n).astype(np.int16),
        score=rng.uniform(0, 1, n).astype(np.float32),
        radius=rng.uniform(0.01, 0.1, n).astype(np.float32),
        classes=["a <red> mug", "Pikachu", "lime wall"],
        colors=np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8),
        properties={"rel_a_red_mug": rng.uniform(0, 1, n).astype(np.float32)},
    )


def test_points_ply_round_trip_with_plyfile(tmp_path):
    from plyfile import PlyData

    pts = _cloud()
    write_points_ply(tmp_path / "points.ply", pts)
    (tmp_path / "labels.json").write_text(json.dumps({"classes": pts.classes, "colors": pts.colors.tolist()}))
    ply = PlyData.read(str(tmp_path / "points.ply"))
    assert not ply.text and ply.byte_order == "<"
    props = {p.name: p.val_dtype for p in ply["vertex"].properties}
    # SPEC §6: float x y z, uchar red green blue, short label, float score (+ extras)
    assert {k: props[k] for k in ("x", "y", "z", "red", "green", "blue", "label", "score")} == {
        "x": "f4", "y": "f4", "z": "f4", "red": "u1", "green": "u1", "blue": "u1", "label": "i2", "score": "f4",
    }  # fmt: skip
    assert any("Pikachu" in c for c in ply.comments)
    back = read_points(tmp_path)
    for k in ("xyz", "rgb", "label", "score", "radius"):
        np.testing.assert_array_equal(getattr(back, k), getattr(pts, k))
    np.testing.assert_array_equal(back.properties["rel_a_red_mug"], pts.properties["rel_a_red_mug"])
    assert back.classes == pts.classes


def test_gaussian_ply_layout(tmp_path):
    from plyfile import PlyData

    pts = _cloud()
    write_gaussians_ply(tmp_path / "g.ply", pts)
    v = PlyData.read(str(tmp_path / "g.ply"))["vertex"].data
    for name in ("f_dc_0", "opacity", "scale_0", "rot_0", "label", "score"):
        assert name in v.dtype.names
    rgb = np.stack([v["f_dc_0"], v["f_dc_1"], v["f_dc_2"]], -1) * 0.28209479177387814 + 0.5
    np.testing.assert_allclose(rgb * 255, pts.rgb, atol=1e-3)
    np.testing.assert_allclose(np.exp(v["scale_0"]), pts.radius / 2, rtol=1e-5)


# -- a real export --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def semantic_run(tmp_path_factory, tiny_scene_dir) -> Path:
    """A short 3dovs run on the 64x48 tiny scene: enough reconstruction to have surfaces."""
    from ovs3d.foundation.features import FeatureConfig
    from ovs3d.methods.reconstruction import ReconstructionConfig
    from ovs3d.methods.threedovs.config import SemanticConfig
    from ovs3d.run import FitConfig, fit

    recon = ReconstructionConfig(
        n_iters=60,
        batch_size=1024,
        init_voxels=16**3,
        final_voxels=32**3,
        upsample_iters=(20, 40),
        occupancy_iters=(30, 50),
        checkpoint_every=1000,
    )
    semantic = SemanticConfig(n_iters=10, joint_start=5, batch_size=256, patch_cells=4, checkpoint_every=1000)
    run = tmp_path_factory.mktemp("export") / "run"
    cfg = FitConfig(
        scene=tiny_scene_dir,
        out=run,
        recon=recon,
        semantic=semantic,
        features=FeatureConfig(semantic_downscale=2.0),
    )
    return fit(cfg)


def test_export_writes_spec_files_in_the_input_frame(semantic_run: Path, tmp_path: Path):
    from ovs3d.io.loader import load_scene
    from ovs3d.render.scene_rays import field_aabb, input_to_world, world_to_field

    out = tmp_path / "export"
    meta = export_run(semantic_run, out, ExportConfig(texts=["a red mug"], format="npz", mesh_resolution=48))
    assert (out / "points.ply").is_file() and (out / "points.npz").is_file()
    labels = json.loads((out / "labels.json").read_text())
    scene = load_scene(json.loads((semantic_run / "config.json").read_text())["fit"]["scene"])
    assert labels["classes"] == scene.classes and labels["frame"] == "input poses"
    assert len(labels["colors"]) == len(scene.classes)
    pts = read_points(out)
    assert len(pts) > 500
    assert pts.label.min() >= 0 and pts.label.max() < len(scene.classes)
    assert ((pts.score > 0) & (pts.score <= 1)).all()
    assert "rel_a_red_mug" in pts.properties
    assert ((pts.properties["rel_a_red_mug"] >= 0) & (pts.properties["rel_a_red_mug"] <= 1)).all()
    # points are in the input (file) frame: mapped into the field's frame they lie inside its box, in
    # front of the cameras
    field = world_to_field(scene, torch.as_tensor(input_to_world(scene, pts.xyz), dtype=torch.float32))
    box = field_aabb(scene)
    assert ((field >= box[0] - 1e-3) & (field <= box[1] + 1e-3)).all()
    # meshes: one per label that has one, inside the field's box and around the points
    assert meta["meshes"], "no label got a mesh"
    from plyfile import PlyData

    pf = world_to_field(scene, torch.as_tensor(input_to_world(scene, pts.xyz), dtype=torch.float32))
    lo, hi = pf.min(0).values, pf.max(0).values
    pad = 0.03 * (hi - lo)  # the grid spans the points' box (1 % margin) in the field's frame
    for rel in meta["meshes"].values():
        mesh = PlyData.read(str(out / rel))
        v = np.stack([mesh["vertex"][k] for k in "xyz"], -1)
        assert len(mesh["face"]) > 0
        vf = world_to_field(scene, torch.as_tensor(input_to_world(scene, v), dtype=torch.float32))
        assert ((vf >= box[0] - 1e-3) & (vf <= box[1] + 1e-3)).all()
        assert ((vf >= lo - pad) & (vf <= hi + pad)).all()


def test_export_refuses_an_existing_folder_and_replaces_it_only_when_asked(semantic_run: Path, tmp_path: Path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    cfg = ExportConfig(meshes=False)
    with pytest.raises(OVS3DError, match="already exists"):
        export_run(semantic_run, out, cfg)
    assert (out / "mine.txt").read_text() == "keep"
    export_run(semantic_run, out, cfg, overwrite=True)
    assert (out / "points.ply").is_file() and not (out / "mine.txt").exists()
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob(".old-*"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(OVS3DError, match="is a file"):
        export_run(semantic_run, tmp_path / "file", cfg)


def test_export_of_a_reconstruction_only_run_has_rgb_points_only(semantic_run: Path, tmp_path: Path, caplog):
    from ovs3d.run import FitConfig, fit, fit_config_from_run

    cfg = fit_config_from_run(semantic_run)
    rgb_cfg = FitConfig(scene=cfg.scene, out=tmp_path / "rgb", method="rgb", recon=cfg.recon, recon_from=semantic_run)
    run = fit(rgb_cfg)
    with caplog.at_level("WARNING"):
        meta = export_run(run, tmp_path / "out")
    assert "reconstruction-only" in caplog.text
    pts = read_points(tmp_path / "out")
    assert len(pts) > 500 and (pts.label == -1).all() and meta["classes"] == [] and meta["meshes"] == {}
    with pytest.raises(OVS3DError, match="reconstruction-only"):
        export_run(run, tmp_path / "out2", replace(ExportConfig(), texts=["a mug"]))


def test_free_space_votes_match_a_loop():
    from ovs3d.export import free_space_votes

    rng = np.random.default_rng(3)
    v, h, w = 3, 6, 8
    depth = rng.uniform(2, 5, (v, h, w))
    depth[0, 2, 3] = np.inf  # a pixel that sees nothing
    c2w = np.tile(np.concatenate([np.eye(3), np.zeros((3, 1))], 1), (v, 1, 1))
    c2w[:, 0, 3] = [0.0, 0.1, -0.1]
    intr = np.tile([5.0, 5.0, w / 2, h / 2], (v, 1))
    pts = np.concatenate([rng.uniform(-2, 2, (200, 2)), rng.uniform(-1, 6, (200, 1))], 1)
    got = free_space_votes(pts, depth, c2w, intr, 0.05)
    for i, p in enumerate(pts):
        n = 0
        for k in range(v):
            cam = p - c2w[k, :, 3]
            if cam[2] <= 1e-6:
                continue
            u = int(np.floor(5 * cam[0] / cam[2] + w / 2))
            r = int(np.floor(5 * cam[1] / cam[2] + h / 2))
            if not (0 <= u < w and 0 <= r < h):
                continue
            near = depth[k, max(r - 1, 0) : r + 2, max(u - 1, 0) : u + 2].min()
            n += cam[2] < 0.95 * near
        assert got[i] == n, i


def test_the_mesh_box_pads_each_axis_by_its_own_extent(tiny_scene_dir):
    """A thin axis (NDC depth) gets 1 % of its own extent, not of the widest axis's."""
    from ovs3d.export import _mesh_box
    from ovs3d.io.loader import load_scene

    scene = load_scene(tiny_scene_dir)
    xyz = np.array([[-0.5, -0.4, -0.6], [0.5, 0.4, -0.5]], dtype=np.float32)  # extents 1.0, 0.8, 0.1
    lo, hi = _mesh_box(xyz, scene)
    np.testing.assert_allclose(lo, [-0.51, -0.408, -0.601], atol=1e-6)
    np.testing.assert_allclose(hi, [0.51, 0.408, -0.499], atol=1e-6)
