"""``ovs3d import``: a user's own photos to a scene folder (SPEC §1), with camera poses from COLMAP.

COLMAP comes from ``pycolmap`` (the optional extra ``ovs3d[colmap]``), imported lazily by
:func:`import_scene`. The stages, each logged with its duration (kept in ``colmap/import.json``):

1. **read** - every photo is decoded (an unreadable file is named), its EXIF orientation applied
   (``ImageOps.exif_transpose``: COLMAP never sees a sideways photo), identical photos are refused, and the
   photos are staged in a work folder under the scene's final file names.
2. **extract** - SIFT features. Photos share one camera (intrinsics) per group of equal size and equal EXIF
   make, model and focal length; the camera model is ``camera_model`` (COLMAP's ``SIMPLE_RADIAL`` by default).
   Photos with few features (median under :data:`FEW_KEYPOINTS`: small or low-contrast photos, renders) are
   extracted again with a lower contrast threshold (:data:`LOW_PEAK_THRESHOLD`).
3. **match** - exhaustive (every pair) or sequential (each photo with its ~10 neighbours in name order;
   for video frames or long walks) matching with geometric verification.
4. **map** - incremental mapping; the model with the most registered photos is kept, the others dropped
   (logged and listed in ``import.json``). Too few registered photos (or sparse points) is an error; a mean
   reprojection error over :data:`HIGH_REPROJECTION_ERROR` px gets a warning (a likely wrong model).
5. **undistort** - COLMAP undistorts every registered photo to a ``PINHOLE`` camera, keeping the
   principal point at the image centre (the mapper never refines it), cropped to valid pixels.
6. **write** - the scene. LLFF ``poses_bounds.npy`` stores one focal and a centred principal point, and
   SPEC §1 wants one image size, so each undistorted photo is resampled (one Lanczos step, from a
   sub-pixel crop box) to the common size ``W x H``: the box is centred on the photo's principal point
   (so after the crop it sits exactly at ``(W/2, H/2)``), has the common field-of-view aspect ratio (the
   median over the photos, weighted by count: with portrait and landscape photos mixed, the minority is
   cropped) and its height/width ratio makes the pixels square (``fx == fy``). ``H`` is the median box
   height over the photos (so with one camera nothing is scaled; with mixed sizes the minority is
   scaled to the majority's size), then capped by ``max_image_size``.
   When a photo's box is its whole frame at the common size (one camera, the usual case) the undistorted
   file is copied unchanged.

COLMAP runs in a child process (:class:`_Worker`): Ctrl-C kills it at once (a cancelled pycolmap call returns
before COLMAP's own threads stop), and a crash inside COLMAP becomes a one-line error. Its log goes to a
file in the work folder, or to the terminal when ``ovs3d`` logs at DEBUG.

Scene folder written (built in a hidden sibling folder and renamed into place at the end, so it is
complete or absent; the COLMAP database and work files live inside it and go before the rename)::

    SCENE/images/<name>               registered photos, original file names (non-PNG/JPEG formats -> .png)
    SCENE/poses_bounds.npy            LLFF, rows in sorted name order, per-view focal and near/far
    SCENE/transforms.json             nerfstudio (OpenGL c2w), per-frame intrinsics and near_far
    SCENE/segmentations/classes.txt   the ``classes`` given (no masks)
    SCENE/sparse/points3D.ply         COLMAP's sparse points, binary PLY ``x y z red green blue``
    SCENE/colmap/sparse/0/*.bin       the COLMAP model matching images/ exactly (PINHOLE cameras at W x H,
                                      keypoints in the written images' pixels), e.g. for 3D Gaussian splatting
    SCENE/colmap/import.json          stage timings, registered/dropped photos, options, pycolmap version

Poses, points and model are all in COLMAP's world frame (arbitrary scale and orientation), unchanged: the
loader normalises the world itself, and ``ovs3d export`` writes in this frame. Near/far bounds follow LLFF's
``imgs2poses``: the 0.1th and 99.9th percentiles of the depths (along the optical axis) of the sparse
points each view observes (:func:`llff_bounds`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps

from ovs3d.errors import OVS3DError
from ovs3d.io.loader import write_poses_bounds, write_transforms_json
from ovs3d.utils.console import Work, note, progress
from ovs3d.utils.console import stage as console_stage
from ovs3d.utils.files import owner_tag, remove_stale_temps

logger = logging.getLogger(__name__)

__all__ = [
    "CAMERA_MODELS",
    "INSTALL_HINT",
    "PHOTO_SUFFIXES",
    "compare_poses",
    "import_scene",
    "llff_bounds",
    "umeyama",
]

INSTALL_HINT = "`ovs3d import` needs pycolmap: pip install 'ovs3d[colmap]'"
"""The one line raised when pycolmap is missing."""
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
"""Photo formats read from ``--images`` (case-insensitive); the last four are written as ``.png``."""
_SCENE_SUFFIXES = (".png", ".jpg", ".jpeg")
CAMERA_MODELS = (
    "SIMPLE_RADIAL",
    "RADIAL",
    "SIMPLE_PINHOLE",
    "PINHOLE",
    "OPENCV",
    "FULL_OPENCV",
    "FOV",
    "SIMPLE_DIVISION",
    "DIVISION",
    "SIMPLE_FISHEYE",
    "FISHEYE",
    "SIMPLE_RADIAL_FISHEYE",
    "RADIAL_FISHEYE",
    "OPENCV_FISHEYE",
    "THIN_PRISM_FISHEYE",
    "RAD_TAN_THIN_PRISM_FISHEYE",
    "EUCM",
)
"""COLMAP camera models ``camera_model`` may name (all undistort to a pinhole; some need pycolmap >= 3.12)."""
MIN_REGISTERED_VIEWS = 3
"""Fewer registered photos than this is always an error."""
MIN_POINTS = 20
"""Fewer sparse points than this (too few for depth bounds) is an error."""
SIFT_MAX_IMAGE_SIZE = 3200
"""COLMAP's default cap on the longest side for feature extraction (keypoints are rescaled to full size)."""
FEW_KEYPOINTS = 1000
"""Below this median number of SIFT features per photo (small or low-contrast photos; COLMAP's defaults are
tuned for photos with thousands), features are extracted again with :data:`LOW_PEAK_THRESHOLD`."""
DEFAULT_PEAK_THRESHOLD = 0.02 / 3
"""COLMAP's default SIFT contrast threshold."""
LOW_PEAK_THRESHOLD = 0.002
"""SIFT's difference-of-Gaussians contrast threshold for feature-poor photos."""
HIGH_REPROJECTION_ERROR = 1.0
"""A mean reprojection error above this (pixels) gets a warning: good reconstructions stay well under it."""
JPEG_QUALITY = 95
"""Quality of the JPEG files this module writes (photos given as JPEG stay JPEG)."""
_EXTRACT_CHUNKS = 20
"""Feature extraction runs in about this many calls, so a progress bar can advance."""
_EXIF_MAKE, _EXIF_MODEL, _EXIF_IFD, _EXIF_FOCAL = 0x010F, 0x0110, 0x8769, 0x920A


# ---------------------------------------------------------------------------------------------------
# public API


def _remove_abandoned_imports(out: Path) -> None:
    """Delete the temporary folders of imports into ``out`` whose process (of this machine) is gone: what a
    hard kill (SIGKILL, a crash) left; an interrupted import removes its own."""
    if removed := remove_stale_temps(out.parent, pattern=f".{out.name}.import.tmp-*"):
        note(f"removed {removed} temporary folder(s) of an import into {out.name} that was killed outright")


def import_scene(
    images: str | Path,
    out: str | Path,
    classes: list[str] | None = None,
    matcher: Literal["exhaustive", "sequential"] = "exhaustive",
    camera_model: str = "SIMPLE_RADIAL",
    max_image_size: int | None = None,
    num_threads: int = -1,
    min_registered_fraction: float = 0.5,
    seed: int = 0,
) -> Path:
    """Estimate camera poses for a folder of photos with COLMAP and write a SPEC §1 scene folder.

    See the module docstring for the stages and the files written.

    Args:
        images: folder holding the photos (``.png``, ``.jpg``, ``.jpeg``, ``.tif``, ``.tiff``, ``.bmp``,
            ``.webp``; other files are ignored; sub-folders are not searched).
        out: the scene folder to create; must not exist or be empty.
        classes: text labels written to ``segmentations/classes.txt`` (one per line), or None for none.
        matcher: ``"exhaustive"`` matches every pair of photos (best for up to a few hundred unordered
            photos); ``"sequential"`` matches each photo with its neighbours in file-name order (video
            frames, walks through a room).
        camera_model: COLMAP camera model estimated per camera group (``SIMPLE_RADIAL``, ``OPENCV``,
            ``SIMPLE_PINHOLE``, ``OPENCV_FISHEYE``, ...); the written images are always undistorted pinhole.
        max_image_size: cap on the longest side of the written images (None: the median undistorted
            photo's size). Features are always extracted at up to :data:`SIFT_MAX_IMAGE_SIZE`.
        num_threads: CPU threads for COLMAP (-1: all cores).
        min_registered_fraction: fail when COLMAP registers fewer than this share of the photos.
        seed: random seed of COLMAP's RANSAC and mapper (runs repeat exactly with ``num_threads=1`` only).

    Returns:
        ``out``.

    Raises:
        OVS3DError: missing folder, no photos, unreadable or duplicate photos, ``out`` not empty, bad
            classes or options, pycolmap missing, COLMAP failing or registering too few photos.
    """
    images = Path(images)
    out = Path(out)
    if matcher not in ("exhaustive", "sequential"):
        raise OVS3DError(f"unknown matcher {matcher!r}: use 'exhaustive' or 'sequential'")
    if max_image_size is not None and max_image_size < 16:
        raise OVS3DError(f"max_image_size={max_image_size} is too small: use at least 16 pixels (or leave it unset)")
    if not 0.0 <= min_registered_fraction <= 1.0:
        raise OVS3DError(f"min_registered_fraction={min_registered_fraction} must be in [0, 1]")
    camera_model = str(camera_model).upper()
    if camera_model not in CAMERA_MODELS:
        raise OVS3DError(f"unknown COLMAP camera model {camera_model!r}; choose one of: {', '.join(CAMERA_MODELS)}")
    labels = _check_classes(classes)
    _check_out(out)
    photos = _list_photos(images)
    pycolmap = _require_pycolmap()

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_imports(out)
    # named after this process, so that what a hard kill leaves is found (and removed) by the next import
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.import.tmp-{owner_tag()}-", dir=out.parent))
    done = False
    run = _Importer(pycolmap, tmp / ".work", num_threads=num_threads, seed=seed)
    try:
        run.work.mkdir()
        staged = run.stage(photos)
        run.extract(staged, camera_model)
        run.match(matcher, len(staged))
        model = run.map(staged, matcher, min_registered_fraction)
        und = run.undistort(model)
        run.close()
        info = {
            "images": str(images),
            "matcher": matcher,
            "camera_model": camera_model,
            "max_image_size": max_image_size,
            "num_threads": num_threads,
            "min_registered_fraction": min_registered_fraction,
            "seed": seed,
        }
        run.write(und, tmp, labels, max_image_size, info=info)
        shutil.rmtree(run.work)
        _check_out(out)  # nothing appeared meanwhile
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
        done = True
    finally:
        run.close()  # kills COLMAP if it is still running (error, Ctrl-C)
        if not done:
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("imported %d photos into %s", len(run.registered), out)
    return out


def llff_bounds(
    points_world: np.ndarray,
    c2w: np.ndarray,
    visibility: np.ndarray | Sequence[np.ndarray],
    min_points: int = 1,
) -> np.ndarray:
    """Per-view near/far depth bounds from sparse points, as LLFF's ``imgs2poses``.

    For view ``i`` the depths ``z = (p - o_i) · a_i`` (``o_i`` the camera centre, ``a_i`` its optical axis)
    of the points it observes give ``near = percentile(z, 0.1)`` and ``far = percentile(z, 99.9)``. Unlike
    LLFF, depths ``<= 0`` (points behind the camera, which a view cannot truly observe) are ignored, and a
    view observing fewer than ``min_points`` points in front of it falls back to the depths of all points in
    front of it, then to the median bounds of the other views.

    Args:
        points_world: ``[P, 3]`` points in the world frame.
        c2w: ``[N, 3, 4]`` OpenCV camera-to-world (``+z`` = optical axis).
        visibility: ``[P, N]`` bool, ``True`` where view ``n`` observes point ``p`` (LLFF's ``vis_arr``), or
            a sequence of ``N`` integer arrays of the point indices each view observes.
        min_points: fewest observed points in front of a view for its own bounds.

    Returns:
        ``[N, 2]`` float64 ``(near, far)`` with ``0 < near < far``.

    Raises:
        ValueError: shapes that do not match, or no view has any point in front of it.
    """
    pts = np.asarray(points_world, dtype=np.float64).reshape(-1, 3)
    c2w = np.asarray(c2w, dtype=np.float64)
    n = c2w.shape[0]
    if c2w.shape[1:] != (3, 4):
        raise ValueError(f"c2w must be [N, 3, 4], got {c2w.shape}")
    if isinstance(visibility, np.ndarray) and visibility.dtype == bool:
        if visibility.shape != (len(pts), n):
            raise ValueError(f"visibility must be [P={len(pts)}, N={n}], got {visibility.shape}")
        seen = [np.flatnonzero(visibility[:, i]) for i in range(n)]
    else:
        seen = [np.asarray(v, dtype=np.int64).reshape(-1) for v in visibility]
        if len(seen) != n:
            raise ValueError(f"visibility lists {len(seen)} views but c2w has {n}")
    bounds = np.full((n, 2), np.nan)
    for i in range(n):
        z_all = (pts - c2w[i, :, 3]) @ c2w[i, :, 2]
        z = z_all[seen[i]]
        z = z[z > 0]
        if z.size < max(min_points, 1):
            z = z_all[z_all > 0]
            if z.size:
                logger.warning(
                    "view %d observes %d points: its near/far bounds use all points in front of it", i, z.size
                )
        if z.size:
            near, far = np.percentile(z, 0.1), np.percentile(z, 99.9)
            if far <= near:
                far = near * 1.01 + 1e-9
            bounds[i] = near, far
    ok = np.isfinite(bounds).all(1)
    if not ok.any():
        raise ValueError("no view has any point in front of it: cannot estimate depth bounds")
    if not ok.all():
        bounds[~ok] = np.median(bounds[ok], axis=0)
    return bounds


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``dst ≈ s R src + t`` (Umeyama 1991).

    Args:
        src: ``[N, 3]`` points.
        dst: ``[N, 3]`` corresponding points, ``N >= 3`` not collinear.

    Returns:
        ``s`` (scale), ``R`` ``[3, 3]`` (proper rotation) and ``t`` ``[3]``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    var_s = (xs**2).sum() / len(src)
    cov = xd.T @ xs / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2, 2] = -1.0
    rot = u @ sign @ vt
    scale = float(np.trace(np.diag(d) @ sign) / var_s) if var_s > 0 else 1.0
    return scale, rot, mu_d - scale * rot @ mu_s


def compare_poses(c2w_est: np.ndarray, c2w_ref: np.ndarray) -> dict[str, Any]:
    """Align estimated cameras to reference ones (a similarity) and measure the pose errors.

    The similarity ``x_ref ≈ s R x_est + t`` is Umeyama's on the camera centres. With a small, nearly planar
    camera path (a forward-facing capture) the centres pin the alignment's rotation down poorly, so the
    per-view rotation errors are also given after the rotation that best aligns the orientations themselves
    (the chordal L2 mean of ``R_ref,i R_est,iᵀ``), and alignment-free as the errors of the relative rotations
    of every pair of views.

    Args:
        c2w_est: ``[N, 3, 4]`` estimated OpenCV camera-to-world (any world frame and scale), ``N >= 3``.
        c2w_ref: ``[N, 3, 4]`` reference OpenCV camera-to-world, same views in the same order.

    Returns:
        A dict with ``"scale"``, ``"rotation"`` ``[3, 3]`` and ``"translation"`` ``[3]`` (Umeyama on the
        centres), ``"center_err"`` ``[N]`` (centre distances after it, reference units), ``"rot_err_deg"``
        ``[N]`` (``angle(R_refᵀ R R_est)`` with its rotation), ``"rot_err_deg_aligned"`` ``[N]`` (the same
        with the orientation-averaged rotation) and ``"rel_rot_err_deg"`` ``[N (N - 1) / 2]`` (pairwise).
    """
    est = np.asarray(c2w_est, dtype=np.float64)
    ref = np.asarray(c2w_ref, dtype=np.float64)
    r_est, r_ref = est[:, :, :3], ref[:, :, :3]
    s, rot, t = umeyama(est[:, :, 3], ref[:, :, 3])
    centers = s * est[:, :, 3] @ rot.T + t
    u, _, vt = np.linalg.svd((r_ref @ np.swapaxes(r_est, 1, 2)).sum(0))
    rot_avg = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt
    i, j = np.triu_indices(len(est), k=1)
    rel_est = np.swapaxes(r_est[i], 1, 2) @ r_est[j]
    rel_ref = np.swapaxes(r_ref[i], 1, 2) @ r_ref[j]
    return {
        "scale": s,
        "rotation": rot,
        "translation": t,
        "center_err": np.linalg.norm(centers - ref[:, :, 3], axis=1),
        "rot_err_deg": _angle_deg(np.swapaxes(r_ref, 1, 2) @ rot[None] @ r_est),
        "rot_err_deg_aligned": _angle_deg(np.swapaxes(r_ref, 1, 2) @ rot_avg[None] @ r_est),
        "rel_rot_err_deg": _angle_deg(np.swapaxes(rel_ref, 1, 2) @ rel_est),
    }


def _angle_deg(rot: np.ndarray) -> np.ndarray:
    """Rotation angles in degrees of ``[..., 3, 3]`` rotations."""
    cos = np.clip((np.trace(rot, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    return np.degrees(np.arccos(cos))


# ---------------------------------------------------------------------------------------------------
# input checks


def _require_pycolmap() -> Any:
    try:
        import pycolmap
    except ImportError as e:
        raise OVS3DError(INSTALL_HINT) from e
    return pycolmap


def _check_out(out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise OVS3DError(f"{out} exists and is not a folder: choose a new --out path")
        if any(out.iterdir()):
            raise OVS3DError(f"{out} exists and is not empty: choose a new --out path or remove it")


def _check_classes(classes: list[str] | None) -> list[str]:
    if classes is None:
        return []
    if isinstance(classes, str):
        classes = [classes]
    labels = []
    for c in classes:
        label = " ".join(str(c).split())
        if not label:
            raise OVS3DError("an empty class name was given: pass non-empty text labels with --classes")
        if "/" in label or "\\" in label:
            raise OVS3DError(f"class {label!r} holds a path separator: masks are saved as <label>.png, drop it")
        if label in labels:
            raise OVS3DError(f"class {label!r} was given twice: list each label once")
        labels.append(label)
    return labels


def _list_photos(folder: Path) -> list[Path]:
    if not folder.exists():
        raise OVS3DError(f"photo folder {folder} does not exist: check the --images path")
    if not folder.is_dir():
        raise OVS3DError(f"{folder} is not a folder: pass the folder that holds the photos with --images")
    paths = sorted(
        (
            p
            for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES and not p.name.startswith(".")
        ),
        key=lambda p: p.name,
    )
    if not paths:
        raise OVS3DError(f"no photos in {folder}: put the photos ({', '.join(PHOTO_SUFFIXES)}) directly in it")
    if len(paths) < MIN_REGISTERED_VIEWS:
        raise OVS3DError(f"{folder} holds {len(paths)} photos: COLMAP needs at least {MIN_REGISTERED_VIEWS}")
    return paths


def _scene_name(path: Path) -> str:
    return path.name if path.suffix.lower() in _SCENE_SUFFIXES else path.stem + ".png"


# ---------------------------------------------------------------------------------------------------
# the stages


@dataclass
class _Staged:
    """One photo in the work folder, under its scene name."""

    name: str
    source: Path
    size: tuple[int, int]
    group: tuple
    transposed: bool


@dataclass
class _Importer:
    """The stages of one import; ``work`` is the work folder (inside the scene's temporary folder)."""

    pycolmap: Any
    work: Path
    num_threads: int = -1
    seed: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    registered: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    n_photos: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    worker: _Worker | None = None

    @property
    def input_dir(self) -> Path:
        return self.work / "input"

    @property
    def database(self) -> Path:
        return self.work / "database.db"

    @contextlib.contextmanager
    def _stage(self, name: str, what: str) -> Iterator[None]:
        t0 = time.perf_counter()
        with console_stage(what):
            yield
        self.timings[name] = time.perf_counter() - t0

    def _call(self, op: str, stage: str, on_progress: Callable[[dict], None] | None = None, **kwargs: Any) -> Any:
        if self.worker is None:
            self.worker = _Worker(self.work / "colmap.log", verbose=logger.isEnabledFor(logging.DEBUG))
        return self.worker.call(op, stage, on_progress, **kwargs)

    def close(self) -> None:
        """Let the COLMAP worker process exit (a call interrupted by an exception has killed it already)."""
        if self.worker is not None:
            self.worker.close()
            self.worker = None

    # --- 1. read and stage ---------------------------------------------------------------------

    def stage(self, photos: list[Path]) -> list[_Staged]:
        self.input_dir.mkdir(parents=True)
        self.n_photos = len(photos)
        names: dict[str, Path] = {}
        for p in photos:
            name = _scene_name(p)
            if name in names:
                raise OVS3DError(f"photos {names[name].name} and {p.name} would both be saved as {name}: rename one")
            names[name] = p
        staged: list[_Staged] = []
        digests: dict[str, str] = {}
        with self._stage("read", f"reading {len(photos)} photos"):
            for name, path in progress(list(names.items()), "reading photos", work=Work("photos")):
                item, digest = _stage_photo(path, self.input_dir / name)
                if digest in digests:
                    raise OVS3DError(
                        f"photos {digests[digest]} and {path.name} are identical: remove one of them from {path.parent}"
                    )
                digests[digest] = path.name
                staged.append(item)
        n_rot = sum(s.transposed for s in staged)
        if n_rot:
            logger.info("applied the EXIF orientation of %d photos", n_rot)
        return sorted(staged, key=lambda s: s.name)

    # --- 2. features ---------------------------------------------------------------------------

    def extract(self, staged: list[_Staged], camera_model: str) -> None:
        groups: dict[tuple, list[str]] = {}
        for s in staged:
            groups.setdefault(s.group, []).append(s.name)
        self.stats["camera_groups"] = len(groups)
        db, images = str(self.database), str(self.input_dir)
        with self._stage("extract", f"extracting SIFT features ({len(groups)} camera group(s), {camera_model})"):
            for names in groups.values():  # one shared camera per group
                self._call("import_images", "import", database=db, images=images, names=names, model=camera_model)
            names = [s.name for s in staged]
            step = max(1, math.ceil(len(names) / _EXTRACT_CHUNKS))
            chunks = [names[i : i + step] for i in range(0, len(names), step)]
            peak: float | None = None
            while True:
                for chunk in progress(chunks, "extracting features", work=Work("photos", [len(c) for c in chunks])):
                    self._call(
                        "extract",
                        "feature extraction",
                        database=db,
                        images=images,
                        names=chunk,
                        model=camera_model,
                        num_threads=self.num_threads,
                        max_image_size=SIFT_MAX_IMAGE_SIZE,
                        peak_threshold=peak,
                    )
                counts = self._call("keypoint_counts", "feature extraction", database=db)
                median = float(np.median(counts)) if counts else 0.0
                if peak is not None or median >= FEW_KEYPOINTS:
                    break
                peak = LOW_PEAK_THRESHOLD
                logger.info(
                    "the photos have few SIFT features (median %d): extracting again with a lower contrast "
                    "threshold (%g instead of COLMAP's %g)",
                    median,
                    peak,
                    DEFAULT_PEAK_THRESHOLD,
                )
                self._call("clear_features", "feature extraction", database=db)
            self.stats.update(
                keypoints_median=median,
                keypoints_min=int(min(counts, default=0)),
                sift_peak_threshold=DEFAULT_PEAK_THRESHOLD if peak is None else peak,
            )

    # --- 3. matching ---------------------------------------------------------------------------

    def match(self, matcher: str, n: int) -> None:
        what = f"matching ({matcher}, {n * (n - 1) // 2 if matcher == 'exhaustive' else 'neighbouring'} pairs)"
        with self._stage("match", what):
            self.stats["verified_pairs"] = self._call(
                "match", "matching", database=str(self.database), matcher=matcher, num_threads=self.num_threads
            )

    # --- 4. mapping ----------------------------------------------------------------------------

    def map(self, staged: list[_Staged], matcher: str, min_fraction: float) -> Path:
        n = len(staged)
        out = self.work / "sparse"
        out.mkdir()
        next_log = [0.25]

        def on_progress(msg: dict) -> None:
            k = int(msg.get("registered", 0))
            if k >= next_log[0] * n:
                note(f"mapping: {min(k, n)}/{n} photos registered so far")
                next_log[0] += 0.25

        with self._stage("map", f"incremental mapping of {n} photos"):
            models = self._call(
                "map",
                "mapping",
                on_progress,
                database=str(self.database),
                images=str(self.input_dir),
                output=str(out),
                num_threads=self.num_threads,
                seed=self.seed,
                min_model_size=MIN_REGISTERED_VIEWS,
            )
        best = max(models, key=lambda m: (m["num_reg_images"], m["num_points3D"]), default=None)
        n_reg = 0 if best is None else int(best["num_reg_images"])
        n_points = 0 if best is None else int(best["num_points3D"])
        need = max(MIN_REGISTERED_VIEWS, math.ceil(min_fraction * n))
        if n_reg < need or n_points < MIN_POINTS:
            if matcher == "sequential":
                hint = "try --matcher exhaustive, more overlap between photos, or more texture"
            else:
                hint = "try more overlap between photos or more texture"
            few = f" with {n_points} sparse points" if n_points < MIN_POINTS and n_reg >= need else ""
            raise OVS3DError(f"COLMAP registered {n_reg} of {n} images{few}; {hint}")
        assert best is not None
        names = {s.name for s in staged}
        self.registered = sorted(best["registered"])
        self.dropped = sorted(names - set(self.registered))
        self.stats.update(
            models=len(models),
            points3D=n_points,
            mean_reprojection_error=float(best["mean_reprojection_error"]),
            mean_track_length=float(best["mean_track_length"]),
        )
        logger.info(
            "COLMAP registered %d of %d photos (%d sparse points, reprojection error %.2f px, %d model(s))",
            n_reg,
            n,
            n_points,
            self.stats["mean_reprojection_error"],
            len(models),
        )
        if self.stats["mean_reprojection_error"] > HIGH_REPROJECTION_ERROR:
            logger.warning(
                "COLMAP's mean reprojection error is %.2f px: the poses may be inaccurate (repetitive or little "
                "texture?); check the scene before fitting",
                self.stats["mean_reprojection_error"],
            )
        if self.dropped:
            shown = ", ".join(self.dropped[:10]) + (
                f" and {len(self.dropped) - 10} more" if len(self.dropped) > 10 else ""
            )
            logger.warning("%d photos were not registered and are left out of the scene: %s", len(self.dropped), shown)
        return Path(best["path"])

    # --- 5. undistortion -----------------------------------------------------------------------

    def undistort(self, model_dir: Path) -> Path:
        out = self.work / "undistorted"
        with self._stage("undistort", f"undistorting {len(self.registered)} photos to a pinhole camera"):
            self._call(
                "undistort",
                "undistortion",
                output=str(out),
                model=str(model_dir),
                images=str(self.input_dir),
                names=self.registered,
                num_threads=self.num_threads,
                jpeg_quality=JPEG_QUALITY,
            )
        return out

    # --- 6. writing ----------------------------------------------------------------------------

    def write(self, und: Path, dest: Path, labels: list[str], max_image_size: int | None, info: dict) -> None:
        pc = self.pycolmap
        with self._stage("write", f"writing the scene ({len(self.registered)} views)"):
            rec = pc.Reconstruction(str(und / "sparse"))
            by_name = {im.name: im for im in rec.images.values()}
            missing = [n for n in self.registered if n not in by_name]
            if missing:
                raise OVS3DError(f"COLMAP undistortion lost {missing[0]}: re-run the import")
            views = [by_name[n] for n in self.registered]
            cams = {cid: _pinhole(cam) for cid, cam in rec.cameras.items()}
            frame = _common_frame(cams, [im.camera_id for im in views], max_image_size)
            width, height = frame.width, frame.height

            img_dir = dest / "images"
            img_dir.mkdir()
            copied = 0
            for im in progress(views, "writing images", work=Work("images")):
                copied += _write_view(und / "images" / im.name, img_dir / im.name, frame.boxes[im.camera_id], frame)

            c2w = np.stack([_c2w(im) for im in views])
            focal = np.array([frame.focal[im.camera_id] for im in views])
            intr = np.stack([focal, focal, np.full_like(focal, width / 2), np.full_like(focal, height / 2)], -1)

            point_ids = np.array(sorted(rec.points3D.keys()), dtype=np.int64)
            xyz = np.array([rec.points3D[int(i)].xyz for i in point_ids], dtype=np.float64).reshape(-1, 3)
            rgb = np.array([rec.points3D[int(i)].color for i in point_ids], dtype=np.uint8).reshape(-1, 3)
            row = {int(pid): k for k, pid in enumerate(point_ids)}
            seen = [
                np.array([row[int(p.point3D_id)] for p in im.points2D if p.has_point3D()], dtype=np.int64)
                for im in views
            ]
            try:
                near_far = llff_bounds(xyz, c2w, seen)
            except ValueError as e:
                raise OVS3DError(f"COLMAP's reconstruction is degenerate ({e}); try more overlap between photos") from e

            write_poses_bounds(dest / "poses_bounds.npy", c2w, width, height, focal, near_far)
            write_transforms_json(
                dest / "transforms.json", c2w, intr, width, height, [f"images/{n}" for n in self.registered], near_far
            )
            if labels:
                (dest / "segmentations").mkdir()
                (dest / "segmentations" / "classes.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
            _write_points_ply(dest / "sparse" / "points3D.ply", xyz, rgb)
            _adjust_model(pc, rec, frame)
            model_dir = dest / "colmap" / "sparse" / "0"
            model_dir.mkdir(parents=True)
            rec.write(str(model_dir))

            self.stats.update(
                width=width,
                height=height,
                focal_median=float(np.median(focal)),
                principal_point_offset_px=frame.pp_offset,
                kept_area_fraction=frame.kept_area,
                images_copied_unchanged=copied,
                near_far_median=np.median(near_far, axis=0).tolist(),
            )
        report = {
            "pycolmap": getattr(pc, "__version__", "?"),
            "colmap": str(getattr(pc, "COLMAP_version", "?")),
            "options": info,
            "n_photos": self.n_photos,
            "registered": self.registered,
            "dropped": self.dropped,
            "timings_s": self.timings,
            **self.stats,
        }
        (dest / "colmap" / "import.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------
# the COLMAP worker process


class _Worker:
    """A child Python process that makes the pycolmap calls, one JSON request per line on its stdin.

    COLMAP runs in its own process because (1) cancelling a pycolmap call returns before COLMAP's own threads
    stop (they go on reading and writing files, and crash once the work folder is gone), so Ctrl-C must kill
    COLMAP outright, and (2) a crash inside COLMAP must not take the caller's process down. The child
    ignores SIGINT; the parent kills it on any exception and cleans up. COLMAP's log (glog) goes to
    ``log_path`` (to the terminal when ``verbose``); a crash is reported with the log's last line.
    """

    def __init__(self, log_path: Path, verbose: bool = False) -> None:
        import ovs3d

        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        env = dict(os.environ)
        root = str(Path(ovs3d.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        env["OVS3D_COLMAP_VERBOSE"] = "1" if verbose else "0"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from ovs3d.io.colmap import _worker_main; _worker_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None if verbose else self._log,
            env=env,
        )

    def call(self, op: str, stage: str, on_progress: Callable[[dict], None] | None = None, **kwargs: Any) -> Any:
        """Run ``op`` in the child and return its result; progress messages go to ``on_progress``."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write((json.dumps({"op": op, "kwargs": kwargs}) + "\n").encode())
            self.proc.stdin.flush()
            while True:
                line = self.proc.stdout.readline()
                if not line:
                    raise OVS3DError(self._crash_message(stage))
                msg = json.loads(line)
                if "progress" in msg:
                    if on_progress is not None:
                        on_progress(msg["progress"])
                    continue
                if "error" in msg:
                    raise OVS3DError(f"COLMAP {stage} failed: {msg['error']}")
                return msg.get("result")
        except BrokenPipeError:
            raise OVS3DError(self._crash_message(stage)) from None
        except BaseException:
            self.kill()
            raise

    def _crash_message(self, stage: str) -> str:
        code = self.proc.wait()
        last = ""
        with contextlib.suppress(OSError):
            self._log.flush()
            lines = [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
            last = f": {lines[-1][:300]}" if lines else ""
        return f"COLMAP crashed during {stage} (exit code {code}){last}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        """Ask the child to exit (kill it when it does not within a few seconds)."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        for f in (self.proc.stdout, self.proc.stdin):
            if f is not None:
                with contextlib.suppress(OSError, ValueError):
                    f.close()
        self._log.close()


def _worker_main() -> None:
    """Entry point of the COLMAP worker process (see :class:`_Worker`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it kills this process
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed goes to the log, not into the protocol
    import pycolmap

    verbose = os.environ.get("OVS3D_COLMAP_VERBOSE") == "1"
    if hasattr(pycolmap, "logging"):
        pycolmap.logging.minloglevel = 0 if verbose else 1

    def send(msg: dict) -> None:
        channel.write(json.dumps(msg) + "\n")

    for line in sys.stdin:
        req = json.loads(line)
        try:
            result = _OPS[req["op"]](pycolmap, send, **req["kwargs"])
        except Exception as e:  # noqa: BLE001 - reported to the parent as one line
            send({"error": _one_line(e)})
        else:
            send({"result": result})


def _op_import_images(pc: Any, send: Callable, database: str, images: str, names: list[str], model: str) -> None:
    if not Path(database).exists():
        pc.Database.open(database).close()
    reader = pc.ImageReaderOptions()
    reader.camera_model = model
    pc.import_images(database, images, camera_mode=pc.CameraMode.SINGLE, image_names=names, options=reader)


def _op_extract(
    pc: Any,
    send: Callable,
    database: str,
    images: str,
    names: list[str],
    model: str,
    num_threads: int,
    max_image_size: int,
    peak_threshold: float | None,
) -> None:
    reader = pc.ImageReaderOptions()
    reader.camera_model = model
    opts = pc.FeatureExtractionOptions()
    opts.num_threads = num_threads
    opts.max_image_size = max_image_size
    if peak_threshold is not None:
        opts.sift.peak_threshold = peak_threshold
    pc.extract_features(database, images, image_names=names, reader_options=reader, extraction_options=opts)


def _op_keypoint_counts(pc: Any, send: Callable, database: str) -> list[int]:
    db = pc.Database.open(database)
    try:
        return [int(db.num_keypoints_for_image(im.image_id)) for im in db.read_all_images()]
    finally:
        db.close()


def _op_clear_features(pc: Any, send: Callable, database: str) -> None:
    db = pc.Database.open(database)
    try:
        db.clear_descriptors()
        db.clear_keypoints()
    finally:
        db.close()


def _op_match(pc: Any, send: Callable, database: str, matcher: str, num_threads: int) -> int:
    opts = pc.FeatureMatchingOptions()
    opts.num_threads = num_threads
    if matcher == "exhaustive":
        pc.match_exhaustive(database, matching_options=opts)
    else:
        pairing = pc.SequentialPairingOptions()
        pairing.num_threads = num_threads
        pc.match_sequential(database, matching_options=opts, pairing_options=pairing)
    db = pc.Database.open(database)
    try:
        return int(db.num_verified_image_pairs())
    finally:
        db.close()


def _op_map(
    pc: Any, send: Callable, database: str, images: str, output: str, num_threads: int, seed: int, min_model_size: int
) -> list[dict]:
    opts = pc.IncrementalPipelineOptions()
    opts.num_threads = num_threads
    opts.random_seed = seed
    opts.min_model_size = min_model_size
    opts.extract_colors = True
    count = [0]

    def on_image() -> None:
        count[0] += 1
        send({"progress": {"registered": count[0]}})

    pc.set_random_seed(seed)
    models = pc.incremental_mapping(database, images, output, options=opts, next_image_callback=on_image)
    summary = []
    for k, rec in sorted(dict(models or {}).items()):
        path = Path(output) / str(k)
        path.mkdir(parents=True, exist_ok=True)
        rec.write(str(path))
        summary.append(
            {
                "path": str(path),
                "num_reg_images": int(rec.num_reg_images()),
                "num_points3D": int(rec.num_points3D()),
                "registered": sorted(rec.images[i].name for i in rec.reg_image_ids()),
                "mean_reprojection_error": float(rec.compute_mean_reprojection_error()),
                "mean_track_length": float(rec.compute_mean_track_length()),
            }
        )
    return summary


def _op_undistort(
    pc: Any,
    send: Callable,
    output: str,
    model: str,
    images: str,
    names: list[str],
    num_threads: int,
    jpeg_quality: int,
) -> None:
    pc.undistort_images(
        output,
        model,
        images,
        image_names=names,
        output_type="COLMAP",
        jpeg_quality=jpeg_quality,
        num_threads=num_threads,
    )


_OPS: dict[str, Callable[..., Any]] = {
    "import_images": _op_import_images,
    "extract": _op_extract,
    "keypoint_counts": _op_keypoint_counts,
    "clear_features": _op_clear_features,
    "match": _op_match,
    "map": _op_map,
    "undistort": _op_undistort,
}


# ---------------------------------------------------------------------------------------------------
# helpers


def _stage_photo(src: Path, dst: Path) -> tuple[_Staged, str]:
    """Decode ``src``, apply its EXIF orientation and put it at ``dst``; return it and its pixel digest."""
    try:
        with Image.open(src) as im:
            im.load()
            exif = im.getexif()
            orientation = int(exif.get(0x0112, 1) or 1)
            fixed = ImageOps.exif_transpose(im)
            mode = im.mode
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
        raise OVS3DError(f"cannot read photo {src} ({_one_line(e)}): replace or remove the file") from e
    try:
        focal = exif.get_ifd(_EXIF_IFD).get(_EXIF_FOCAL)
    except Exception:  # noqa: BLE001 - a broken EXIF block only loses the focal hint
        focal = None
    rgb = fixed.convert("RGB")
    digest = hashlib.sha1(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()
    passthrough = orientation == 1 and mode == "RGB" and src.suffix.lower() in _SCENE_SUFFIXES
    if passthrough:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    else:
        kwargs: dict[str, Any] = {}
        if dst.suffix.lower() in (".jpg", ".jpeg"):
            kwargs = {"quality": 100, "subsampling": 0}
        if fixed.info.get("exif"):
            kwargs["exif"] = fixed.info["exif"]
        rgb.save(dst, **kwargs)
    group = (rgb.size, str(exif.get(_EXIF_MAKE, "")), str(exif.get(_EXIF_MODEL, "")), str(focal or ""))
    return _Staged(dst.name, src, rgb.size, group, transposed=orientation != 1), digest


@dataclass
class _Pinhole:
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float


def _pinhole(cam: Any) -> _Pinhole:
    p = np.asarray(cam.params, dtype=np.float64)
    if cam.model_name == "PINHOLE":
        fx, fy, cx, cy = p[:4]
    elif cam.model_name == "SIMPLE_PINHOLE":
        fx, fy, cx, cy = p[0], p[0], p[1], p[2]
    else:
        raise OVS3DError(f"COLMAP undistortion returned a {cam.model_name} camera, not a pinhole: re-run the import")
    return _Pinhole(int(cam.width), int(cam.height), float(fx), float(fy), float(cx), float(cy))


@dataclass
class _Frame:
    """The common image size and, per COLMAP camera, its crop box and output focal."""

    width: int
    height: int
    boxes: dict[int, tuple[float, float, float, float]]
    focal: dict[int, float]
    sources: dict[int, _Pinhole]
    pp_offset: float
    kept_area: float


def _common_frame(cams: dict[int, _Pinhole], view_cams: list[int], max_image_size: int | None) -> _Frame:
    """Choose the common size and, per camera, the crop box (see the module docstring, stage 6)."""
    used = sorted(set(view_cams))
    # largest box centred on the principal point, in pixels and in tangent (field-of-view) units
    half = {
        c: (min(cams[c].cx, cams[c].width - cams[c].cx), min(cams[c].cy, cams[c].height - cams[c].cy)) for c in used
    }
    for c in used:
        if min(half[c]) <= 1.0:
            raise OVS3DError(f"COLMAP placed camera {c}'s principal point at the image border: re-run the import")
    tan = {c: (half[c][0] / cams[c].fx, half[c][1] / cams[c].fy) for c in used}
    aspects = np.array([tan[view][0] / tan[view][1] for view in view_cams])
    rho = float(np.median(aspects))

    def boxes_for(rho: float) -> dict[int, tuple[float, float]]:
        out = {}
        for c in used:
            tx, ty = tan[c]
            if tx / ty > rho:
                tx = rho * ty
            else:
                ty = tx / rho
            out[c] = (tx, ty)
        return out

    tb = boxes_for(rho)
    box_h = float(np.median([2 * tb[c][1] * cams[c].fy for c in view_cams]))
    height = max(1, math.floor(box_h + 1e-6))
    width = max(1, round(height * rho))
    if max_image_size is not None and max(width, height) > max_image_size:
        s = max_image_size / max(width, height)
        height = max(1, round(height * s))
        width = max(1, round(width * s))
        width, height = min(width, max_image_size), min(height, max_image_size)
    tb = boxes_for(width / height)  # the integer size's exact aspect: fx == fy in the output
    boxes, focal = {}, {}
    kept = []
    for c in used:
        cam = cams[c]
        hw, hh = tb[c][0] * cam.fx, tb[c][1] * cam.fy
        boxes[c] = (cam.cx - hw, cam.cy - hh, cam.cx + hw, cam.cy + hh)
        focal[c] = width / (2 * tb[c][0])
        kept.append(4 * hw * hh / (cam.width * cam.height))
    offset = max(math.hypot(cams[c].cx - cams[c].width / 2, cams[c].cy - cams[c].height / 2) for c in used)
    if offset > 0.5:
        logger.info("principal points sit up to %.1f px off centre: photos are cropped to centre them", offset)
    kept_area = float(np.mean([kept[used.index(c)] for c in view_cams]))
    if kept_area < 0.99:
        logger.info(
            "cropping to one %dx%d frame keeps %.0f%% of the undistorted pixels", width, height, 100 * kept_area
        )
    return _Frame(width, height, boxes, focal, {c: cams[c] for c in used}, offset, kept_area)


def _write_view(src: Path, dst: Path, box: tuple[float, float, float, float], frame: _Frame) -> int:
    """Resample ``src`` (undistorted) from ``box`` to the common size at ``dst``; 1 when copied unchanged."""
    with Image.open(src) as im:
        im.load()
        size = im.size
        whole = (0.0, 0.0, float(size[0]), float(size[1]))
        if size == (frame.width, frame.height) and np.allclose(box, whole, atol=1e-6):
            shutil.copyfile(src, dst)
            return 1
        out = im.convert("RGB").resize((frame.width, frame.height), Image.Resampling.LANCZOS, box=box)
    kwargs = {"quality": JPEG_QUALITY} if dst.suffix.lower() in (".jpg", ".jpeg") else {}
    out.save(dst, **kwargs)
    return 0


def _adjust_model(pycolmap: Any, rec: Any, frame: _Frame) -> None:
    """Make the undistorted COLMAP model match the written images: cameras and keypoints cropped/rescaled."""
    for cid, box in frame.boxes.items():
        x0, y0, x1, y1 = box
        sx, sy = frame.width / (x1 - x0), frame.height / (y1 - y0)
        f = frame.focal[cid]
        rec.cameras[cid] = pycolmap.Camera(
            model="PINHOLE",
            width=frame.width,
            height=frame.height,
            params=[f, f, frame.width / 2, frame.height / 2],
            camera_id=cid,
        )
        if abs(sx - 1) < 1e-9 and abs(sy - 1) < 1e-9 and abs(x0) < 1e-9 and abs(y0) < 1e-9:
            continue
        for im in rec.images.values():
            if im.camera_id != cid:
                continue
            for p in im.points2D:
                x, y = p.xy
                p.xy = np.array([(x - x0) * sx, (y - y0) * sy])


def _c2w(image: Any) -> np.ndarray:
    """OpenCV camera-to-world ``[3, 4]`` of a registered COLMAP image (COLMAP's camera frame is OpenCV's)."""
    cfw = image.cam_from_world()
    rot = np.asarray(cfw.rotation.matrix(), dtype=np.float64)
    t = np.asarray(cfw.translation, dtype=np.float64).reshape(3)
    return np.concatenate([rot.T, (-rot.T @ t)[:, None]], axis=1)


def _write_points_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    from plyfile import PlyData, PlyElement

    arr = np.zeros(len(xyz), dtype=[(k, "<f4") for k in "xyz"] + [(k, "u1") for k in ("red", "green", "blue")])
    arr["x"], arr["y"], arr["z"] = np.asarray(xyz, dtype=np.float32).T.reshape(3, -1)
    arr["red"], arr["green"], arr["blue"] = np.asarray(rgb, dtype=np.uint8).T.reshape(3, -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    el = PlyElement.describe(arr, "vertex")
    PlyData([el], text=False, byte_order="<", comments=["ovs3d import: COLMAP sparse points, world = poses"]).write(
        str(path)
    )


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
