"""Tests of the ``orbit`` scene generator (360° capture of a table in a large room: SPEC §1 layout, determinism,
cameras, depth bounds, loading)."""

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
from ovs3d.scenegen import PRESETS, OrbitConfig, make_orbit, make_scene
from ovs3d.scenegen import orbit as ob
from ovs3d.scenegen.labels import OBJECTS
from ovs3d.utils.console import set_quiet

SMALL = dict(width=64, height=48, n_views=15, n_rings=3, n_annotated=3, supersample=1)
"""3 rings of 5 views; annotated views 5, 7 and 9 (the middle ring); well under a second to write."""


@pytest.fixture(autouse=True)
def _quiet():
    set_quiet(True)


@pytest.fixture(scope="module")
def small_orbit(tmp_path_factory) -> tuple[ob.OrbitScene, Path]:
    set_quiet(True)
    cfg = OrbitConfig(seed=3, **SMALL)
    out = make_orbit(cfg, tmp_path_factory.mktemp("orbit") / "scene")
    return ob.build_orbit(cfg), out


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


def test_registered_and_pools():
    assert PRESETS["orbit"] is OrbitConfig
    assert OrbitConfig().annotated == [22, 26, 30, 34, 38]  # 5 views spread around the middle ring of 3 x 20
    assert OrbitConfig(**SMALL).annotated == [5, 7, 9]
    assert OrbitConfig(n_views=61).ring_sizes() == [21, 20, 20]
    labels = [k.label for pool in (ob.WALL_KINDS, ob.TABLE_KINDS, ob.FLOOR_KINDS, OBJECTS) for k in pool]
    assert len(labels) == len(set(labels)), "no label may name two kinds of surface"
    assert len(ob.WALL_KINDS) >= 3 and len(ob.TABLE_KINDS) == len(ob.TABLE_LABELS) >= 3
    assert {k.texture for k in ob.WALL_KINDS} <= {"noise", "stripes"}


def test_scene_folder_layout(small_orbit):
    scene, root = small_orbit
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
    assert meta["preset"] == "orbit" and meta["seed"] == cfg.seed and meta["sim"] == {}
    assert meta["config"]["n_rings"] == cfg.n_rings
    labels = {int(k): v for k, v in meta["labels"].items()}
    assert labels == scene.labels
    classes = (root / "segmentations" / "classes.txt").read_text().splitlines()
    assert classes == sorted(set(labels.values()))

    for p in sorted((root / "sim" / "instances").iterdir()):
        ids = iio.imread(p)
        assert ids.dtype == np.uint16 and ids.shape == (cfg.height, cfg.width)
        assert (ids > 0).all(), "every ray meets a surface (walls without a top, but no camera looks up)"
        assert set(np.unique(ids)) <= set(labels)
    folders = sorted(p.name for p in (root / "segmentations").iterdir() if p.is_dir())
    assert folders == [f"{i:02d}" for i in cfg.annotated] == ["05", "07", "09"]


def test_items_walls_floor_table_objects(small_orbit):
    scene, _ = small_orbit
    cfg = scene.config
    categories = [it.category for it in scene.items]
    n_obj = categories.count("object")
    assert categories == ["wall"] * 4 + ["floor", "table"] + ["object"] * n_obj
    assert cfg.n_objects[0] <= n_obj <= cfg.n_objects[1]
    walls = [it for it in scene.items if it.category == "wall"]
    assert len({w.label for w in walls}) == 1 and walls[0].label in {k.label for k in ob.WALL_KINDS}
    assert scene.table.label in ob.TABLE_LABELS
    counts = collections.Counter(scene.labels.values())
    assert counts.pop(walls[0].label) == 4
    assert counts.pop(scene.table.label) == 1
    assert sum(counts.values()) == n_obj + 1  # objects (a pair may share a label) and the floor
    lo, hi = cfg.wall_distance
    assert all(lo <= d <= hi for d in scene.walls)
    box = scene.box
    assert np.isinf(box[1, 1]) and box[0, 1] == 0.0


def test_objects_stand_on_the_table_apart(small_orbit):
    scene, _ = small_orbit
    height = scene.target[1]
    assert scene.config.table_height[0] <= height <= scene.config.table_height[1]
    top = max(p.placed.position[1] + p.placed.shape.top() for p in scene.table.parts)
    assert top == pytest.approx(height)
    spots = []
    for it in scene.objects:
        (part,) = it.parts
        x, y, z = part.placed.position
        fp = part.placed.shape.footprint()
        assert y == pytest.approx(height), it.label
        ex, ez = scene.table_extent
        if scene.table_shape == "round":
            assert np.hypot(x, z) + fp <= ex + 1e-9, it.label
        else:
            assert abs(x) + fp <= ex + 1e-9 and abs(z) + fp <= ez + 1e-9, it.label
        spots.append((x, z, fp))
    for i, (x, z, r) in enumerate(spots):
        for xo, zo, ro in spots[:i]:
            assert np.hypot(x - xo, z - zo) >= r + ro + ob.OBJECT_GAP - 1e-9


# ----------------------------------------------------------------- labels in the views


def test_masks_equal_the_instance_maps_and_every_label_is_in_every_annotated_view(small_orbit):
    """SPEC §1 (3D-OVS protocol): every label is visible, and every object large enough, in every annotated
    view; the masks are exactly the label's pixels of the instance map and partition the view."""
    scene, root = small_orbit
    cfg = scene.config
    labels = scene.labels
    min_area = cfg.min_area_factor * (min(cfg.width, cfg.height) / 10) ** 2
    for view in scene.annotated:
        folder = root / "segmentations" / f"{view:02d}"
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{c}.png" for c in scene.classes)
        ids = iio.imread(root / "sim" / "instances" / f"{view:02d}.png")
        total = np.zeros(ids.shape, dtype=int)
        for label in scene.classes:
            mask = iio.imread(folder / f"{label}.png")
            assert mask.dtype == np.uint8 and mask.shape == ids.shape and set(np.unique(mask)) <= {0, 255}
            np.testing.assert_array_equal(mask == 255, np.isin(ids, [i for i, v in labels.items() if v == label]))
            assert (mask == 255).sum() >= min_area, (view, label)
            total += mask == 255
        assert (total == 1).all(), "labels partition every annotated view"
        for it in scene.objects:
            assert (ids == it.instance_id).sum() >= min_area, (view, it.label)
    assert ob.orbit_problem(scene) is None


def test_instance_maps_are_the_ray_casters(small_orbit):
    scene, root = small_orbit
    for view in (0, scene.annotated[-1], scene.config.n_views - 1):
        ids, _ = scene.render_ids(view)
        np.testing.assert_array_equal(iio.imread(root / "sim" / "instances" / f"{view:02d}.png"), ids)


# ------------------------------------------------------------------------ determinism


def test_deterministic_bytes(tmp_path, small_orbit):
    scene, root = small_orbit
    again = make_scene("orbit", scene.config.seed, tmp_path / "again", **SMALL)
    assert _files(again) == _files(root)


def test_seeds_differ(tmp_path, small_orbit):
    _, root = small_orbit
    other = make_scene("orbit", 4, tmp_path / "other", **SMALL)
    a, b = _files(root), _files(other)
    images = [k for k in a if k.startswith(("images/", "sim/instances/"))]
    assert images == [k for k in b if k.startswith(("images/", "sim/instances/"))]
    assert a["poses_bounds.npy"] != b["poses_bounds.npy"] and all(a[k] != b[k] for k in images)
    scenes = [ob.build_orbit(OrbitConfig(seed=s, **SMALL)) for s in range(4)]
    assert len({tuple(s.classes) for s in scenes}) >= 3
    for i, x in enumerate(scenes):
        for y in scenes[:i]:
            assert not np.allclose(x.c2w, y.c2w)


# ------------------------------------------------------------------ cameras and bounds


def test_cameras_circle_the_table_and_look_at_its_centre(small_orbit):
    scene, root = small_orbit
    cfg = scene.config
    c2w, (h, w, f), _ = _read_cameras(root)
    np.testing.assert_allclose(c2w, scene.c2w, atol=1e-12)
    assert (h, w) == (cfg.height, cfg.width) and f == pytest.approx(scene.focal)
    target = scene.target
    # the table top's centre projects near the image centre in every view
    cam = np.einsum("nji,nj->ni", c2w[:, :, :3], target[None, :] - c2w[:, :, 3])
    assert (cam[:, 2] > 0).all()
    u, v = f * cam[:, 0] / cam[:, 2] + w / 2, f * cam[:, 1] / cam[:, 2] + h / 2
    assert (np.abs(u - w / 2) < 0.06 * w).all() and (np.abs(v - h / 2) < 0.06 * h).all(), (u, v)
    # no roll: the camera's x axis is horizontal
    assert np.abs(c2w[:, 1, 0]).max() < 1e-9
    # on the rings: distance, elevation and a full turn per ring
    offset = c2w[:, :, 3] - target
    dist = np.linalg.norm(offset, axis=1)
    assert np.abs(dist / cfg.camera_radius - 1).max() < 5 * cfg.position_jitter
    elevation = np.degrees(np.arcsin(offset[:, 1] / dist))
    ring_elev = cfg.ring_elevations()
    assert np.abs(elevation - ring_elev[scene.rings]).max() < 5 * cfg.angle_jitter_deg
    assert list(np.bincount(scene.rings)) == cfg.ring_sizes()
    azimuth = np.arctan2(offset[:, 0], offset[:, 2])
    np.testing.assert_allclose(azimuth, scene.azimuths, atol=1e-12)
    for k, m in enumerate(cfg.ring_sizes()):
        az = np.sort(np.mod(azimuth[scene.rings == k], 2 * np.pi))
        gaps = np.diff(np.concatenate([az, az[:1] + 2 * np.pi]))
        assert gaps.max() < 1.5 * 2 * np.pi / m, "each ring goes once around, evenly"
    # the annotated views are spread around the circle
    az = np.sort(np.mod(azimuth[scene.annotated], 2 * np.pi))
    gaps = np.diff(np.concatenate([az, az[:1] + 2 * np.pi]))
    assert gaps.max() < 1.6 * 2 * np.pi / len(scene.annotated)
    assert set(scene.rings[scene.annotated]) == {cfg.n_rings // 2}


def test_near_far_bracket_every_hit_and_reach_the_walls(small_orbit):
    scene, root = small_orbit
    _, _, near_far = _read_cameras(root)
    far_walls = []
    for view in range(scene.config.n_views):
        ids, depth = scene.render_ids(view)
        assert 0 < near_far[view, 0] <= depth.min() and depth.max() <= near_far[view, 1], view
        assert near_far[view, 0] >= 0.85 * depth.min() and near_far[view, 1] <= 1.1 * depth.max()
        walls = ids <= 4  # ids 1-4 are the walls
        if walls.any():
            far_walls.append(depth[walls].max())
    assert len(far_walls) >= scene.config.n_views // 2, "most views see the walls"
    radius = np.linalg.norm(scene.c2w[:, :, 3] - scene.target, axis=1).max()
    # far reaches the distant walls: several times the camera circle (what makes the capture unbounded)
    assert near_far[:, 1].max() > 3 * radius
    assert near_far[:, 1].max() >= max(far_walls)


def test_views_agree_through_the_file_poses(small_orbit):
    """Surface points of an annotated view, projected with the poses read back into the nearest other view
    where that view sees the same depth, carry the same instance id there."""
    scene, root = small_orbit
    c2w, (h, w, f), _ = _read_cameras(root)
    centres = c2w[:, :, 3]
    for a in scene.annotated:
        dist = np.linalg.norm(centres - centres[a], axis=1)
        dist[a] = np.inf
        b = int(np.argmin(dist))
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
        assert visible.sum() > 0.2 * h * w and same.mean() > 0.97, (a, visible.sum(), same.mean())


def test_loads_as_a_360_capture(small_orbit):
    scene, root = small_orbit
    loaded = load_scene(root)
    # "bounded" until the loader knows the "unbounded" kind (360° captures whose far bounds are much larger
    # than the camera circle); the scene already meets that criterion, checked on the normalised poses below.
    assert loaded.kind in ("bounded", "unbounded")
    assert loaded.annotated == scene.annotated and loaded.classes == scene.classes
    assert len(loaded.image_paths) == scene.config.n_views
    # outside-in: the loader centres the world near the table and puts the cameras on/inside the unit sphere
    c2w = loaded.c2w.astype(np.float64)
    dist = np.linalg.norm(c2w[:, :, 3], axis=1)
    assert dist.max() == pytest.approx(1.0, abs=1e-5) and dist.min() > 0.8
    target = loaded.world_from_file[:3, :3] @ scene.target + loaded.world_from_file[:3, 3]
    assert np.linalg.norm(target) < 0.1
    assert loaded.near_far[:, 1].max() > 3 * dist.max()


# ----------------------------------------------------------------- options and writing


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (dict(width=8), "too small"),
        (dict(n_rings=0), "n_rings"),
        (dict(n_views=5), "n_views"),
        (dict(n_views=15, n_rings=3, n_annotated=6), "n_annotated"),
        (dict(n_objects=(5, 3)), "n_objects"),
        (dict(elevation_deg=(30.0, 10.0)), "elevation_deg"),
        (dict(camera_radius=1.0), "camera_radius"),
        (dict(wall_distance=(2.0, 12.0)), "wall_distance"),
        (dict(hfov_deg=5.0), "hfov_deg"),
        (dict(supersample=0), "supersample"),
        (dict(colour="red"), "unknown orbit option"),
    ],
)
def test_bad_options_give_one_line_errors(tmp_path, options, match):
    with pytest.raises(OVS3DError, match=match) as err:
        make_scene("orbit", 0, tmp_path / "scene", **options)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "scene").exists()


def test_no_valid_layout_is_one_line(tmp_path):
    with pytest.raises(OVS3DError, match="no valid orbit layout") as err:
        make_scene("orbit", 0, tmp_path / "scene", **{**SMALL, "min_area_factor": 1e6, "max_layout_tries": 2})
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []
