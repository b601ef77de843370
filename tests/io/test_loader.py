"""Scene folder loading: formats, normalisation, kind detection, validation errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovs3d.errors import SceneError
from ovs3d.io.conventions import opencv_to_opengl
from ovs3d.io.loader import (
    FORWARD_AABB,
    detect_kind,
    load_scene,
    read_poses_bounds,
    write_poses_bounds,
    write_transforms_json,
)

W, H = 16, 12

# ---------------------------------------------------------------------------------------------------
# camera sets (OpenCV c2w)


def look_at(eye: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenCV c2w ``[3, 4]`` at ``eye`` looking at ``target`` (camera -y roughly along ``up``)."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-8:
        x = np.cross(z, [1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z, eye], axis=-1)


def similarity(c2w: np.ndarray, seed: int = 3, scale: float = 2.5) -> np.ndarray:
    """Move the cameras into a rotated, shifted, scaled file world."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    t = rng.normal(size=3) * 3
    out = c2w.copy()
    out[:, :, :3] = q @ c2w[:, :, :3]
    out[:, :, 3] = scale * c2w[:, :, 3] @ q.T + t
    return out


def forward_grid(n_side: int = 3) -> np.ndarray:
    """Cameras on a grid in the z=0 plane, looking towards +z at a point 10 units away."""
    cams = []
    for i in range(n_side):
        for j in range(n_side):
            eye = np.array([(i - 1) * 0.5, (j - 1) * 0.4, 0.0])
            target = np.array([0.0, 0.0, 10.0]) + 0.3 * np.array([np.sin(i + 2 * j), np.cos(3 * i + j), 0.0])
            cams.append(look_at(eye, target, up=(0.0, -1.0, 0.0)))
    return np.stack(cams)


def ring(n: int = 12, radius: float = 4.0, center=(2.0, -1.0, 3.0), height: float = 1.5) -> np.ndarray:
    """360° outside-in ring looking at ``center``."""
    center = np.asarray(center)
    cams = []
    for k in range(n):
        a = 2 * np.pi * k / n
        eye = center + np.array([radius * np.cos(a), radius * np.sin(a), height])
        cams.append(look_at(eye, center))
    return np.stack(cams)


def inside_out(n: int = 12) -> np.ndarray:
    """Cameras near one point looking outwards all around."""
    cams = []
    for k in range(n):
        a = 2 * np.pi * k / n
        eye = 0.05 * np.array([np.cos(a), np.sin(a), 0.1 * (k % 2)])
        cams.append(look_at(eye, eye + np.array([np.cos(a), np.sin(a), 0.2 * np.sin(3 * a)])))
    return np.stack(cams)


# ---------------------------------------------------------------------------------------------------
# scene writers


def write_png(path: Path, size=(W, H), value: int = 128, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, value // 2, 255 - value)).save(path)


def make_scene(
    root: Path,
    c2w: np.ndarray,
    *,
    fmt: str = "llff",
    near_far: np.ndarray | None = None,
    focal: float = 14.0,
    pose_wh: tuple[int, int] = (W, H),
    classes: list[str] | None = None,
    annotated: list[int] | None = None,
) -> Path:
    n = len(c2w)
    for i in range(n):
        write_png(root / "images" / f"{i:02d}.png", value=10 * i)
    if near_far is None and fmt == "llff":
        near_far = np.tile([2.0, 20.0], (n, 1))
    if fmt == "llff":
        write_poses_bounds(root / "poses_bounds.npy", c2w, pose_wh[0], pose_wh[1], focal, near_far)
    else:
        write_transforms_json(
            root / "transforms.json",
            c2w,
            np.array([focal, focal, W / 2, H / 2]),
            W,
            H,
            [f"images/{i:02d}.png" for i in range(n)],
            near_far,
        )
    if classes is not None:
        (root / "segmentations").mkdir(parents=True, exist_ok=True)
        (root / "segmentations" / "classes.txt").write_text("\n".join(classes) + "\n")
        for v in annotated or []:
            for label in classes:
                if label.strip():
                    write_png(root / "segmentations" / f"{v:02d}" / f"{label.strip()}.png", value=255, mode="L")
    return root


def expected_tensorf(pb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TensoRF/3D-OVS ``LLFFDataset`` pose pipeline, re-implemented independently from its source."""
    poses = pb[:, :15].reshape(-1, 3, 5)
    bds = pb[:, -2:].copy()
    poses = np.concatenate([poses[..., 1:2], -poses[..., :1], poses[..., 2:4]], -1)
    center = poses[..., 3].mean(0)
    z = poses[..., 2].mean(0)
    z /= np.linalg.norm(z)
    y_ = poses[..., 1].mean(0)
    x = np.cross(y_, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    pose_avg = np.eye(4)
    pose_avg[:3] = np.stack([x, y, z, center], 1)
    last = np.tile(np.array([0, 0, 0, 1.0]), (len(poses), 1, 1))
    poses_homo = np.concatenate([poses, last], 1)
    centered = np.linalg.inv(pose_avg) @ poses_homo
    centered = (centered @ np.diag([1.0, -1.0, -1.0, 1.0]))[:, :3]
    scale = bds.min() * 0.75
    centered[..., 3] /= scale
    return centered, bds / scale


def assert_scene_error(root: Path, match: str, **kw) -> str:
    with pytest.raises(SceneError, match=match) as info:
        load_scene(root, **kw)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


# ---------------------------------------------------------------------------------------------------
# LLFF


def test_poses_bounds_raw_round_trip(tmp_path):
    c2w = similarity(forward_grid())
    nf = np.linspace(1.0, 2.0, len(c2w))[:, None] * [1.0, 9.0]
    write_poses_bounds(tmp_path / "poses_bounds.npy", c2w, 40, 30, 33.0, nf)
    arr = np.load(tmp_path / "poses_bounds.npy")
    assert arr.shape == (len(c2w), 17)
    c2w2, hwf, nf2 = read_poses_bounds(tmp_path / "poses_bounds.npy")
    np.testing.assert_allclose(c2w2, c2w, atol=1e-12)
    np.testing.assert_allclose(hwf, np.tile([30.0, 40.0, 33.0], (len(c2w), 1)))
    np.testing.assert_allclose(nf2, nf)


def test_llff_load_matches_reference_normalisation(tmp_path):
    c2w_file = similarity(forward_grid())
    nf = np.tile([3.0, 30.0], (len(c2w_file), 1)) * np.linspace(1, 1.5, len(c2w_file))[:, None]
    root = make_scene(tmp_path / "s", c2w_file, near_far=nf)
    scene = load_scene(root)
    assert scene.kind == "forward"
    assert scene.c2w.shape == (9, 3, 4) and scene.c2w.dtype == np.float32
    exp_c2w, exp_nf = expected_tensorf(np.load(root / "poses_bounds.npy"))
    np.testing.assert_allclose(scene.c2w, exp_c2w, atol=1e-5)
    np.testing.assert_allclose(scene.near_far, exp_nf, rtol=1e-6)
    assert np.isclose(scene.near_far.min(), 1 / 0.75)
    # cameras look roughly along world -z, centred on the origin
    mean_fwd = scene.c2w[:, :, 2].mean(0)
    assert mean_fwd[2] < -0.99 * np.linalg.norm(mean_fwd)
    np.testing.assert_allclose(scene.c2w[:, :, 3].mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(scene.aabb, FORWARD_AABB)
    # world_from_file maps the file's camera centres onto the normalised ones
    centres = c2w_file[:, :, 3] @ scene.world_from_file[:3, :3].T + scene.world_from_file[:3, 3]
    np.testing.assert_allclose(centres, scene.c2w[:, :, 3], atol=1e-5)
    # rotations stay rotations
    rot = scene.c2w[:, :, :3].astype(np.float64)
    np.testing.assert_allclose(np.swapaxes(rot, 1, 2) @ rot, np.tile(np.eye(3), (9, 1, 1)), atol=1e-5)
    assert scene.classes == [] and scene.annotated == [] and not scene.has_sim


def test_llff_focal_is_rescaled_to_the_images_on_disk(tmp_path):
    root = make_scene(tmp_path / "s", forward_grid(), focal=60.0, pose_wh=(4 * W, 4 * H))
    scene = load_scene(root)
    np.testing.assert_allclose(scene.intrinsics, np.tile([15.0, 15.0, W / 2, H / 2], (9, 1)))
    assert (scene.width, scene.height) == (W, H)
    np.testing.assert_allclose(scene.intrinsics_at(2.0)[0], [7.5, 7.5, W / 4, H / 4])


# ---------------------------------------------------------------------------------------------------
# transforms.json


@pytest.mark.parametrize("cams", ["forward", "ring"])
def test_transforms_json_loads_like_poses_bounds(tmp_path, cams):
    c2w = similarity(forward_grid() if cams == "forward" else ring())
    nf = np.tile([2.0, 25.0], (len(c2w), 1))
    a = load_scene(make_scene(tmp_path / "a", c2w, near_far=nf, focal=13.0))
    b = load_scene(make_scene(tmp_path / "b", c2w, fmt="json", near_far=nf, focal=13.0))
    assert a.kind == b.kind == ("forward" if cams == "forward" else "bounded")
    np.testing.assert_allclose(a.c2w, b.c2w, atol=1e-5)
    np.testing.assert_allclose(a.intrinsics, b.intrinsics, rtol=1e-6)
    np.testing.assert_allclose(a.near_far, b.near_far, rtol=1e-6)
    np.testing.assert_allclose(a.aabb, b.aabb, atol=1e-5)
    np.testing.assert_allclose(a.world_from_file, b.world_from_file, atol=1e-9)


def test_transforms_json_frames_matched_by_file_path_and_per_frame_intrinsics(tmp_path):
    c2w = similarity(ring(8))
    n = len(c2w)
    root = tmp_path / "s"
    for i in range(n):
        write_png(root / "images" / f"view_{i:02d}.PNG")
    intr = np.stack([np.full(n, 14.0) + np.arange(n), np.full(n, 15.0), np.full(n, 8.0), np.full(n, 6.0)], -1)
    order = np.random.default_rng(0).permutation(n)  # frames stored shuffled
    write_transforms_json(
        root / "transforms.json",
        c2w[order],
        intr[order],
        2 * W,
        2 * H,  # intrinsics written for a 2x capture: rescaled to the images on disk
        [f"./images/view_{i:02d}.PNG" for i in order],
    )
    meta = json.loads((root / "transforms.json").read_text())
    assert "fl_x" in meta["frames"][0] and "fl_x" not in meta
    np.testing.assert_allclose(np.asarray(meta["frames"][0]["transform_matrix"])[:3], opencv_to_opengl(c2w[order[0]]))
    scene = load_scene(root)
    assert [p.name for p in scene.image_paths] == [f"view_{i:02d}.PNG" for i in range(n)]
    np.testing.assert_allclose(scene.intrinsics, intr / 2, rtol=1e-6)
    assert scene.kind == "bounded"
    # relative poses survive the normalisation (similarity: rotations are only left-multiplied)
    rel_file = np.swapaxes(c2w[:, :, :3], 1, 2)[0] @ c2w[1, :, :3]
    rel = scene.c2w[0, :, :3].T @ scene.c2w[1, :, :3]
    np.testing.assert_allclose(rel, rel_file, atol=1e-5)


def test_transforms_json_top_level_near_far_and_name_only_paths(tmp_path):
    c2w = forward_grid()
    root = make_scene(tmp_path / "s", c2w, fmt="json", near_far=np.tile([2.0, 20.0], (9, 1)))
    meta = json.loads((root / "transforms.json").read_text())
    for f in meta["frames"]:
        del f["near_far"]
        f["file_path"] = Path(f["file_path"]).stem  # Blender style: no folder, no extension
    meta.update(near=2.0, far=20.0)
    (root / "transforms.json").write_text(json.dumps(meta))
    ref = load_scene(make_scene(tmp_path / "r", c2w, near_far=np.tile([2.0, 20.0], (9, 1))))
    scene = load_scene(root)
    np.testing.assert_allclose(scene.c2w, ref.c2w, atol=1e-5)
    np.testing.assert_allclose(scene.near_far, ref.near_far, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------
# kinds


def test_detect_kind_cases():
    assert detect_kind(forward_grid()) == "forward"
    assert detect_kind(similarity(forward_grid(), scale=100.0)) == "forward"
    assert detect_kind(ring()) == "bounded"
    assert detect_kind(similarity(ring(), seed=7, scale=0.01)) == "bounded"
    assert detect_kind(inside_out()) == "bounded"
    # exactly parallel cameras (no finite convergence point) are forward-facing
    parallel = np.stack([look_at([x, 0.0, 0.0], [x, 0.0, 5.0], up=(0, -1, 0)) for x in np.linspace(-1, 1, 5)])
    assert detect_kind(parallel) == "forward"

    # arcs around an object: ±45° (within the angle limit) is bounded, ±15° converging is forward
    def arc(deg: float) -> np.ndarray:
        angles = np.radians(np.linspace(-deg, deg, 7))
        return np.stack([look_at([3 * np.sin(a), 0.2 * a, -3 * np.cos(a)], [0.0, 0.0, 0.0]) for a in angles])

    assert detect_kind(arc(45)) == "bounded"
    assert detect_kind(arc(15)) == "forward"


def test_detect_kind_handheld_jitter_is_forward():
    """Handheld LLFF-style captures: cameras spread over a plane, orientations jittered by a few degrees."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = 30
        eyes = np.c_[rng.uniform(-0.3, 0.3, (n, 2)), rng.normal(0, 0.03, n)]
        targets = np.c_[rng.normal(0, 0.2, (n, 2)), np.full(n, 2.0)]  # ~6° of random tilt
        cams = np.stack([look_at(e, t, up=(0, -1, 0)) for e, t in zip(eyes, targets)])
        assert detect_kind(similarity(cams)) == "forward"


def test_bounded_ring_normalisation_without_bounds(tmp_path):
    center = np.array([2.0, -1.0, 3.0])
    c2w = ring(center=center)
    scene = load_scene(make_scene(tmp_path / "s", c2w, fmt="json"))
    assert scene.kind == "bounded"
    wff = scene.world_from_file
    np.testing.assert_allclose(wff[:3, :3] @ center + wff[:3, 3], 0, atol=1e-6)  # focus -> origin
    dist = np.linalg.norm(scene.c2w[:, :, 3], axis=1)
    np.testing.assert_allclose(dist.max(), 1.0, atol=1e-6)
    lo, hi = scene.aabb
    assert (scene.c2w[:, :, 3] > lo).all() and (scene.c2w[:, :, 3] < hi).all()
    np.testing.assert_allclose(hi, -lo, atol=1e-6)
    np.testing.assert_allclose(hi.max(), 1.5 * np.abs(scene.c2w[:, :, 3]).max(), rtol=1e-5)
    assert (scene.near_far[:, 0] < scene.near_far[:, 1]).all()
    # every aabb corner lies within the default far bound of every camera
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    d = np.linalg.norm(scene.c2w[:, None, :, 3] - corners[None], axis=-1).max(1)
    np.testing.assert_allclose(scene.near_far[:, 1], d, rtol=1e-5)


def test_bounded_ring_aabb_from_bounds(tmp_path):
    c2w = ring(radius=4.0, height=0.0)
    nf = np.tile([3.0, 5.0], (len(c2w), 1))
    scene = load_scene(make_scene(tmp_path / "s", c2w, near_far=nf))
    assert scene.kind == "bounded"
    np.testing.assert_allclose(scene.near_far, nf / 4.0, rtol=1e-6)
    lo, hi = scene.aabb
    # the content (a sphere of radius 1 file unit around the centre) is inside the box
    assert (lo < -0.25).all() and (hi > 0.25).all()
    assert (hi - lo).max() < 4.0


def test_inside_out_centred_on_camera_centroid(tmp_path):
    c2w = similarity(inside_out(), scale=1.0)
    nf = np.tile([0.5, 4.0], (len(c2w), 1))
    scene = load_scene(make_scene(tmp_path / "s", c2w, near_far=nf))
    assert scene.kind == "bounded"
    np.testing.assert_allclose(scene.c2w[:, :, 3].mean(0), 0, atol=1e-6)
    assert scene.near_far.max() < 1.0  # max camera distance + max far -> 1


def test_kind_override_wins(tmp_path):
    fwd = make_scene(tmp_path / "f", forward_grid())
    assert load_scene(fwd, kind="bounded").kind == "bounded"
    rng_root = make_scene(tmp_path / "r", ring())
    scene = load_scene(rng_root, kind="forward")
    assert scene.kind == "forward"
    np.testing.assert_allclose(scene.aabb, FORWARD_AABB)
    assert_scene_error(fwd, "unknown scene kind", kind="360")


# ---------------------------------------------------------------------------------------------------
# segmentations, protocols, sim


def test_classes_masks_and_protocols(tmp_path):
    root = make_scene(tmp_path / "s", forward_grid(), classes=["zebra", "", " apple ", "mango"], annotated=[4, 2])
    mask = np.zeros((H, W), np.uint8)
    mask[:, :8] = 255
    mask[:6, 8:] = 254  # near-white does not count
    mask[6:, 8:] = 128
    Image.fromarray(mask).save(root / "segmentations" / "04" / "mango.png")
    (root / "segmentations" / ".ipynb_checkpoints").mkdir()  # hidden folders are ignored
    (root / "sim").mkdir()
    scene = load_scene(root)
    assert scene.classes == ["apple", "mango", "zebra"]
    assert scene.annotated == [2, 4]
    assert scene.has_sim
    masks = scene.load_masks(4)
    assert masks.shape == (3, H, W) and masks.dtype == bool
    np.testing.assert_array_equal(masks[1], mask == 255)
    assert masks[0].all()
    small = scene.load_masks(4, downscale=2)
    assert small.shape == (3, H // 2, W // 2)
    exp = np.asarray(Image.fromarray(mask).resize((W // 2, H // 2), Image.NEAREST)) == 255
    np.testing.assert_array_equal(small[1], exp)
    assert scene.train_views() == list(range(9))
    assert scene.train_views(holdout=True) == [0, 1, 3, 5, 6, 7, 8]


def test_segmentations_without_view_folders_is_valid(tmp_path):
    root = make_scene(tmp_path / "s", forward_grid(), classes=["cat"], annotated=[])
    scene = load_scene(root)
    assert scene.classes == ["cat"] and scene.annotated == []


def test_thirty_images_load_fast(tmp_path):
    grid = forward_grid(6)[:30]
    root = make_scene(tmp_path / "s", grid, classes=["a", "b"], annotated=[0, 5, 29])
    t0 = time.perf_counter()
    scene = load_scene(root)
    assert time.perf_counter() - t0 < 5.0
    assert scene.n_views == 30 and scene.stems[:2] == ["00", "01"]


def test_jpg_and_case_insensitive_suffixes_sorted_by_name(tmp_path):
    root = tmp_path / "s"
    (root / "images").mkdir(parents=True)
    for name in ["b.JPG", "a.png", "c.jpeg"]:
        Image.new("RGB", (W, H)).save(root / "images" / name, format="PNG" if name.endswith("png") else "JPEG")
    (root / "images" / "notes.txt").write_text("not an image")
    write_poses_bounds(root / "poses_bounds.npy", forward_grid()[:3], W, H, 14.0, np.tile([2.0, 20.0], (3, 1)))
    scene = load_scene(root)
    assert [p.name for p in scene.image_paths] == ["a.png", "b.JPG", "c.jpeg"]


# ---------------------------------------------------------------------------------------------------
# bad scenes: one SceneError line each


def test_missing_folder(tmp_path):
    assert_scene_error(tmp_path / "nope", "does not exist")


def test_missing_images_folder_and_no_images(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    assert_scene_error(root, "images")
    (root / "images").mkdir()
    (root / "images" / "readme.txt").write_text("x")
    assert_scene_error(root, "no .png/.jpg/.jpeg images")


def test_image_count_differs_from_pose_count(tmp_path):
    root = make_scene(tmp_path / "s", forward_grid())
    write_png(root / "images" / "99.png")
    msg = assert_scene_error(root, "9 poses")
    assert "10 images" in msg


def test_unreadable_image(tmp_path):
    root = make_scene(tmp_path / "s", forward_grid())
    (root / "images" / "03.png").write_bytes(b"this is not a png")
    assert_scene_error(root, "03.png")


def test_truncated_image(tmp_path):
    root = make_scene(tmp_path / "s", forward_grid())
    data = (root / "images" / "03.png").read_bytes()
    (root / "images" / "03.png").write_bytes(data[: len(data) // 2])
    assert_scene_error(root, "cannot read image .*03.png")


def test_mixed_size_images(tmp_path):
    root = make_scene(tmp_path / "s", forward_grid())
    write_png(root / "images" / "05.png", size=(W + 2, H))
    assert_scene_error(root, "05.png is 18x12")


def test_missing_or_empty_or_duplicated_classes(tmp_path):
    root = make_scene(tmp_path / "s", forward_grid(), classes=["cat", "dog"], annotated=[1])
    classes = root / "segmentations" / "classes.txt"
    classes.unlink()
    assert_scene_error(root, "classes.txt is missing")
    classes.write_text("\n  \n")
    assert_scene_error(root, "classes.txt is empty")
    classes.write_text("cat\ndog\ncat \n")
    assert_scene_error(root, "twice")


def test_label_without_mask(tmp_path):
    root = make_scene(tmp_path / "s", forward_grid(), classes=["cat", "dog"], annotated=[1])
    (root / "segmentations" / "01" / "dog.png").unlink()
    assert_scene_error(root, "dog.png is missing")


def test_mask_of_wrong_size(tmp_path):
    root = make_scene(tmp_path / "s", forward_grid(), classes=["cat"], annotated=[1])
    write_png(root / "segmentations" / "01" / "cat.png", size=(W // 2, H // 2), mode="L")
    assert_scene_error(root, "cat.png is 8x6")


def test_unreadable_mask(tmp_path):
    root = make_scene(tmp_path / "s", forward_grid(), classes=["cat"], annotated=[1])
    (root / "segmentations" / "01" / "cat.png").write_bytes(b"garbage")
    assert_scene_error(root, "cannot read mask")


def test_view_folder_not_an_integer(tmp_path):
    root = make_scene(tmp_path / "s", forward_grid(), classes=["cat"], annotated=[1])
    (root / "segmentations" / "test_view0").mkdir()
    assert_scene_error(root, "test_view0 is not named by an integer")


@pytest.mark.parametrize("name", ["09", "-1", "123"])
def test_view_folder_out_of_range(tmp_path, name):
    root = make_scene(tmp_path / "s", forward_grid(), classes=["cat"], annotated=[1])
    (root / "segmentations" / name).mkdir()
    assert_scene_error(root, "9 images")


def test_duplicate_view_folders(tmp_path):
    root = make_scene(tmp_path / "s", forward_grid(), classes=["cat"], annotated=[1])
    (root / "segmentations" / "1").mkdir()
    assert_scene_error(root, "both refer to view 1")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_poses_with_nan_or_inf(tmp_path, bad):
    root = make_scene(tmp_path / "s", forward_grid())
    arr = np.load(root / "poses_bounds.npy")
    arr[4, 3] = bad
    np.save(root / "poses_bounds.npy", arr)
    assert_scene_error(root, "row 4 holds NaN or inf")


def test_transforms_json_with_nan(tmp_path):
    root = make_scene(tmp_path / "s", forward_grid(), fmt="json", near_far=np.tile([2.0, 20.0], (9, 1)))
    text = (root / "transforms.json").read_text()
    meta = json.loads(text)
    meta["frames"][2]["transform_matrix"][0][3] = float("nan")
    (root / "transforms.json").write_text(json.dumps(meta))
    assert_scene_error(root, "NaN or inf")


@pytest.mark.parametrize("shape", [(9, 15), (17,), (9, 3, 5)])
def test_poses_bounds_of_wrong_shape(tmp_path, shape):
    root = make_scene(tmp_path / "s", forward_grid())
    np.save(root / "poses_bounds.npy", np.zeros(shape))
    assert_scene_error(root, r"must be \(N, 17\)")


def test_poses_bounds_corrupt_file(tmp_path):
    root = make_scene(tmp_path / "s", forward_grid())
    (root / "poses_bounds.npy").write_bytes(b"nonsense")
    assert_scene_error(root, "cannot read .*poses_bounds.npy")


def test_invalid_rotation_and_bounds(tmp_path):
    root = make_scene(tmp_path / "s", forward_grid())
    arr = np.load(root / "poses_bounds.npy")
    good = arr.copy()
    arr[2, [0, 5, 10]] *= 3.0  # scaled rotation column
    np.save(root / "poses_bounds.npy", arr)
    assert_scene_error(root, "pose 2 is not a proper rotation")
    good[1, 15:17] = [5.0, 1.0]
    np.save(root / "poses_bounds.npy", good)
    assert_scene_error(root, "view 1 has invalid bounds")


def test_both_pose_files_missing(tmp_path):
    root = make_scene(tmp_path / "s", forward_grid())
    (root / "poses_bounds.npy").unlink()
    assert_scene_error(root, "poses_bounds.npy .*transforms.json")


def _json_scene(tmp_path: Path) -> tuple[Path, dict]:
    root = make_scene(tmp_path / "s", forward_grid(), fmt="json", near_far=np.tile([2.0, 20.0], (9, 1)))
    return root, json.loads((root / "transforms.json").read_text())


def test_transforms_json_malformed(tmp_path):
    root, meta = _json_scene(tmp_path)
    path = root / "transforms.json"
    path.write_text("{not json")
    assert_scene_error(root, "cannot parse")
    path.write_text(json.dumps([1, 2]))
    assert_scene_error(root, "JSON object")
    path.write_text(json.dumps({k: v for k, v in meta.items() if k != "frames"}))
    assert_scene_error(root, "no 'frames' list")
    path.write_text(json.dumps({k: v for k, v in meta.items() if k not in ("fl_x", "fl_y")}))
    assert_scene_error(root, "no intrinsics")
    bad = json.loads(json.dumps(meta))
    bad["frames"][3]["file_path"] = "images/missing.png"
    path.write_text(json.dumps(bad))
    assert_scene_error(root, "'images/missing.png' matches no image")
    bad = json.loads(json.dumps(meta))
    del bad["frames"][3]["transform_matrix"]
    path.write_text(json.dumps(bad))
    assert_scene_error(root, "frame 3 lacks")
    bad = json.loads(json.dumps(meta))
    bad["frames"] = bad["frames"][:-1]
    path.write_text(json.dumps(bad))
    assert_scene_error(root, "8 frames .* 9 images")
    bad = json.loads(json.dumps(meta))
    bad["frames"][1]["file_path"] = bad["frames"][0]["file_path"]
    path.write_text(json.dumps(bad))
    assert_scene_error(root, "two frames")
    bad = json.loads(json.dumps(meta))
    bad["frames"][1]["transform_matrix"] = [[1, 0], [0, 1]]
    path.write_text(json.dumps(bad))
    assert_scene_error(root, "shape")
    bad = json.loads(json.dumps(meta))
    del bad["frames"][1]["near_far"]
    path.write_text(json.dumps(bad))
    assert_scene_error(root, "some frames only")


def test_forward_transforms_without_bounds(tmp_path):
    root = make_scene(tmp_path / "s", forward_grid(), fmt="json")
    assert_scene_error(root, "no depth bounds")
    assert load_scene(root, kind="bounded").kind == "bounded"


# ---------------------------------------------------------------------------------------------------
# unbounded 360° captures (contracted space)


def test_outside_in_with_distant_bounds_is_unbounded(tmp_path):
    c2w = similarity(ring())  # radius 4 before the file's scale 2.5: 10 file units
    near = load_scene(make_scene(tmp_path / "near", c2w, near_far=np.tile([2.0, 25.0], (12, 1))))
    far = load_scene(make_scene(tmp_path / "far", c2w, near_far=np.tile([2.0, 300.0], (12, 1))))
    assert near.kind == "bounded" and far.kind == "unbounded"
    np.testing.assert_allclose(far.aabb, [[-2.0] * 3, [2.0] * 3])
    # the same normalisation as bounded outside-in: cameras on the unit sphere around the focus
    np.testing.assert_allclose(np.linalg.norm(far.c2w[:, :, 3], axis=1), 1.0, atol=1e-4)
    # inside-out rooms see far walls too, but they are rooms: bounded
    room = load_scene(make_scene(tmp_path / "room", inside_out(), near_far=np.tile([0.5, 400.0], (12, 1))))
    assert room.kind == "bounded"
    # without bounds nothing says the background is far (e.g. a Blender object): bounded; the flag overrides
    nob = make_scene(tmp_path / "nob", c2w, fmt="json")
    assert load_scene(nob).kind == "bounded"
    forced = load_scene(nob, kind="unbounded")
    assert forced.kind == "unbounded" and forced.aabb.max() == 2.0
