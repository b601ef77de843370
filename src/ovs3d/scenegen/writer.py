"""Writing generated scene folders safely (SPEC §1 layout).

A scene is written into a hidden temporary folder beside the destination (``.<name>.tmp-<pid>@<host>-XXXX``)
and renamed into place only once every file is there, so a crash never leaves a half-written folder under
the requested name; the next write of that scene removes a folder whose writer was killed outright. An
existing destination is replaced only when it is empty or is itself a scene written by :mod:`ovs3d.scenegen`
(recognised by ``sim/instances.json``); anything else is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ovs3d.errors import OVS3DError
from ovs3d.io.conventions import opencv_to_llff
from ovs3d.utils.files import owner_tag, remove_stale_temps

logger = logging.getLogger(__name__)

GENERATOR = "ovs3d.scenegen"
"""Value of ``"generator"`` in ``sim/instances.json`` of the scenes written here."""


def is_generated_scene(path: Path) -> bool:
    """Whether ``path`` holds a scene written by :mod:`ovs3d.scenegen` (safe to overwrite)."""
    meta = Path(path) / "sim" / "instances.json"
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("generator") == GENERATOR


MIN_IMAGE_SIDE = 16
"""Smallest image width and height a preset renders."""


def check_preset_config(config: Any, name: Callable[[str], str]) -> None:
    """What every preset's ``validate`` checks first: an image of at least :data:`MIN_IMAGE_SIDE` pixels a
    side (one line naming both flags), then every field's rule.

    Raises:
        OVS3DError: the first setting that fails (one line).
    """
    from ovs3d.utils.config import check_config

    if config.width < MIN_IMAGE_SIDE or config.height < MIN_IMAGE_SIDE:
        raise OVS3DError(
            f"image size {config.width}x{config.height} is too small: {name('width')} and {name('height')} "
            f"must be at least {MIN_IMAGE_SIDE}"
        )
    check_config(config, name=name)


def check_destination(out: Path) -> None:
    """Raise :class:`OVS3DError` if writing a scene to ``out`` would destroy something else."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise OVS3DError(f"{out} exists and is not a folder; pass another --out")
    if any(out.iterdir()) and not is_generated_scene(out):
        raise OVS3DError(
            f"{out} is not empty and is not a scene written by `ovs3d make-scene`; "
            "pass another --out or delete it first"
        )


@contextlib.contextmanager
def scene_folder(out: Path) -> Iterator[Path]:
    """Yield a temporary folder to write a scene into; on success it replaces ``out``.

    Raises:
        OVS3DError: ``out`` exists and is neither empty nor a generated scene.
    """
    out = Path(out)
    check_destination(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent, pattern=f".{out.name}.tmp-*")  # what a hard-killed earlier write left
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{owner_tag()}-", dir=out.parent))
    try:
        yield tmp
        check_destination(out)  # it may have changed while we were rendering
        if out.exists() and any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "scene")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if out.exists():
                out.rmdir()
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_png(path: Path, image: np.ndarray) -> None:
    """Write a uint8/uint16 ``[H, W]`` or ``[H, W, 3]`` array as PNG (into a temporary scene folder)."""
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, image, extension=".png")


def poses_bounds(c2w: np.ndarray, height: int, width: int, focal: float, near_far: np.ndarray) -> np.ndarray:
    """LLFF ``poses_bounds.npy`` rows from OpenCV cameras.

    Args:
        c2w: ``[N, 3, 4]`` OpenCV camera-to-world.
        height: image height ``H`` in pixels.
        width: image width ``W`` in pixels.
        focal: focal length in pixels (``fx = fy``, principal point at the image centre).
        near_far: ``[N, 2]`` per-view depth bounds.

    Returns:
        ``[N, 17]`` float64: ``[down, right, back, t | (H, W, focal)]`` flattened, then near, far.
    """
    llff = opencv_to_llff(c2w)  # [N, 3, 4]
    n = llff.shape[0]
    hwf = np.broadcast_to(np.array([height, width, focal], dtype=np.float64)[None, :, None], (n, 3, 1))
    poses = np.concatenate([llff, hwf], axis=2).reshape(n, 15)
    return np.concatenate([poses, np.asarray(near_far, dtype=np.float64)], axis=1)


def first_valid_layout(config: Any, draw: Callable[[Any, int], Any], check: Callable[[Any], str | None], what: str):
    """The first sub-seed's layout that passes ``check`` (shared by every preset).

    Args:
        config: the preset config (``seed``, ``max_layout_tries``).
        draw: ``draw(config, attempt)`` -> a scene, or None when the attempt found no room for its objects.
        check: ``check(scene)`` -> None if the layout is valid, else what is wrong.
        what: the preset's name (messages).

    Raises:
        OVS3DError: no valid layout within ``config.max_layout_tries`` sub-seeds.
    """
    problem = f"no room for the {what}'s objects"
    for attempt in range(config.max_layout_tries):
        scene = draw(config, attempt)
        if scene is None:
            continue
        problem = check(scene)
        if problem is None:
            if attempt:
                logger.debug("%s seed %d: layout %d passed", what, config.seed, attempt)
            return scene
        logger.debug("%s seed %d: layout %d rejected: %s", what, config.seed, attempt, problem)
    raise OVS3DError(
        f"no valid {what} layout for seed {config.seed} in {config.max_layout_tries} tries "
        f"(last: {problem}); try another seed, a larger image or a smaller min_size_factor"
    )


def write_scene(
    scene: Any, folder: Path, preset: str, depth_bounds: Callable[[np.ndarray], tuple[float, float]]
) -> None:
    """Render every view of a generated scene and write the SPEC §1 files into ``folder`` (empty).

    ``scene`` has ``config`` (``n_views``, ``width``, ``height``, ``seed``), ``annotated``, ``labels``
    (instance id -> label), ``classes``, ``c2w``, ``focal``, ``attempt``, ``render_ids(view)`` -> (ids, depth)
    and ``render_rgb(view)``. An annotated view gets a mask for every label (all black where it is absent).

    Args:
        scene: the scene.
        folder: destination (a temporary folder of :func:`scene_folder`).
        preset: preset name recorded in ``sim/instances.json``.
        depth_bounds: the view's ``(near, far)`` from its ``[H, W]`` depth map.
    """
    from ovs3d.utils.console import progress

    cfg = scene.config
    n = cfg.n_views
    digits = max(2, len(str(n - 1)))
    annotated = set(scene.annotated)
    by_label: dict[str, list[int]] = {}
    for iid, label in scene.labels.items():
        by_label.setdefault(label, []).append(iid)
    near_far = np.zeros((n, 2))
    for view in progress(range(n), f"rendering {preset} views"):
        name = f"{view:0{digits}d}"
        ids, depth = scene.render_ids(view)
        near_far[view] = depth_bounds(depth)
        write_png(folder / "images" / f"{name}.png", scene.render_rgb(view))
        write_png(folder / "sim" / "instances" / f"{name}.png", ids)
        if view in annotated:
            for label, iids in by_label.items():
                mask = np.isin(ids, iids).astype(np.uint8) * np.uint8(255)
                write_png(folder / "segmentations" / name / f"{label}.png", mask)
    np.save(folder / "poses_bounds.npy", poses_bounds(scene.c2w, cfg.height, cfg.width, scene.focal, near_far))
    (folder / "segmentations").mkdir(parents=True, exist_ok=True)
    (folder / "segmentations" / "classes.txt").write_text("\n".join(scene.classes) + "\n", encoding="utf-8")
    meta = {
        "labels": {str(k): v for k, v in sorted(scene.labels.items())},
        "preset": preset,
        "seed": cfg.seed,
        "sim": {},
        "generator": GENERATOR,
        "layout_attempt": scene.attempt,
        "config": dataclasses.asdict(cfg),
    }
    (folder / "sim" / "instances.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def generate_scene(
    config: Any, out: Path, build: Callable[[Any], Any], write: Callable[[Any, Path], None], preset: str
) -> Path:
    """Validate ``config``, draw the scene (``build``) and write it (``write``) atomically into ``out``.

    The scene is written into a temporary folder beside ``out`` and renamed into place at the end, so a
    failure leaves no half-written scene.

    Raises:
        OVS3DError: bad configuration, ``out`` holds something else, or no valid layout was found.
    """
    out = Path(out)
    config.validate()
    check_destination(out)
    scene = build(config)
    with scene_folder(out) as tmp:
        write(scene, tmp)
    logger.info("wrote %s scene (seed %d, %d labels) to %s", preset, config.seed, len(scene.classes), out)
    return out
