"""Writing generated scene folders safely (SPEC §1 layout).

A scene is written into a hidden temporary folder beside the destination (``.<name>.tmp-XXXX``) and
renamed into place only once every file is there, so a crash never leaves a half-written folder under
the requested name. An existing destination is replaced only when it is empty or is itself a scene
written by :mod:`ovs3d.scenegen` (recognised by ``sim/instances.json``); anything else is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ovs3d.errors import OVS3DError
from ovs3d.io.conventions import opencv_to_llff

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
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
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
