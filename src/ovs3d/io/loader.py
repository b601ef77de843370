"""Load a scene folder (SPEC §1): parse, validate, normalise the world and detect the scene kind.

Every problem with a scene folder raises :class:`ovs3d.errors.SceneError` with one line that names the
file or count at fault and says how to fix it.

Cameras are read from ``poses_bounds.npy`` (LLFF, preferred when both exist) or a nerfstudio
``transforms.json`` and converted to OpenCV camera-to-world with :mod:`ovs3d.io.conventions` (the only
place frames are flipped). The world is then normalised:

* **forward-facing** (as NeRF/TensoRF/3D-OVS on LLFF): recentre on the average pose (computed in the
  OpenGL ``[right, up, back]`` camera frame, so afterwards the average camera looks along world -z)
  and scale translations and bounds by ``1 / (0.75 * min(near))`` (``bd_factor = 0.75``). ``aabb`` is
  the NDC box :data:`FORWARD_AABB`.
* **bounded** (360° outside-in or inside-out): no rotation; translate so the centre is at the origin
  and scale uniformly. The centre is the point closest (least squares) to all optical axes when it
  lies in front of the cameras (outside-in), else the cameras' centroid (inside-out). The scale puts
  the cameras on/inside the unit sphere (outside-in), or, for inside-out captures with depth bounds,
  puts ``max camera distance + max(far)`` at 1. ``aabb`` is the box enclosing every camera's frustum
  between its near and far bound when bounds are known; without bounds it is the box around the
  cameras and the centre, scaled ×1.5 about the centre (each half-extent at least half of the largest
  one, so a planar ring still gets a thick box), and default bounds are made up (near
  :data:`DEFAULT_BOUNDED_NEAR`, far = distance to the farthest ``aabb`` corner).

``Scene.world_from_file`` keeps the 4x4 similarity (rotation, translation and scale) from the file's
world to the normalised one.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from ovs3d.errors import SceneError
from ovs3d.io.conventions import (
    llff_to_opencv,
    opencv_to_llff,
    opencv_to_opengl,
    opengl_to_opencv,
    to_homogeneous,
)
from ovs3d.io.scene import CONTRACTED_AABB, Scene, SceneKind

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
BD_FACTOR = 0.75
"""NeRF's ``bd_factor``: the nearest bound lands at ``1 / 0.75`` after scaling."""
FORWARD_AABB = np.array([[-1.5, -1.5, -1.0], [1.5, 1.5, 1.0]], dtype=np.float32)
"""The NDC box a forward-facing field uses."""
FORWARD_MAX_ANGLE_DEG = 50.0
"""Forward-facing needs every viewing direction within this angle of the mean direction."""
FORWARD_MAX_SPREAD_RATIO = 0.5
"""... and the cameras' lateral spread below this fraction of the distance to where their axes converge."""
UNBOUNDED_FAR_RATIO = 3.0
"""An outside-in capture whose far bounds exceed this many camera radii is unbounded (contracted space)."""
BOUNDED_BOX_PAD = 1.5
"""Without depth bounds, the bounded ``aabb`` is the camera box scaled by this about the centre."""
DEFAULT_BOUNDED_NEAR = 0.05
"""Near bound (normalised units) used for bounded scenes whose files carry no bounds."""


# ---------------------------------------------------------------------------------------------------
# public API


def load_scene(root: str | Path, kind: Literal["auto", "forward", "bounded", "unbounded"] = "auto") -> Scene:
    """Load and validate a scene folder (SPEC §1).

    Args:
        root: the scene folder (``images/``, ``poses_bounds.npy`` or ``transforms.json``, optionally
            ``segmentations/`` and ``sim/``).
        kind: ``"auto"`` detects the kind from the poses and bounds (:func:`detect_kind`, then
            :func:`is_unbounded`); ``"forward"``, ``"bounded"`` or ``"unbounded"`` override it.

    Returns:
        The :class:`~ovs3d.io.scene.Scene`, cameras in the normalised world (see the module docstring).

    Raises:
        SceneError: anything wrong with the folder, with a one-line message saying how to fix it.
    """
    if kind not in ("auto", "forward", "bounded", "unbounded"):
        raise SceneError(f"unknown scene kind {kind!r}: use 'auto', 'forward', 'bounded' or 'unbounded'")
    root = Path(root)
    if not root.exists():
        raise SceneError(f"scene folder {root} does not exist: check the path")
    if not root.is_dir():
        raise SceneError(f"scene path {root} is not a folder: pass the scene folder that holds images/")

    image_paths = _list_images(root)
    width, height = _check_images(image_paths)
    c2w, intrinsics, near_far = _read_cameras(root, image_paths, width, height)

    if kind == "auto":
        scene_kind = detect_kind(c2w)
        logger.info("scene %s: detected a %s scene from the poses", root.name, scene_kind)
    else:
        scene_kind = kind

    if scene_kind == "forward":
        if near_far is None:
            raise SceneError(
                f"{root / 'transforms.json'} has no depth bounds, which forward-facing scenes need: "
                "add 'near_far': [near, far] to each frame (or top-level 'near'/'far'), "
                "or pass --kind bounded (kind='bounded' in load_scene)"
            )
        c2w_n, near_far_n, world_from_file = recenter_forward(c2w, near_far)
        aabb = FORWARD_AABB.copy()
    else:
        c2w_n, near_far_n, world_from_file, aabb = normalize_bounded(c2w, intrinsics, near_far, width, height)
        if kind == "auto" and is_unbounded(c2w_n, near_far_n if near_far is not None else None):
            scene_kind = "unbounded"
            logger.info("scene %s: 360° capture with distant background: unbounded (contracted space)", root.name)
        if scene_kind == "unbounded":
            aabb = np.asarray(CONTRACTED_AABB)

    classes, annotated = _read_segmentations(root, len(image_paths), width, height)
    return Scene(
        root=root,
        image_paths=image_paths,
        width=width,
        height=height,
        c2w=c2w_n.astype(np.float32),
        intrinsics=intrinsics.astype(np.float32),
        near_far=near_far_n.astype(np.float32),
        kind=scene_kind,
        aabb=np.asarray(aabb, dtype=np.float32),
        classes=classes,
        annotated=annotated,
        world_from_file=world_from_file.astype(np.float64),
        has_sim=(root / "sim").is_dir(),
    )


def detect_kind(c2w: np.ndarray) -> SceneKind:
    """Guess the scene kind from the poses alone.

    Forward-facing when every viewing direction is within :data:`FORWARD_MAX_ANGLE_DEG` of the mean
    direction ``m`` AND the cameras' lateral spread is small compared with the distance ``D`` to where
    their axes converge: ``spread / D < FORWARD_MAX_SPREAD_RATIO``. Here ``spread`` is the largest
    distance of a camera from the centroid across ``m``, and ``1 / D = |k|`` comes from the
    least-squares fit ``d_perp ≈ -k · o_perp`` of the directions' lateral parts against the cameras'
    lateral offsets (orbiting cameras turn with their position, ``k = 1 / radius``; parallel or
    randomly jittered handheld cameras give ``k ≈ 0``). For a circular arc the ratio is the sine of its
    half-angle, so arcs wider than about ±30° count as bounded. Otherwise bounded (360°, inside-out).
    The test is invariant to the world's rotation, translation and scale.

    Args:
        c2w: ``[N, 3, 4]`` OpenCV camera-to-world.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    dirs = _unit(c2w[:, :, 2])
    origins = c2w[:, :, 3]
    mean_dir = dirs.mean(0)
    norm = float(np.linalg.norm(mean_dir))
    if norm < 1e-6:
        return "bounded"
    m = mean_dir / norm
    max_angle = float(np.degrees(np.arccos(np.clip(dirs @ m, -1.0, 1.0))).max())
    if max_angle > FORWARD_MAX_ANGLE_DEG:
        return "bounded"
    across = np.eye(3) - np.outer(m, m)
    o_perp = (origins - origins.mean(0)) @ across
    d_perp = dirs @ across
    sq = float((o_perp**2).sum())
    if sq <= 0.0:
        return "forward"
    k = -float((o_perp * d_perp).sum()) / sq
    spread = float(np.linalg.norm(o_perp, axis=1).max())
    return "forward" if spread * abs(k) < FORWARD_MAX_SPREAD_RATIO else "bounded"


def is_unbounded(c2w: np.ndarray, near_far: np.ndarray | None) -> bool:
    """Whether a normalised non-forward capture is unbounded: cameras around an object (outside-in) that see
    content farther than :data:`UNBOUNDED_FAR_RATIO` times their distance from the centre (mip-NeRF 360's
    scenes: background at any distance). Without bounds nothing says so: bounded (e.g. Blender objects).

    Args:
        c2w: ``[N, 3, 4]`` OpenCV camera-to-world in the normalised world (centre at the origin).
        near_far: ``[N, 2]`` depth bounds in the same units, or ``None``.
    """
    if near_far is None or not _outside_in(c2w, near_far):
        return False
    radius = float(np.linalg.norm(np.asarray(c2w)[:, :, 3], axis=1).max())
    return bool(np.max(np.asarray(near_far)[:, 1]) > UNBOUNDED_FAR_RATIO * radius)


def _outside_in(c2w: np.ndarray, near_far: np.ndarray | None) -> bool:
    """Whether the cameras look in at a common point in front of them (rather than out from inside a room)."""
    c2w = np.asarray(c2w, dtype=np.float64)
    origins = c2w[:, :, 3]
    dirs = _unit(c2w[:, :, 2])
    focus = _focus_point(origins, dirs)
    if focus is None:
        return False
    depth = np.median(np.einsum("ij,ij->i", focus - origins, dirs))
    dist = np.median(np.linalg.norm(focus - origins, axis=1))
    outside_in = bool(dist > 0 and depth > 0.5 * dist)
    if near_far is not None:
        # Cameras that turn around inside a room have a least-squares "focus" a few cm from them, which
        # can pass the test above by chance; what they look at is never nearer than their near bounds.
        outside_in = outside_in and bool(depth > np.median(np.asarray(near_far)[:, 0]))
    return outside_in


def recenter_forward(
    c2w: np.ndarray, near_far: np.ndarray, bd_factor: float = BD_FACTOR
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NeRF/TensoRF LLFF normalisation: recentre on the average pose, scale by ``1/(bd_factor·min near)``.

    The average pose is built in the OpenGL camera frame (``[right, up, back]``) as NeRF's
    ``poses_avg``: centre = mean camera centre, ``z`` = normalised mean of the back axes, ``x`` =
    normalise(mean up × z), ``y`` = z × x. All cameras are left-multiplied by its inverse, so the
    average camera ends at the origin looking along world -z.

    Args:
        c2w: ``[N, 3, 4]`` OpenCV camera-to-world in the file's world.
        near_far: ``[N, 2]`` depth bounds in file units.
        bd_factor: NeRF's ``bd_factor``.

    Returns:
        ``c2w`` ``[N, 3, 4]`` (OpenCV, normalised world), ``near_far`` ``[N, 2]`` scaled, and
        ``world_from_file`` ``[4, 4]`` (``x_norm = s · R_avgᵀ (x - c_avg)``).
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    near_far = np.asarray(near_far, dtype=np.float64)
    gl = opencv_to_opengl(c2w)
    center = gl[:, :, 3].mean(0)
    z = _unit(gl[:, :, 2].mean(0))
    up = gl[:, :, 1].mean(0)
    x = _unit(np.cross(up, z))
    y = np.cross(z, x)
    rot_avg = np.stack([x, y, z], axis=-1)  # columns x, y, z
    scale = 1.0 / (float(near_far.min()) * bd_factor)
    world_from_file = np.eye(4)
    world_from_file[:3, :3] = scale * rot_avg.T
    world_from_file[:3, 3] = -scale * rot_avg.T @ center
    return _apply_similarity(c2w, world_from_file, scale), near_far * scale, world_from_file


def normalize_bounded(
    c2w: np.ndarray,
    intrinsics: np.ndarray,
    near_far: np.ndarray | None,
    width: int,
    height: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Normalise a bounded (360° or inside-out) capture; see the module docstring for the rules.

    Args:
        c2w: ``[N, 3, 4]`` OpenCV camera-to-world in the file's world.
        intrinsics: ``[N, 4]`` ``(fx, fy, cx, cy)`` for ``width`` x ``height`` images.
        near_far: ``[N, 2]`` depth bounds in file units, or ``None`` when the file has none.
        width: image width in pixels.
        height: image height in pixels.

    Returns:
        ``c2w`` ``[N, 3, 4]``, ``near_far`` ``[N, 2]``, ``world_from_file`` ``[4, 4]`` and ``aabb``
        ``[2, 3]``, all in the normalised world.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    origins = c2w[:, :, 3]
    dirs = _unit(c2w[:, :, 2])
    centroid = origins.mean(0)
    if _outside_in(c2w, near_far):
        center = _focus_point(origins, dirs)
        radius = float(np.linalg.norm(origins - center, axis=1).max())
    else:
        center = centroid
        radius = float(np.linalg.norm(origins - center, axis=1).max())
        if near_far is not None:
            radius += float(np.max(near_far[:, 1]))
    scale = 1.0 / radius if radius > 0 else 1.0
    world_from_file = np.eye(4)
    world_from_file[:3, :3] *= scale
    world_from_file[:3, 3] = -scale * center
    c2w_n = _apply_similarity(c2w, world_from_file, scale)

    if near_far is not None:
        nf = np.asarray(near_far, dtype=np.float64) * scale
        aabb = _frustum_box(c2w_n, intrinsics, nf, width, height)
    else:
        pts = np.concatenate([c2w_n[:, :, 3], np.zeros((1, 3))])
        half = np.abs(pts).max(0)
        half = np.maximum(half, 0.5 * half.max())
        if half.max() <= 0:
            half = np.ones(3)
        half = BOUNDED_BOX_PAD * half
        aabb = np.stack([-half, half])
        corners = np.array([[aabb[i, 0], aabb[j, 1], aabb[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
        far = np.linalg.norm(c2w_n[:, None, :, 3] - corners[None], axis=-1).max(1)
        nf = np.stack([np.full_like(far, DEFAULT_BOUNDED_NEAR), np.maximum(far, 2 * DEFAULT_BOUNDED_NEAR)], -1)
    return c2w_n, nf, world_from_file, aabb


def read_poses_bounds(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read ``poses_bounds.npy`` as is (no normalisation, no focal rescaling).

    Returns:
        ``c2w`` ``[N, 3, 4]`` OpenCV camera-to-world in the file's world, ``hwf`` ``[N, 3]`` (height,
        width, focal of the capture) and ``near_far`` ``[N, 2]``.

    Raises:
        SceneError: unreadable file, wrong shape, non-finite values or invalid poses/bounds.
    """
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any read failure is a user-fixable scene error
        raise SceneError(f"cannot read {path} ({_one_line(e)}): regenerate it with LLFF imgs2poses") from e
    if arr.ndim != 2 or arr.shape[1] != 17 or arr.shape[0] == 0:
        raise SceneError(
            f"{path} has shape {tuple(arr.shape)} but must be (N, 17) (3x5 pose+hwf and near/far per image): "
            "regenerate it with LLFF imgs2poses"
        )
    arr = arr.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(arr).all(1))
    if bad.size:
        raise SceneError(
            f"{path} row {int(bad[0])} holds NaN or inf ({bad.size} bad rows): fix or re-run the pose estimation"
        )
    poses = arr[:, :15].reshape(-1, 3, 5)
    hwf = poses[:, :, 4].copy()
    near_far = arr[:, 15:17].copy()
    c2w = llff_to_opencv(poses[:, :, :4])
    _check_rotations(c2w, path)
    if (hwf <= 0).any():
        raise SceneError(f"{path} has a non-positive height, width or focal in its 5th column: fix the hwf values")
    _check_bounds(near_far, path)
    return c2w, hwf, near_far


def write_poses_bounds(
    path: str | Path,
    c2w_opencv: np.ndarray,
    width: int,
    height: int,
    focal: float | np.ndarray,
    near_far: np.ndarray,
) -> None:
    """Write LLFF ``poses_bounds.npy`` (the inverse of :func:`read_poses_bounds`), atomically.

    Args:
        path: destination ``.npy``.
        c2w_opencv: ``[N, 3, 4]`` OpenCV camera-to-world.
        width: image width in pixels.
        height: image height in pixels.
        focal: focal length in pixels, scalar or ``[N]``.
        near_far: ``[N, 2]`` depth bounds.
    """
    from ovs3d.utils.files import atomic_path

    c2w_opencv = np.asarray(c2w_opencv, dtype=np.float64)
    n = c2w_opencv.shape[0]
    llff = opencv_to_llff(c2w_opencv)
    hwf = np.zeros((n, 3, 1))
    hwf[:, 0, 0] = height
    hwf[:, 1, 0] = width
    hwf[:, 2, 0] = np.broadcast_to(np.asarray(focal, dtype=np.float64), (n,))
    arr = np.concatenate(
        [
            np.concatenate([llff, hwf], axis=-1).reshape(n, 15),
            np.asarray(near_far, dtype=np.float64).reshape(n, 2),
        ],
        axis=1,
    )
    with atomic_path(path, suffix=".npy") as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


def write_transforms_json(
    path: str | Path,
    c2w_opencv: np.ndarray,
    intrinsics: np.ndarray,
    width: int,
    height: int,
    file_paths: list[str],
    near_far: np.ndarray | None = None,
) -> None:
    """Write a nerfstudio ``transforms.json`` (OpenGL c2w per frame), atomically.

    Args:
        path: destination ``transforms.json``.
        c2w_opencv: ``[N, 3, 4]`` OpenCV camera-to-world.
        intrinsics: ``[4]`` shared or ``[N, 4]`` per-frame ``(fx, fy, cx, cy)`` in pixels; shared values
            are written top-level, per-frame ones in each frame.
        width: image width in pixels.
        height: image height in pixels.
        file_paths: ``N`` image paths relative to the json's folder (e.g. ``"images/00.png"``).
        near_far: optional ``[N, 2]`` depth bounds, written per frame as ``"near_far"``.
    """
    from ovs3d.utils.files import atomic_write_json

    c2w_opencv = np.asarray(c2w_opencv, dtype=np.float64)
    n = c2w_opencv.shape[0]
    intr = np.asarray(intrinsics, dtype=np.float64)
    shared = intr.ndim == 1 or bool(np.all(intr == intr[0]))
    intr = np.broadcast_to(intr.reshape(-1, 4), (n, 4))
    gl = to_homogeneous(opencv_to_opengl(c2w_opencv))
    out: dict[str, Any] = {"camera_model": "PINHOLE", "w": int(width), "h": int(height)}
    if shared:
        out.update(dict(zip(("fl_x", "fl_y", "cx", "cy"), (float(v) for v in intr[0]))))
    frames = []
    for i in range(n):
        frame: dict[str, Any] = {"file_path": str(file_paths[i]), "transform_matrix": gl[i].tolist()}
        if not shared:
            frame.update(dict(zip(("fl_x", "fl_y", "cx", "cy"), (float(v) for v in intr[i]))))
        if near_far is not None:
            frame["near_far"] = [float(v) for v in np.asarray(near_far)[i]]
        frames.append(frame)
    out["frames"] = frames
    atomic_write_json(path, out)


# ---------------------------------------------------------------------------------------------------
# images


def _list_images(root: Path) -> list[Path]:
    folder = root / "images"
    if not folder.is_dir():
        raise SceneError(f"{folder} is missing: put the views as images/<name>.png|jpg in the scene folder")
    paths = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: p.name,
    )
    if not paths:
        raise SceneError(f"no .png/.jpg/.jpeg images in {folder}: add the views there")
    return paths


def _check_images(paths: list[Path]) -> tuple[int, int]:
    """Verify every image is readable to its end and all share one size.

    PNG: ``verify()`` (every chunk's CRC, no decode). JPEG: the stream must end with its end-of-image
    marker; a file that does not (truncated, or with data after the image) is decoded in full, at 1/8 size
    (``draft``: every coefficient is read, the inverse DCT is cheap), so a truncated file is caught here
    and not halfway through a fit.
    """
    size: tuple[int, int] | None = None
    for p in paths:
        try:
            with Image.open(p) as im:
                this = im.size
                fmt = im.format
                im.verify()
            if fmt == "JPEG" and not _jpeg_ends(p):
                with Image.open(p) as im:
                    im.draft("RGB", (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
                    im.load()
        except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
            raise SceneError(f"cannot read image {p} ({_one_line(e)}): replace or remove the file") from e
        if size is None:
            size = this
        elif this != size:
            raise SceneError(
                f"image {p} is {this[0]}x{this[1]} but {paths[0].name} is {size[0]}x{size[1]}: "
                "all views must have the same size"
            )
    assert size is not None
    return size


def _jpeg_ends(path: Path) -> bool:
    """Whether a JPEG file ends with the end-of-image marker ``FFD9`` (trailing zero padding allowed)."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 64))
        tail = f.read().rstrip(b"\x00")
    return tail.endswith(b"\xff\xd9")


# ---------------------------------------------------------------------------------------------------
# cameras


def _read_cameras(
    root: Path, image_paths: list[Path], width: int, height: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """OpenCV c2w ``[N, 3, 4]`` (file world), intrinsics ``[N, 4]`` at the on-disk size, bounds or None."""
    llff = root / "poses_bounds.npy"
    tjson = root / "transforms.json"
    if llff.is_file():
        if tjson.is_file():
            logger.info("%s has both poses_bounds.npy and transforms.json: using poses_bounds.npy", root)
        c2w, hwf, near_far = read_poses_bounds(llff)
        if len(c2w) != len(image_paths):
            raise SceneError(
                f"{llff} has {len(c2w)} poses but images/ holds {len(image_paths)} images: each image needs "
                "one row in sorted filename order; remove extra images or regenerate poses_bounds.npy"
            )
        # hwf is for the capture resolution; rescale focal to the images on disk (per axis, as TensoRF).
        fx = hwf[:, 2] * width / hwf[:, 1]
        fy = hwf[:, 2] * height / hwf[:, 0]
        intrinsics = np.stack([fx, fy, np.full_like(fx, width / 2), np.full_like(fx, height / 2)], -1)
        return c2w, intrinsics, near_far
    if tjson.is_file():
        return _read_transforms_json(tjson, root, image_paths, width, height)
    raise SceneError(
        f"no poses in {root}: add poses_bounds.npy (LLFF, one row per image) or a nerfstudio transforms.json"
    )


_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x")


def _read_transforms_json(
    path: Path, root: Path, image_paths: list[Path], width: int, height: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SceneError(f"cannot parse {path} ({_one_line(e)}): fix the JSON syntax") from e
    if not isinstance(meta, dict):
        raise SceneError(f"{path} must hold a JSON object with a 'frames' list: see the nerfstudio format")
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise SceneError(f"{path} has no 'frames' list: add one frame per image with file_path and transform_matrix")
    model = str(meta.get("camera_model", "PINHOLE")).upper()
    if model in ("OPENCV_FISHEYE", "EQUIRECTANGULAR"):
        raise SceneError(f"{path} uses camera_model {model}: only pinhole cameras are supported, undistort first")
    if any(float(meta.get(k, 0.0) or 0.0) != 0.0 for k in ("k1", "k2", "k3", "k4", "p1", "p2")):
        logger.warning("%s has lens distortion coefficients: they are ignored (undistort the images)", path)

    index = _image_index(root, path.parent, image_paths)
    frame_of: dict[int, dict] = {}
    for j, frame in enumerate(frames):
        if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
            raise SceneError(f"{path} frame {j} lacks 'file_path' or 'transform_matrix': add both to every frame")
        i = index(str(frame["file_path"]))
        if i is None:
            raise SceneError(
                f"{path} frame {j} file_path {frame['file_path']!r} matches no image in {root / 'images'}: "
                "fix the path (relative to the json's folder) or add the image"
            )
        if i in frame_of:
            raise SceneError(f"{path} has two frames for image {image_paths[i].name}: keep one frame per image")
        frame_of[i] = frame
    if len(frame_of) != len(image_paths):
        missing = next(p.name for k, p in enumerate(image_paths) if k not in frame_of)
        raise SceneError(
            f"{path} has {len(frame_of)} frames but images/ holds {len(image_paths)} images "
            f"(no frame for {missing}): add a frame per image or remove the extra images"
        )

    c2w_gl, intr, bounds = [], [], []
    for i in range(len(image_paths)):
        frame = frame_of[i]
        try:
            m = np.asarray(frame["transform_matrix"], dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise SceneError(f"{path} frame for {image_paths[i].name}: transform_matrix is not numeric") from e
        if m.shape not in ((4, 4), (3, 4)):
            raise SceneError(
                f"{path} frame for {image_paths[i].name}: transform_matrix has shape {m.shape}, expected 4x4"
            )
        if not np.isfinite(m).all():
            raise SceneError(f"{path} frame for {image_paths[i].name}: transform_matrix holds NaN or inf, fix it")
        c2w_gl.append(m[:3, :4])
        intr.append(_frame_intrinsics(path, meta, frame, image_paths[i].name, width, height))
        bounds.append(_frame_bounds(path, meta, frame, image_paths[i].name))
    c2w = opengl_to_opencv(np.stack(c2w_gl))
    _check_rotations(c2w, path)
    if all(b is None for b in bounds):
        near_far = None
    elif any(b is None for b in bounds):
        raise SceneError(f"{path} gives near/far for some frames only: give them for every frame or none")
    else:
        near_far = np.asarray(bounds, dtype=np.float64)
        _check_bounds(near_far, path)
    return c2w, np.asarray(intr, dtype=np.float64), near_far


def _image_index(root: Path, base: Path, image_paths: list[Path]):
    """A matcher from a ``file_path`` to an image index: exact path, then file name, then unique stem."""
    by_path = {p.resolve(): i for i, p in enumerate(image_paths)}
    by_name = {p.name: i for i, p in enumerate(image_paths)}
    stems: dict[str, list[int]] = {}
    for i, p in enumerate(image_paths):
        stems.setdefault(p.stem, []).append(i)

    def index(file_path: str) -> int | None:
        fp = file_path.replace("\\", "/")
        for b in (base, root):
            i = by_path.get((b / fp).resolve())
            if i is not None:
                return i
        name = Path(fp).name
        if name in by_name:
            return by_name[name]
        cand = stems.get(name) or stems.get(Path(name).stem)
        return cand[0] if cand and len(cand) == 1 else None

    return index


def _frame_intrinsics(path: Path, meta: dict, frame: dict, name: str, width: int, height: int) -> list[float]:
    def get(key: str) -> float | None:
        v = frame.get(key, meta.get(key))
        if v is None:
            return None
        try:
            v = float(v)
        except (TypeError, ValueError) as e:
            raise SceneError(f"{path}: '{key}' for {name} is not a number, fix it") from e
        if not math.isfinite(v):
            raise SceneError(f"{path}: '{key}' for {name} is NaN or inf, fix it")
        return v

    w = get("w") or float(width)
    h = get("h") or float(height)
    fx = get("fl_x")
    if fx is None:
        angle = get("camera_angle_x")
        if angle is None:
            raise SceneError(
                f"{path} has no intrinsics for {name}: add fl_x, fl_y, cx, cy, w, h (top-level or per frame)"
            )
        fx = 0.5 * w / math.tan(0.5 * angle)
    fy = get("fl_y") or fx
    cx = get("cx")
    cy = get("cy")
    cx = w / 2 if cx is None else cx
    cy = h / 2 if cy is None else cy
    if fx <= 0 or fy <= 0 or w <= 0 or h <= 0:
        raise SceneError(f"{path}: non-positive focal or size for {name}, fix fl_x/fl_y/w/h")
    sx, sy = width / w, height / h  # intrinsics are for w x h; images on disk may be resized
    return [fx * sx, fy * sy, cx * sx, cy * sy]


def _frame_bounds(path: Path, meta: dict, frame: dict, name: str) -> list[float] | None:
    for src in (frame, meta):
        if "near_far" in src:
            v = src["near_far"]
        elif "near" in src and "far" in src:
            v = [src["near"], src["far"]]
        else:
            continue
        try:
            arr = np.asarray(v, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as e:
            raise SceneError(f"{path}: near/far for {name} is not numeric, use 'near_far': [near, far]") from e
        if arr.shape != (2,):
            raise SceneError(f"{path}: near/far for {name} must be two numbers, use 'near_far': [near, far]")
        return arr.tolist()
    return None


def _check_rotations(c2w: np.ndarray, source: Path) -> None:
    rot = c2w[:, :3, :3]
    err = np.abs(np.swapaxes(rot, 1, 2) @ rot - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(rot)
    bad = np.flatnonzero((err > 1e-2) | (det <= 0))
    if bad.size:
        raise SceneError(
            f"{source}: pose {int(bad[0])} is not a proper rotation ({bad.size} bad poses): "
            "fix the camera matrices (orthonormal, right-handed)"
        )


def _check_bounds(near_far: np.ndarray, source: Path) -> None:
    if not np.isfinite(near_far).all():
        raise SceneError(f"{source}: near/far bounds hold NaN or inf, fix or recompute them")
    bad = np.flatnonzero((near_far[:, 0] <= 0) | (near_far[:, 1] <= near_far[:, 0]))
    if bad.size:
        raise SceneError(
            f"{source}: view {int(bad[0])} has invalid bounds near={near_far[bad[0], 0]:g} "
            f"far={near_far[bad[0], 1]:g}: need 0 < near < far"
        )


# ---------------------------------------------------------------------------------------------------
# segmentations


def _read_segmentations(root: Path, n_views: int, width: int, height: int) -> tuple[list[str], list[int]]:
    seg = root / "segmentations"
    if not seg.exists():
        return [], []
    if not seg.is_dir():
        raise SceneError(f"{seg} is not a folder: remove it or make it hold classes.txt and <NN>/ mask folders")
    classes_file = seg / "classes.txt"
    if not classes_file.is_file():
        raise SceneError(f"{classes_file} is missing: list one text label per line (or remove segmentations/)")
    try:
        lines = classes_file.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SceneError(f"cannot read {classes_file} ({_one_line(e)}): save it as UTF-8 text") from e
    labels = [ln.strip() for ln in lines if ln.strip()]
    if not labels:
        raise SceneError(f"{classes_file} is empty: list one text label per line")
    seen: set[str] = set()
    for label in labels:
        if label in seen:
            raise SceneError(f"{classes_file} lists {label!r} twice: keep each label once")
        seen.add(label)
    classes = sorted(labels)

    views: dict[int, Path] = {}
    for d in sorted(seg.iterdir(), key=lambda p: p.name):
        if not d.is_dir() or d.name.startswith("."):
            continue
        try:
            v = int(d.name)
        except ValueError:
            raise SceneError(
                f"mask folder {d} is not named by an integer: name it by the view's index in the sorted image list"
            ) from None
        if not 0 <= v < n_views:
            raise SceneError(
                f"mask folder {d} refers to view {v} but there are {n_views} images (0..{n_views - 1}): "
                "rename it to the view's index in the sorted image list"
            )
        if v in views:
            raise SceneError(f"mask folders {views[v].name} and {d.name} both refer to view {v}: keep one")
        views[v] = d
    for d in views.values():
        for label in classes:
            mask = d / f"{label}.png"
            if not mask.is_file():
                raise SceneError(
                    f"mask {mask} is missing: every annotated view needs <label>.png for each line of classes.txt"
                )
            try:
                with Image.open(mask) as im:
                    size = im.size
                    im.verify()
            except Exception as e:  # noqa: BLE001
                raise SceneError(f"cannot read mask {mask} ({_one_line(e)}): replace the file") from e
            if size != (width, height):
                raise SceneError(
                    f"mask {mask} is {size[0]}x{size[1]} but the images are {width}x{height}: "
                    "save masks at the full image size"
                )
    return classes, sorted(views)


# ---------------------------------------------------------------------------------------------------
# geometry helpers


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _focus_point(origins: np.ndarray, dirs: np.ndarray) -> np.ndarray | None:
    """Least-squares point closest to all lines ``o + t d`` (``[3]``), or None when the axes are parallel."""
    proj = np.eye(3)[None] - dirs[:, :, None] * dirs[:, None, :]  # [N, 3, 3]
    a = proj.sum(0)
    b = np.einsum("nij,nj->i", proj, origins)
    eig = np.linalg.eigvalsh(a)
    if eig[0] <= 1e-6 * max(eig[-1], 1e-12):
        return None
    return np.linalg.solve(a, b)


def _apply_similarity(c2w: np.ndarray, world_from_file: np.ndarray, scale: float) -> np.ndarray:
    """Map cameras by a similarity ``x -> s R x + t``: rotation ``R R_cam``, centre ``s R o + t``."""
    rot = world_from_file[:3, :3] / scale
    out = np.empty_like(c2w)
    out[:, :, :3] = rot[None] @ c2w[:, :, :3]
    out[:, :, 3] = c2w[:, :, 3] @ world_from_file[:3, :3].T + world_from_file[:3, 3]
    return out


def _frustum_box(c2w: np.ndarray, intrinsics: np.ndarray, near_far: np.ndarray, width: int, height: int) -> np.ndarray:
    """``[2, 3]`` box around every camera's frustum between its near and far bound."""
    fx, fy, cx, cy = (intrinsics[:, k][:, None] for k in range(4))
    u = np.array([0.0, width, 0.0, width])[None]
    v = np.array([0.0, 0.0, height, height])[None]
    cam = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u - cx)], -1)  # [N, 4, 3] at depth 1
    pts = []
    for k in (0, 1):
        p_cam = cam * near_far[:, k][:, None, None]
        pts.append(np.einsum("nij,nkj->nki", c2w[:, :, :3], p_cam) + c2w[:, None, :, 3])
    allp = np.concatenate(pts, axis=1).reshape(-1, 3)
    return np.stack([allp.min(0), allp.max(0)])


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
