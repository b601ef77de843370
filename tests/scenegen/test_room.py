"""Tests of the ``room`` scene generator (inside-out room: SPEC §1 layout, determinism, geometry, loading)."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from ovs3d.errors import OVS3DError
from ovs3d.io.conventions import llff_to_opencv
from ovs3d.io.loader import load_scene
from ovs3d.scenegen import PRESETS, RoomConfig, make_room, make_scene
from ovs3d.scenegen import room as rm
from ovs3d.utils.console import set_quiet

SMALL = dict(width=80, height=60, n_views=24, annotate_every=4, supersample=1)
"""6 annotated views (2, 6, ..., 22) of 24; a few hundred milliseconds to write."""


@pytest.fixture(autouse=True)
def _quiet():
    set_quiet(True)


@pytest.fixture(scope="module")
def small_room(tmp_path_factory) -> tuple[rm.RoomScene, Path]:
    set_quiet(True)
    cfg = RoomConfig(seed=3, **SMALL)
    out = make_room(cfg, tmp_path_factory.mktemp("room") / "scene")
    return rm.build_room(cfg), out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_cameras(root: Path):
    arr = np.load(root / "poses_bounds.npy")
    c2w = llff_to_opencv(arr[:, :15].reshape(-1, 3, 5))
    h, w, f = arr[0, :15].reshape(3, 5)[:, 4]
    return c2w, (int(h), int(w), float(f)), arr[:, 15:17]


def _world_points(c2w: np.ndarray, f: float, depth: np.ndarray) -> np.ndarray:
    """``[H * W, 3]`` world points of a z-depth map seen by OpenCV camera ``c2w`` (pixel centres)."""
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w]
    cam = np.stack([(u + 0.5 - w / 2) / f, (v + 0.5 - h / 2) / f, np.ones((h, w))], -1) * depth[..., None]
    return cam.reshape(-1, 3) @ c2w[:, :3].T + c2w[:, 3]


# ----------------------------------------------------------------------------- layout


def test_registered_and_pools_are_unique():
    assert PRESETS["room"] is RoomConfig
    pools = (rm.WALL_KINDS, rm.FLOOR_KINDS, rm.CEILING_KINDS, rm.RUG_KINDS, rm.BLINDS_KINDS)
    labels = [k.label for pool in pools for k in pool]
    labels += [k.label for k in (*rm.FURNITURE_KINDS, *rm.SMALL_KINDS, *rm.PICTURE_KINDS)] + [rm.CLOCK_LABEL]
    assert len(labels) == len(set(labels))
    assert RoomConfig().annotated == [5, 15, 25, 35, 45, 55]  # every 10th of 60 views
    assert RoomConfig(n_views=60, n_annotated=4).annotated == [7, 22, 37, 52]


def test_scene_folder_layout(small_room):
    scene, root = small_room
    cfg = scene.config
    names = sorted(p.name for p in (root / "images").iterdir())
    assert names == [f"{i:02d}.png" for i in range(cfg.n_views)]
    for name in names:
        img = iio.imread(root / "images" / name)
        assert img.shape == (cfg.height, cfg.width, 3) and img.dtype == np.uint8
    arr = np.load(root / "poses_bounds.npy")
    assert arr.shape == (cfg.n_views, 17) and arr.dtype == np.float64

    meta = json.loads((root / "sim" / "instances.json").read_text())
    assert set(meta) == {"labels", "preset", "seed", "sim", "generator", "layout_attempt", "config"}
    assert meta["preset"] == "room" and meta["seed"] == cfg.seed and meta["sim"] == {}
    labels = {int(k): v for k, v in meta["labels"].items()}
    assert labels == scene.labels
    classes = (root / "segmentations" / "classes.txt").read_text().splitlines()
    assert classes == sorted(set(labels.values()))

    inst = sorted((root / "sim" / "instances").iterdir())
    assert [p.name for p in inst] == names
    for p in inst:
        ids = iio.imread(p)
        assert ids.dtype == np.uint16 and ids.shape == (cfg.height, cfg.width)
        assert (ids > 0).all(), "the room is closed: every pixel sees a surface"
        assert set(np.unique(ids)) <= set(labels)
    folders = sorted(p.name for p in (root / "segmentations").iterdir() if p.is_dir())
    assert folders == [f"{i:02d}" for i in cfg.annotated] == [f"{i:02d}" for i in (2, 6, 10, 14, 18, 22)]


def test_masks_equal_the_instance_maps(small_room):
    """Every annotated view has a mask per label (all black where the label is absent) that is exactly the
    label's pixels in the instance map; the labels partition the view."""
    scene, root = small_room
    labels = scene.labels
    classes = scene.classes
    absent = 0
    for view in scene.annotated:
        folder = root / "segmentations" / f"{view:02d}"
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{c}.png" for c in classes)
        ids = iio.imread(root / "sim" / "instances" / f"{view:02d}.png")
        total = np.zeros(ids.shape, dtype=int)
        for label in classes:
            mask = iio.imread(folder / f"{label}.png")
            assert mask.dtype == np.uint8 and mask.shape == ids.shape
            assert set(np.unique(mask)) <= {0, 255}
            np.testing.assert_array_equal(mask == 255, np.isin(ids, [i for i, v in labels.items() if v == label]))
            total += mask == 255
            absent += int(not mask.any())
        assert (total == 1).all(), "labels partition every annotated view"
    assert absent > 0, "an inside-out room hides some labels from some annotated views"


def test_every_label_is_visible_in_an_annotated_view_and_in_training_views(small_room):
    scene, root = small_room
    cfg = scene.config
    min_area = cfg.min_area_factor * (min(cfg.width, cfg.height) / 10) ** 2
    for label in scene.classes:
        best = max(
            (iio.imread(root / "segmentations" / f"{v:02d}" / f"{label}.png") == 255).sum() for v in cfg.annotated
        )
        assert best >= min_area, label
        iids = [i for i, v in scene.labels.items() if v == label]
        train = [v for v in range(cfg.n_views) if v not in cfg.annotated]
        seen = sum(
            np.isin(iio.imread(root / "sim" / "instances" / f"{v:02d}.png"), iids).sum() >= min_area for v in train
        )
        assert seen >= cfg.min_train_views, label
    assert rm.layout_problem(scene) is None


def test_walls_share_one_label_and_every_other_label_is_one_instance(small_room):
    scene, _ = small_room
    walls = [it for it in scene.items if it.category == "wall"]
    assert len(walls) == 4 and len({w.label for w in walls}) == 1
    counts = collections.Counter(scene.labels.values())
    assert counts.pop(walls[0].label) == 4
    assert set(counts.values()) == {1}
    categories = collections.Counter(it.category for it in scene.items)
    assert categories["floor"] == categories["ceiling"] == categories["rug"] == 1
    lo, hi = scene.config.n_objects
    assert lo <= categories["furniture"] <= hi
    assert categories["wall item"] >= 3  # blinds, a clock and at least one picture
    assert {rm.CLOCK_LABEL} <= set(counts)


def test_small_objects_stand_on_furniture(small_room):
    scene, _ = small_room
    tops = []
    for it in scene.items:
        if it.category == "furniture":
            tops.append(max(p.placed.position[1] + p.placed.shape.top() for p in it.parts))
    for it in (it for it in scene.items if it.category == "small"):
        base = it.parts[0].placed.position[1]
        assert any(abs(base - t) < 1e-9 for t in tops), it.label


# ------------------------------------------------------------------------ determinism


def test_deterministic_bytes(tmp_path, small_room):
    scene, root = small_room
    again = make_scene("room", scene.config.seed, tmp_path / "again", **SMALL)
    assert _files(again) == _files(root)


def test_seeds_differ():
    scenes = [rm.build_room(RoomConfig(seed=s, **SMALL)) for s in range(4)]
    assert len({tuple(s.classes) for s in scenes}) >= 3
    assert len({s.half for s in scenes}) == 4
    for i, a in enumerate(scenes):
        for b in scenes[:i]:
            assert not np.allclose(a.c2w, b.c2w)


# ------------------------------------------------------------------ cameras and loading


def test_cameras_turn_around_inside_the_room(small_room):
    scene, root = small_room
    cfg = scene.config
    c2w, (h, w, f), near_far = _read_cameras(root)
    np.testing.assert_allclose(c2w, scene.c2w, atol=1e-12)
    assert (h, w) == (cfg.height, cfg.width) and f == pytest.approx(scene.focal)
    centres = c2w[:, :, 3]
    assert (np.hypot(centres[:, 0], centres[:, 2]) <= cfg.position_jitter + 0.05).all()
    assert (np.abs(centres[:, 1] - cfg.camera_height) <= cfg.height_jitter + 0.05).all()
    fwd = c2w[:, :, 2]
    yaw = np.unwrap(np.arctan2(fwd[:, 0], fwd[:, 2]))
    assert abs(yaw[-1] - yaw[0]) == pytest.approx(2 * np.pi * (cfg.n_views - 1) / cfg.n_views, abs=0.15)
    assert (np.abs(np.diff(yaw)) < 2 * 2 * np.pi / cfg.n_views).all(), "a steady turn"
    assert (np.abs(fwd[:, 1]) < np.sin(np.deg2rad(30))).all(), "roughly level"


def test_near_far_bracket_every_hit(small_room):
    scene, root = small_room
    _, _, near_far = _read_cameras(root)
    for view in range(scene.config.n_views):
        _, depth = scene.render_ids(view)
        assert 0 < near_far[view, 0] < depth.min() and depth.max() < near_far[view, 1]
        assert near_far[view, 0] >= 0.85 * depth.min() and near_far[view, 1] <= 1.1 * depth.max()


def test_loads_as_a_bounded_scene_whose_box_holds_the_room(small_room):
    scene, root = small_room
    loaded = load_scene(root)
    assert loaded.kind == "bounded"
    assert loaded.annotated == scene.annotated and loaded.classes == scene.classes
    lo, hi = loaded.aabb.astype(np.float64)
    wff = loaded.world_from_file

    def to_norm(p: np.ndarray) -> np.ndarray:
        return p @ wff[:3, :3].T + wff[:3, 3]

    def inside(p: np.ndarray) -> np.ndarray:
        return ((p >= lo - 1e-5) & (p <= hi + 1e-5)).all(-1)

    assert inside(loaded.c2w[:, :, 3].astype(np.float64)).all()
    box = scene.box
    corners = np.array([[box[i, 0], box[j, 1], box[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    assert inside(to_norm(corners)).all(), "the whole room lies in the world box"
    c2w, (_, _, f), _ = _read_cameras(root)
    for view in range(scene.config.n_views):
        _, depth = scene.render_ids(view)
        assert inside(to_norm(_world_points(c2w[view], f, depth))).all(), view


def _normalised_room_radius(scene: rm.RoomScene, root: Path) -> float:
    """Largest distance of a room corner from the origin of the loader's normalised world."""
    wff = load_scene(root).world_from_file
    box = scene.box
    corners = np.array([[box[i, 0], box[j, 1], box[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    return float(np.linalg.norm(corners @ wff[:3, :3].T + wff[:3, 3], axis=1).max())


def test_loader_scales_an_inside_out_room_to_about_the_unit_sphere(small_room):
    """The loader puts ``max camera distance + max far`` at 1 for inside-out captures, so the room's corners
    (a little beyond the farthest z-depth, off the optical axes) stay within a radius of about 1."""
    scene, root = small_room
    assert 0.5 < _normalised_room_radius(scene, root) < 1.5


def test_loader_scales_every_inside_out_room_to_about_the_unit_sphere(tmp_path):
    """Seed 7's cameras once passed the loader's outside-in test by chance (the room was scaled ~12x too large)."""
    cfg = RoomConfig(seed=7, **SMALL)
    root = make_room(cfg, tmp_path / "scene")
    assert 0.5 < _normalised_room_radius(rm.build_room(cfg), root) < 1.5


def test_views_agree_through_the_file_poses(small_room):
    """Surface points of one view, projected with the poses read back into a neighbour view where that view
    sees the same depth, carry the same instance id there: images, instance maps and poses are consistent."""
    scene, root = small_room
    c2w, (h, w, f), _ = _read_cameras(root)
    checked = 0
    for a in scene.annotated:
        b = (a + 1) % scene.config.n_views
        ids_a = iio.imread(root / "sim" / "instances" / f"{a:02d}.png").ravel()
        ids_b = iio.imread(root / "sim" / "instances" / f"{b:02d}.png")
        _, depth_b = scene.render_ids(b)
        pts = _world_points(c2w[a], f, scene.render_ids(a)[1])
        cam = (pts - c2w[b, :, 3]) @ c2w[b, :, :3]
        u, v = f * cam[:, 0] / cam[:, 2] + w / 2, f * cam[:, 1] / cam[:, 2] + h / 2
        ok = (cam[:, 2] > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        ui, vi = np.floor(u[ok]).astype(int), np.floor(v[ok]).astype(int)
        visible = np.abs(depth_b[vi, ui] - cam[ok, 2]) < 0.02 * cam[ok, 2]
        same = ids_b[vi, ui][visible] == ids_a[ok][visible]
        assert visible.sum() > 0.3 * h * w and same.mean() > 0.97, (a, visible.sum(), same.mean())
        checked += 1
    assert checked == len(scene.annotated)


def test_wall_disc_matches_a_cylinder_on_its_side():
    disc = rm.WallDisc(0.2, 0.05)
    # rays towards the wall (-z) through the face, from the room side
    t = disc.intersect(np.array([0.0, 0.1, 0.3]), 0.05, 1.0, 0.0, 0.0, -1.0)
    np.testing.assert_allclose(t, [0.95, 0.95, np.inf])
    nx, ny, nz = disc.normal(np.array([0.0]), np.array([0.05]), np.array([0.05]))
    np.testing.assert_allclose([nx[0], ny[0], nz[0]], [0.0, 0.0, 1.0])
    placed = rm.rc.Placed(disc, np.array([2.0, 1.5, 0.0]), rm._inward_yaw(np.array([-1.0, 0.0, 0.0])))
    t = placed.intersect(0.0, 1.5, 0.0, np.array([1.0]), np.array([0.0]), np.array([0.0]))
    np.testing.assert_allclose(t, [2.0 - 0.05])


# ----------------------------------------------------------------- foundation backends


def test_sim_backends_run_on_a_room_view(small_room):
    from ovs3d.foundation.base import ViewImage
    from ovs3d.foundation.registry import build_clip, build_dino, build_masks

    scene, root = small_room
    view = scene.annotated[0]
    rgb = iio.imread(root / "images" / f"{view:02d}.png").astype(np.float32) / 255.0
    image = ViewImage(f"{view:02d}", rgb)
    clip = build_clip("sim", root)
    text = clip.encode_text(scene.classes)
    assert text.shape == (len(scene.classes), clip.dim)
    crops = clip.encode_crops(image, np.array([[0, 0, 40, 30], [20, 10, 80, 60]]))
    assert crops.shape == (2, clip.dim) and bool(np.isfinite(crops.numpy()).all())
    masks = build_masks("sim", root).propose(image)
    assert masks.ndim == 3 and masks.shape[1:] == rgb.shape[:2] and masks.dtype == bool and len(masks) >= 3
    feats = build_dino("sim", root).dense_features(image)
    assert tuple(feats.shape[:2]) == (rgb.shape[0] // 8, rgb.shape[1] // 8)


# ----------------------------------------------------------------- options and writing


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (dict(width=8), "too small"),
        (dict(n_views=2), "n_views"),
        (dict(annotate_every=0), "annotate_every"),
        (dict(n_views=10, annotate_every=11), "annotate_every"),
        (dict(n_views=10, n_annotated=11), "n_annotated"),
        (dict(n_views=10, n_annotated=10), "all 10 views would be annotated"),
        (dict(n_objects=(5, 3)), "n_objects"),
        (dict(n_small=(0, 99)), "n_small"),
        (dict(n_objects=(0, 0)), "n_small > 0 needs furniture"),
        (dict(hfov_deg=5.0), "hfov_deg"),
        (dict(position_jitter=2.0), "position_jitter"),
        (dict(supersample=0), "supersample"),
        (dict(colour="red"), "unknown room option"),
        (dict(hub_labels=2), "unknown room option"),
    ],
)
def test_bad_options_give_one_line_errors(tmp_path, options, match):
    with pytest.raises(OVS3DError, match=match) as err:
        make_scene("room", 0, tmp_path / "scene", **options)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "scene").exists()


def test_no_valid_layout_is_one_line(tmp_path):
    with pytest.raises(OVS3DError, match="no valid room layout") as err:
        make_scene("room", 0, tmp_path / "scene", **{**SMALL, "min_area_factor": 1e6, "max_layout_tries": 2})
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_refuses_foreign_folders_and_replaces_its_own(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(OVS3DError, match="not a scene written by"):
        make_scene("room", 0, foreign, **SMALL)
    assert (foreign / "notes.txt").read_text() == "keep me"
    out = tmp_path / "scene"
    make_scene("room", 1, out, **SMALL)
    make_scene("room", 2, out, **SMALL)
    assert json.loads((out / "sim" / "instances.json").read_text())["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "scene"], "no temporary folders left behind"


def test_crash_leaves_no_half_scene(tmp_path, monkeypatch):
    def boom(scene, folder):
        (folder / "images").mkdir()
        raise RuntimeError("crash while rendering")

    monkeypatch.setattr(rm, "write_room", boom)
    with pytest.raises(RuntimeError):
        make_scene("room", 0, tmp_path / "scene", **SMALL)
    assert list(tmp_path.iterdir()) == []
