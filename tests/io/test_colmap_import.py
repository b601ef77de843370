"""``ovs3d import`` (ovs3d.io.colmap): photos -> SPEC §1 scene with COLMAP poses.

The pure parts (LLFF bounds, alignment, common frame, EXIF staging) and every bad-input case run without
pycolmap; the COLMAP round trips skip when it is not installed.

Round-trip tolerances, measured with pycolmap 4.2.1 on the 240x180, 16-view tabletop scene (seed 0) used
below (its renders have ~200 SIFT features per view at COLMAP's default contrast threshold, ~600 after the
import's low-contrast retry): over six 2-thread runs the median rotation error after the orientation
alignment was 0.04-0.08 deg, the median pairwise relative rotation error 0.06-0.11 deg, the median centre
error 0.25-0.42 % of the camera path's extent, and the median rotation error after the Umeyama (centres only)
alignment 0.09-0.50 deg (the small, nearly planar camera ring pins that alignment's rotation down poorly:
the orientations themselves are good). With ``num_threads=1``, as here, the run is deterministic (0.043 deg,
0.064 deg, 0.28 %, 0.29 deg). The bounds below leave 2-3x headroom over the worst of those runs, for
other pycolmap builds and platforms. The mixed-size/EXIF variant measured 0.040 deg and 0.35 %.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovs3d.errors import OVS3DError
from ovs3d.io import colmap
from ovs3d.io.colmap import INSTALL_HINT, compare_poses, import_scene, llff_bounds, umeyama

SCENE = {"width": 240, "height": 180, "n_views": 16}


def _look_at(eye, target, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    fwd = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(fwd, up)
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    return np.stack([right, down, fwd, eye], axis=1)


def _rot(axis, deg) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.radians(deg)
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def _photos(folder: Path, n: int = 4, size=(32, 24)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


@pytest.fixture
def no_colmap_needed(monkeypatch):
    """Bad-input checks run before any pycolmap call: a placeholder module stands in for it."""
    monkeypatch.setattr(colmap, "_require_pycolmap", lambda: object())


# ---------------------------------------------------------------------------------------------------
# LLFF bounds


def test_llff_bounds_hand_made_points_and_cameras():
    # camera 0 at the origin looking along +z, camera 1 at x=10 looking along -x (towards the origin)
    c2w = np.stack([_look_at([0, 0, 0], [0, 0, 1]), _look_at([10, 0, 0], [0, 0, 0])])
    depths0 = np.linspace(1.0, 5.0, 1001)  # on camera 0's axis
    pts = np.concatenate([np.stack([np.zeros_like(depths0), np.zeros_like(depths0), depths0], 1), [[0, 0, -3.0]]])
    vis = np.zeros((len(pts), 2), dtype=bool)
    vis[:, 0] = True  # camera 0 "sees" all, including the point behind it (ignored)
    vis[:5, 1] = True  # camera 1 sees the first five (all at depth 10 along its axis)
    b = llff_bounds(pts, c2w, vis)
    assert b.shape == (2, 2)
    np.testing.assert_allclose(b[0], [np.percentile(depths0, 0.1), np.percentile(depths0, 99.9)])
    assert 0 < b[1, 0] < b[1, 1] and b[1, 0] == pytest.approx(10.0)  # all equal depths -> far nudged above near
    # the same visibility given as per-view index lists
    b2 = llff_bounds(pts, c2w, [np.arange(len(pts)), np.arange(5)])
    np.testing.assert_allclose(b2, b)


def test_llff_bounds_falls_back_for_views_that_see_nothing():
    c2w = np.stack([_look_at([0, 0, 0], [0, 0, 1]), _look_at([0, 0, 0.5], [0, 0, 1]), _look_at([0, 0, 9], [0, 0, 20])])
    pts = np.array([[0, 0, 2.0], [0, 0, 4.0], [0.1, 0, 3.0]])
    seen = [np.array([0, 1, 2]), np.array([], dtype=np.int64), np.array([0])]  # view 1 sees none, view 2 a point behind
    b = llff_bounds(pts, c2w, seen)
    # view 1 falls back to every point in front of it: depths 1.5, 2.5, 3.5
    assert b[1, 0] == pytest.approx(np.percentile([1.5, 2.5, 3.5], 0.1))
    # view 2 has nothing in front of it at all: the median of the other views' bounds
    np.testing.assert_allclose(b[2], np.median(b[:2], axis=0))
    with pytest.raises(ValueError):
        llff_bounds(pts, c2w[2:], [np.array([0, 1, 2])])  # no view has any point in front of it


def test_umeyama_and_compare_poses_recover_an_exact_similarity():
    rng = np.random.default_rng(1)
    ref = np.stack([_look_at(rng.normal(size=3) + [0, 0, -5], rng.normal(scale=0.2, size=3)) for _ in range(8)])
    s, rot, t = 0.37, _rot([1, 2, 3], 40), np.array([1.0, -2.0, 0.5])
    # est world = similarity^-1 of ref world
    est = ref.copy()
    est[:, :, :3] = rot.T[None] @ ref[:, :, :3]
    est[:, :, 3] = (ref[:, :, 3] - t) @ rot / s
    s2, rot2, t2 = umeyama(est[:, :, 3], ref[:, :, 3])
    assert s2 == pytest.approx(s) and np.allclose(rot2, rot) and np.allclose(t2, t)
    r = compare_poses(est, ref)
    for key in ("rot_err_deg", "rot_err_deg_aligned", "rel_rot_err_deg", "center_err"):
        assert np.abs(r[key]).max() < 1e-5, key
    assert r["rel_rot_err_deg"].shape == (8 * 7 // 2,)


# ---------------------------------------------------------------------------------------------------
# common frame and staging (no COLMAP)


def test_common_frame_centres_principal_point_and_squares_pixels():
    cams = {
        1: colmap._Pinhole(300, 200, 250, 250, 150, 100),  # landscape, centred
        2: colmap._Pinhole(200, 300, 250, 250, 100, 150),  # portrait (an EXIF-rotated photo)
        3: colmap._Pinhole(600, 400, 500, 510, 290, 205),  # larger, off-centre principal point, fx != fy
    }
    views = [1, 1, 1, 2, 3]
    frame = colmap._common_frame(cams, views, None)
    assert (frame.width, frame.height) == (300, 200)  # the majority's frame, unscaled
    assert frame.boxes[1] == pytest.approx((0, 0, 300, 200))
    for c, (x0, y0, x1, y1) in frame.boxes.items():
        cam = cams[c]
        assert x0 >= -1e-9 and y0 >= -1e-9 and x1 <= cam.width + 1e-9 and y1 <= cam.height + 1e-9
        sx, sy = frame.width / (x1 - x0), frame.height / (y1 - y0)
        assert cam.fx * sx == pytest.approx(frame.focal[c]) and cam.fy * sy == pytest.approx(frame.focal[c])
        assert (cam.cx - x0) * sx == pytest.approx(frame.width / 2)
        assert (cam.cy - y0) * sy == pytest.approx(frame.height / 2)
    assert frame.pp_offset == pytest.approx(np.hypot(10, 5))
    small = colmap._common_frame(cams, views, 100)
    assert max(small.width, small.height) == 100 and small.focal[1] == pytest.approx(frame.focal[1] / 3, rel=0.01)


def test_stage_photo_applies_exif_orientation(tmp_path):
    rng = np.random.default_rng(0)
    upright = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)  # 30 wide, 20 tall as seen by the user
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # the sensor's 20x30 buffer
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    stored.save(tmp_path / "a.png", exif=exif)
    item, digest = colmap._stage_photo(tmp_path / "a.png", tmp_path / "staged.png")
    assert item.transposed and item.size == (30, 20)
    with Image.open(tmp_path / "staged.png") as im:
        assert im.size == (30, 20)
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), upright)
    Image.fromarray(upright).save(tmp_path / "b.png")  # same pixels, upright: same digest
    item_b, digest_b = colmap._stage_photo(tmp_path / "b.png", tmp_path / "staged_b.png")
    assert not item_b.transposed and digest_b == digest


# ---------------------------------------------------------------------------------------------------
# bad input (no COLMAP)


def test_missing_folder_and_no_photos(tmp_path, no_colmap_needed):
    with pytest.raises(OVS3DError, match="does not exist"):
        import_scene(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(OVS3DError, match="no photos in"):
        import_scene(tmp_path / "empty", tmp_path / "out")
    _photos(tmp_path / "two", n=2)
    with pytest.raises(OVS3DError, match="at least 3"):
        import_scene(tmp_path / "two", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unreadable_photo_is_named(tmp_path, no_colmap_needed):
    photos = _photos(tmp_path / "photos")
    (photos / "03.png").write_bytes(b"not a png at all")
    with pytest.raises(OVS3DError, match=r"cannot read photo .*03\.png") as e:
        import_scene(photos, tmp_path / "out")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["photos"]


def test_duplicate_photos_are_named(tmp_path, no_colmap_needed):
    photos = _photos(tmp_path / "photos")
    shutil.copyfile(photos / "01.png", photos / "copy.png")
    with pytest.raises(OVS3DError, match=r"photos 01\.png and copy\.png are identical"):
        import_scene(photos, tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["photos"]  # the temporary folder is gone


def test_out_must_be_new_or_empty(tmp_path, no_colmap_needed):
    photos = _photos(tmp_path / "photos")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(OVS3DError, match="not empty"):
        import_scene(photos, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(OVS3DError, match="not a folder"):
        import_scene(photos, tmp_path / "file")


def test_bad_options(tmp_path, no_colmap_needed):
    photos = _photos(tmp_path / "photos")
    with pytest.raises(OVS3DError, match="unknown matcher"):
        import_scene(photos, tmp_path / "out", matcher="vocabtree")  # type: ignore[arg-type]
    with pytest.raises(OVS3DError, match="unknown COLMAP camera model"):
        import_scene(photos, tmp_path / "out", camera_model="BROWN")
    with pytest.raises(OVS3DError, match="twice"):
        import_scene(photos, tmp_path / "out", classes=["mug", "mug"])
    with pytest.raises(OVS3DError, match="empty class"):
        import_scene(photos, tmp_path / "out", classes=["mug", " "])


def test_pycolmap_missing(tmp_path, monkeypatch):
    photos = _photos(tmp_path / "photos")
    monkeypatch.setitem(sys.modules, "pycolmap", None)  # import pycolmap -> ImportError
    with pytest.raises(OVS3DError) as e:
        import_scene(photos, tmp_path / "out")
    assert str(e.value) == INSTALL_HINT == "`ovs3d import` needs pycolmap: pip install 'ovs3d[colmap]'"
    assert [p.name for p in tmp_path.iterdir()] == ["photos"]


def test_interrupt_leaves_nothing(tmp_path, no_colmap_needed, monkeypatch):
    photos = _photos(tmp_path / "photos")

    def interrupted(self, staged, camera_model):
        assert len(list(self.input_dir.iterdir())) == 4  # staging happened inside the temporary folder
        raise KeyboardInterrupt

    monkeypatch.setattr(colmap._Importer, "extract", interrupted)
    with pytest.raises(KeyboardInterrupt):
        import_scene(photos, tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["photos"]


def test_worker_crash_is_one_line(tmp_path):
    worker = colmap._Worker(tmp_path / "colmap.log")
    worker.proc.kill()  # as if COLMAP had crashed
    with pytest.raises(OVS3DError, match=r"^COLMAP crashed during matching \(exit code -?\d+\)") as e:
        worker.call("match", "matching", database="x.db", matcher="exhaustive", num_threads=1)
    assert "\n" not in str(e.value)
    worker.close()


def test_colmap_errors_become_one_line(tmp_path):
    pytest.importorskip("pycolmap")
    worker = colmap._Worker(tmp_path / "colmap.log")
    try:
        with pytest.raises(OVS3DError, match=r"^COLMAP matching failed: .*does not exist") as e:
            worker.call("match", "matching", database=str(tmp_path / "none.db"), matcher="exhaustive", num_threads=1)
        assert "\n" not in str(e.value)
    finally:
        worker.close()
    assert worker.proc.poll() is not None


# ---------------------------------------------------------------------------------------------------
# COLMAP round trips


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    pytest.importorskip("pycolmap")
    from ovs3d.scenegen import make_scene

    return make_scene("tabletop", 0, tmp_path_factory.mktemp("colmap") / "truth", **SCENE)


def _truth(scene: Path, names: list[str]) -> np.ndarray:
    from ovs3d.io.loader import read_poses_bounds

    c2w, _, near_far = read_poses_bounds(scene / "poses_bounds.npy")
    all_names = sorted(p.stem for p in (scene / "images").iterdir())
    idx = [all_names.index(Path(n).stem) for n in names]
    return c2w[idx], near_far[idx]


def _extent(c2w: np.ndarray) -> float:
    c = c2w[:, :, 3]
    return float(np.linalg.norm(c[:, None] - c[None], axis=-1).max())


def test_colmap_round_trip(generated, tmp_path):
    pycolmap = pytest.importorskip("pycolmap")
    from plyfile import PlyData

    from ovs3d.io.loader import load_scene, read_poses_bounds

    t0 = time.perf_counter()
    out = import_scene(generated / "images", tmp_path / "scene", classes=["mug", "wooden table"], num_threads=1)
    elapsed = time.perf_counter() - t0
    assert elapsed < 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]  # no temporary folder left
    report = json.loads((out / "colmap" / "import.json").read_text())
    names = sorted(p.name for p in (generated / "images").iterdir())
    assert report["registered"] == names and report["dropped"] == []
    assert set(report["timings_s"]) == {"read", "extract", "match", "map", "undistort", "write"}
    assert sorted(p.name for p in (out / "images").iterdir()) == names
    assert (out / "segmentations" / "classes.txt").read_text() == "mug\nwooden table\n"
    assert not (out / ".work").exists()

    # poses against the truth
    c2w, hwf, near_far = read_poses_bounds(out / "poses_bounds.npy")
    truth, truth_bounds = _truth(generated, names)
    err = compare_poses(c2w, truth)
    assert np.median(err["rot_err_deg_aligned"]) < 0.25
    assert np.median(err["rel_rot_err_deg"]) < 0.3
    assert np.median(err["rot_err_deg"]) < 1.5
    assert np.median(err["center_err"]) / _extent(truth) < 0.01
    # LLFF bounds from sparse points vs the generator's (dense depth percentiles), in the truth's units
    ratio = np.median(near_far * err["scale"], axis=0) / np.median(truth_bounds, axis=0)
    assert 0.7 < ratio[0] < 1.4 and 0.6 < ratio[1] < 1.4

    # one size, centred principal point, square pixels, focal near the truth (rendered with fx = fy)
    w, h = report["width"], report["height"]
    assert abs(w - SCENE["width"]) <= 4 and abs(h - SCENE["height"]) <= 4
    for p in (out / "images").iterdir():
        with Image.open(p) as im:
            assert im.size == (w, h)
    assert np.allclose(hwf[:, :2], [h, w])
    true_f = 0.5 * SCENE["width"] / np.tan(np.radians(25.0))
    assert abs(np.median(hwf[:, 2]) / true_f - 1) < 0.05

    # transforms.json says the same as poses_bounds.npy
    meta = json.loads((out / "transforms.json").read_text())
    assert [f["file_path"] for f in meta["frames"]] == [f"images/{n}" for n in names]
    gl = np.array([f["transform_matrix"] for f in meta["frames"]])
    np.testing.assert_allclose(gl[:, :3, 3], c2w[:, :, 3], atol=1e-9)
    np.testing.assert_allclose(gl[:, :3, 0], c2w[:, :, 0], atol=1e-9)
    np.testing.assert_allclose(gl[:, :3, 2], -c2w[:, :, 2], atol=1e-9)
    assert meta["cx"] == w / 2 and meta["cy"] == h / 2 and meta["fl_x"] == pytest.approx(hwf[0, 2])

    # the sparse points and the COLMAP model live in the poses' frame and match the written images
    ply = PlyData.read(str(out / "sparse" / "points3D.ply"))
    xyz = np.stack([ply["vertex"][k] for k in "xyz"], 1)
    assert len(xyz) == report["points3D"] > 100
    assert {p.name for p in ply["vertex"].properties} == {"x", "y", "z", "red", "green", "blue"}
    rec = pycolmap.Reconstruction(str(out / "colmap" / "sparse" / "0"))
    assert {c.model_name for c in rec.cameras.values()} == {"PINHOLE"}
    assert {(c.width, c.height) for c in rec.cameras.values()} == {(w, h)}
    reproj = []
    for i, name in enumerate(names):
        im = rec.find_image_with_name(name)
        obs = [(p.xy, rec.points3D[p.point3D_id].xyz) for p in im.points2D if p.has_point3D()]
        xy = np.array([o[0] for o in obs])
        world = np.array([o[1] for o in obs])
        cam = (world - c2w[i, :, 3]) @ c2w[i, :, :3]  # world -> OpenCV camera
        proj = hwf[i, 2] * cam[:, :2] / cam[:, 2:] + [w / 2, h / 2]
        reproj.append(np.linalg.norm(proj - xy, axis=1))
    assert np.median(np.concatenate(reproj)) < 1.0
    assert np.allclose(np.sort(xyz[:, 0]), np.sort([p.xyz[0] for p in rec.points3D.values()]), atol=1e-3)

    scene = load_scene(out)
    assert scene.kind == "forward" and (scene.width, scene.height) == (w, h) and len(scene.image_paths) == 16
    assert scene.classes == ["mug", "wooden table"]


def test_colmap_round_trip_mixed_sizes_and_exif(generated, tmp_path):
    """Some photos EXIF-rotated JPEGs, some at 1.5x the size: one common size, poses still right."""
    pytest.importorskip("pycolmap")
    from ovs3d.io.loader import load_scene, read_poses_bounds

    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted((generated / "images").iterdir()):
        i = int(p.stem)
        with Image.open(p) as im:
            im = im.convert("RGB")
            if i % 4 == 1:  # stored sideways, EXIF says "rotate 90 CW to view"
                exif = Image.Exif()
                exif[0x0112] = 6
                im.transpose(Image.Transpose.ROTATE_90).save(photos / f"{p.stem}.jpg", quality=97, exif=exif)
            elif i % 4 == 3:  # another camera: larger photos
                im.resize((im.width * 3 // 2, im.height * 3 // 2), Image.Resampling.BICUBIC).save(photos / p.name)
            else:
                im.save(photos / p.name)
    out = import_scene(photos, tmp_path / "scene", num_threads=1)
    report = json.loads((out / "colmap" / "import.json").read_text())
    names = sorted(p.name for p in photos.iterdir())
    assert report["registered"] == names and report["camera_groups"] == 2  # by size (no EXIF make/model)
    assert sorted(p.name for p in (out / "images").iterdir()) == names  # .jpg names kept
    sizes = set()
    for p in (out / "images").iterdir():
        with Image.open(p) as im:
            sizes.add(im.size)
    assert sizes == {(report["width"], report["height"])}
    assert report["width"] > report["height"]  # upright, landscape like the scene
    c2w, _, _ = read_poses_bounds(out / "poses_bounds.npy")
    truth, _ = _truth(generated, names)
    err = compare_poses(c2w, truth)
    assert np.median(err["rot_err_deg_aligned"]) < 0.25
    assert np.median(err["center_err"]) / _extent(truth) < 0.01
    assert load_scene(out).kind == "forward"


def test_ctrl_c_kills_colmap_and_leaves_nothing(generated, tmp_path, monkeypatch):
    """Ctrl-C while COLMAP works: its process is killed at once and no folder is left behind."""
    pytest.importorskip("pycolmap")
    workers = []
    real_init = colmap._Worker.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        workers.append(self)

    real_call = colmap._Worker.call
    pressed: list[float] = []

    def call(self, op, stage, on_progress=None, **kwargs):
        def ctrl_c(progress):  # Ctrl-C lands while the child reports progress: it is mid-work
            pressed.append(time.perf_counter())
            raise KeyboardInterrupt

        return real_call(self, op, stage, ctrl_c, **kwargs)

    monkeypatch.setattr(colmap._Worker, "__init__", init)
    monkeypatch.setattr(colmap._Worker, "call", call)
    with pytest.raises(KeyboardInterrupt):
        import_scene(generated / "images", tmp_path / "scene", num_threads=1)
    assert pressed and time.perf_counter() - pressed[0] < 2  # killed and tidied at once
    assert workers and all(w.proc.poll() is not None for w in workers)
    assert list(tmp_path.iterdir()) == []


def test_a_killed_import_leaves_a_folder_the_next_import_removes(tmp_path, no_colmap_needed, monkeypatch):
    import os
    import subprocess
    import sys

    from ovs3d.utils.files import HOST

    photos = _photos(tmp_path / "photos")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f".out.import.tmp-{dead.pid}@{HOST}-abcd1234"  # what a SIGKILLed import leaves
    (left / ".work").mkdir(parents=True)
    alive = tmp_path / f".out.import.tmp-{os.getpid()}@{HOST}-efgh5678"  # a running import's: kept
    alive.mkdir()

    def interrupted(self, staged, camera_model):
        raise KeyboardInterrupt

    monkeypatch.setattr(colmap._Importer, "extract", interrupted)
    with pytest.raises(KeyboardInterrupt):
        import_scene(photos, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["photos", alive.name])
