"""Atomic file writes and self-describing checkpoints.

Everything a run keeps (checkpoints, caches, metrics, images) goes through these helpers: data is written
to a temporary file in the destination folder, flushed, and renamed over the target, so a crash leaves
either the old file or the new one, never half of one.

A temporary file is named after its target and its writer (``.<name>.tmp-<pid>@<host>-<random><suffix>``):
an interrupted writer (Ctrl-C, SIGTERM) removes its own; what a hard kill (SIGKILL, a crash) leaves is
found by :func:`remove_stale_temps` once that process is gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ovs3d.errors import OVS3DError

CHECKPOINT_VERSION = 1
HOST = socket.gethostname() or "localhost"
"""This machine's name, in the names of temporary files and folders (with the writer's process id)."""
_OWNED = re.compile(r"\.tmp-(?P<pid>\d+)@")
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read, then restored: the permissions new files of this process get

logger = logging.getLogger(__name__)


def owner_tag() -> str:
    """``<pid>@<host>``: who writes a temporary file or folder (in its name)."""
    return f"{os.getpid()}@{HOST}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine is running (ours always is; unknown counts as running)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def abandoned_by(name: str) -> bool:
    """Whether a temporary name (``...tmp-<pid>@<host>-...``) names a process of this machine that is gone."""
    m = _OWNED.search(name)
    if m is None or f".tmp-{m.group('pid')}@{HOST}-" not in name:
        return False  # not ours to judge: another machine's, or not a temporary name
    return not pid_alive(int(m.group("pid")))


def remove_stale_temps(folder: str | os.PathLike, recursive: bool = False, pattern: str = ".*.tmp-*") -> int:
    """Delete the temporary files and folders that writers killed outright (SIGKILL, a crash) left in ``folder``.

    Only hidden entries whose name says they are temporary (``.tmp-<pid>@<host>-``, as :func:`atomic_path`,
    the feature cache, scene writes and imports name theirs) and whose writer process of this machine is gone
    are removed; a folder goes with everything in it.

    Args:
        folder: where to look.
        recursive: also in every folder below.
        pattern: glob of the names to consider (e.g. ``".scene.import.tmp-*"`` for one writer's folders).

    Returns:
        How many files and folders were removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    found = sorted(folder.rglob(pattern) if recursive else folder.glob(pattern))  # parents before children
    gone: list[Path] = []
    for p in found:
        if any(p.is_relative_to(g) for g in gone) or not abandoned_by(p.name):
            continue
        with contextlib.suppress(FileNotFoundError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            gone.append(p)
            removed += 1
    if removed:
        logger.info("%s: removed %d temporary file(s) or folder(s) of an interrupted run", folder, removed)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    Args:
        path: final destination.
        suffix: suffix of the temporary file (defaults to the destination's, so writers that pick a
            format from the extension, like imageio, keep working).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.tmp-{owner_tag()}-"
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix or path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # as an ordinary new file (mkstemp makes it private: 0600)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


LOCK_NAME = ".lock"
"""The file of a run folder that the process fitting it holds locked (:func:`run_lock`)."""


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) within the block.

    The lock goes with its process: a killed holder never leaves it taken. (``flock`` is per machine on
    most network filesystems.)

    Args:
        path: the lock file.
        wait: block until the lock is free; otherwise yield False at once when another process holds it.

    Yields:
        Whether the lock is held.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {owner_tag()}".encode(), 0)
        yield True
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold ``FOLDER/.lock`` while one process works in the folder.

    A second process (a re-run batch while an orphaned worker still fits, a second terminal) gets one line
    instead of writing the same checkpoints.

    Raises:
        OVS3DError: another process holds the lock.
    """
    path = Path(folder) / LOCK_NAME
    with file_lock(path, wait=False) as held:
        if not held:
            holder = path.read_text(errors="replace").strip() or "another process"
            raise OVS3DError(
                f"{folder} is being fitted by {holder}; wait for it to finish or stop it, then run this again"
            )
        yield


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (numpy scalars/arrays and paths are converted)."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def atomic_write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a uint8/uint16 image (PNG/JPG by extension) atomically.

    Args:
        path: destination; the extension picks the format.
        image: ``[H, W]`` or ``[H, W, 3|4]`` uint8 or uint16 array.
    """
    import imageio.v3 as iio

    with atomic_path(path) as tmp:
        iio.imwrite(tmp, image, extension=Path(path).suffix)


def save_checkpoint(path: str | os.PathLike, *, config: dict, step: int, state: dict, kind: str) -> None:
    """Save a self-describing checkpoint atomically.

    The file holds ``{"version", "kind", "config", "step", "state"}`` with only tensors, numbers, strings,
    lists and dicts, so it loads with ``torch.load(weights_only=True)``.

    Args:
        path: destination ``.pt`` file.
        config: the run's configuration as plain data (``dataclasses.asdict``).
        step: the training step the state belongs to.
        state: model and optimiser state (``state_dict`` results and plain data).
        kind: what the checkpoint holds (``"reconstruction"``, ``"semantic"``...).
    """
    payload = {"version": CHECKPOINT_VERSION, "kind": kind, "config": config, "step": int(step), "state": state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike, kind: str | None = None) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``, onto the CPU).

    Raises:
        OVS3DError: the file is missing, unreadable, of another version or of another kind.
    """
    path = Path(path)
    if not path.is_file():
        raise OVS3DError(f"checkpoint {path} does not exist; run `ovs3d fit` first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign file
        raise OVS3DError(f"checkpoint {path} cannot be read ({type(e).__name__}); delete it and re-run") from e
    if not isinstance(payload, dict) or payload.get("version") != CHECKPOINT_VERSION:
        raise OVS3DError(f"checkpoint {path} is not an ovs3d v{CHECKPOINT_VERSION} checkpoint; delete it and re-run")
    if kind is not None and payload.get("kind") != kind:
        raise OVS3DError(f"checkpoint {path} holds a {payload.get('kind')!r} state, expected {kind!r}")
    return payload
