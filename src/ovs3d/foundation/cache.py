"""On-disk cache of per-view foundation-model outputs (pixel CLIP features, DINO features, masks).

Layout (one *entry* per combination of model, settings and images)::

    <root>/<kind>/<key>/meta.json                 what the entry holds (see below)
    <root>/<kind>/<key>/view_00000.npy            view 0, written with np.save
    <root>/<kind>/<key>/view_00000.scale.npy      (dtype "int8" only) per-vector scales of view 0

``key`` is the first 16 hex digits of the sha256 of a canonical JSON of the kind, the model identity,
the settings dict (which must include everything that changes the output, e.g. the image resolution),
the stored dtype and, per view, the image stem, file name, size and mtime. Any change of model,
settings or image files therefore gives a new key; old entries stay until :meth:`FeatureCache.prune`.

``meta.json`` holds ``{"format", "kind", "key", "identity", "settings", "dtype", "views": [{"stem",
"shape", "files": {"data": {"file", "shape", "dtype", "size", "sha256"}, "scale": {...}}}],
"shape"}`` (``shape`` is the common per-view shape, or null when views differ).

Storage dtypes:

- ``"float16"`` (default): features as they are, in half precision (3 scales x 512 x 2 B = 3 KiB per
  pixel for pixel CLIP, half the reference's fp32).
- ``"int8"``: features L2-normalised along the last axis and quantised to int8 with one float16 scale
  per vector (~1.5 KiB per pixel); read back as float16 unit vectors (1 - cosine ~3e-5 for isotropic
  vectors, ~1e-3 when one component dominates). Use it only for features that are compared by
  direction (CLIP, DINO); the norm is lost.
- any other numpy dtype name (``"float32"``, ``"int32"``, ``"uint8"``...): a plain cast, which must be
  lossless for integer types.

Safety:

- Writing is atomic: a new entry is written into a hidden temporary folder beside the final one and
  renamed into place after ``meta.json``; a crash (or an exception from ``compute``) leaves no entry.
- Writing resumes: the temporary folder records each finished view (``partial.json``, written after every
  view). An interrupted writer (Ctrl-C, SIGTERM) renames it to ``.partial-<key>``; what a writer killed
  outright leaves is renamed so by the next open of that kind (:func:`remove_leftovers`). The
  next computation of the same entry takes the folder over and computes only the views it lacks (their
  files checked against their sizes now, against their checksums on first access). Temporary folders
  without a finished view, and ``.trash-`` folders, are removed.
- A missing or unreadable ``meta.json`` means "not cached". On every open the files' existence and
  sizes are checked against ``meta.json`` (catches truncation); the sha256 of each file is verified on
  its first access through each opened entry (or all at once with ``verify=True``). A view that fails
  either check is recomputed with a warning, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ovs3d.errors import OVS3DError
from ovs3d.utils.console import Work, note, progress
from ovs3d.utils.files import HOST, atomic_write_json, file_lock, owner_tag, pid_alive, remove_stale_temps

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
QUANTISED = "int8"
"""The dtype name that selects normalised int8 quantisation."""
_KEY_DIGITS = 16
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_PARTIAL_PREFIX = ".partial-"
_PARTIAL_FILE = "partial.json"
_TMP_NAME = re.compile(r"^\.tmp-(?P<key>[0-9a-f]+)-(?P<pid>\d+)(?:@(?P<host>.+))?-[0-9a-f]{8}$")
_QUANT_CHUNK = 1 << 16  # vectors quantised per chunk (bounds temporary memory)


class CacheCorruptError(OVS3DError):
    """A cache file does not match its checksum and cannot be recomputed here."""


def _canonical_json(obj: Any) -> str:
    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        if isinstance(o, (set, frozenset)):
            return sorted(o)
        raise TypeError(f"cache settings must be plain data, got {type(o).__name__}")

    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=default)


def image_fingerprints(views: Sequence[tuple[str, Path]]) -> list[dict]:
    """Per view ``{"stem", "name", "size", "mtime_ns"}`` of its image file (what the key depends on)."""
    out = []
    for stem, path in views:
        st = Path(path).stat()
        out.append({"stem": str(stem), "name": Path(path).name, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def cache_key(
    kind: str, identity: str, settings: dict, views: Sequence[tuple[str, Path]], dtype: str = "float16"
) -> str:
    """The entry key: 16 hex digits of the sha256 of everything the cached values depend on."""
    payload = {
        "format": FORMAT_VERSION,
        "kind": kind,
        "identity": identity,
        "settings": settings,
        "dtype": dtype,
        "views": image_fingerprints(views),
    }
    return hashlib.sha256(_canonical_json(payload).encode()).hexdigest()[:_KEY_DIGITS]


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


class _HashingWriter:
    """File-like object that forwards writes to ``f`` and hashes them (np.save writes through it)."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.h = hashlib.sha256()

    def write(self, data: bytes | memoryview) -> int:
        self.h.update(data)
        return self.f.write(data)


def _save_npy(path: Path, arr: np.ndarray) -> dict:
    """np.save ``arr`` to ``path`` (fsynced); return its file record."""
    with open(path, "wb") as f:
        w = _HashingWriter(f)
        np.save(w, np.ascontiguousarray(arr), allow_pickle=False)  # type: ignore[arg-type]
        f.flush()
        os.fsync(f.fileno())
    return {
        "file": path.name,
        "shape": list(arr.shape),
        "dtype": arr.dtype.str,
        "size": path.stat().st_size,
        "sha256": w.h.hexdigest(),
    }


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def quantise(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalise vectors along the last axis and quantise them to int8.

    Args:
        features: ``[..., D]`` float array.

    Returns:
        ``(q [..., D] int8, scale [...] float16)`` with ``unit ≈ q * scale / 127``.
    """
    x = np.asarray(features)
    d = x.shape[-1]
    flat = x.reshape(-1, d)
    q = np.empty(flat.shape, dtype=np.int8)
    scale = np.empty(flat.shape[0], dtype=np.float16)
    for i in range(0, flat.shape[0], _QUANT_CHUNK):
        v = flat[i : i + _QUANT_CHUNK].astype(np.float32)
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        m = np.abs(v).max(axis=1, keepdims=True)  # [n, 1]
        q[i : i + _QUANT_CHUNK] = np.rint(v * (127.0 / np.maximum(m, 1e-12))).astype(np.int8)
        scale[i : i + _QUANT_CHUNK] = m[:, 0]
    return q.reshape(x.shape), scale.reshape(x.shape[:-1])


def dequantise(q: np.ndarray, scale: np.ndarray, dtype: Any = np.float16) -> np.ndarray:
    """Inverse of :func:`quantise`: ``[..., D]`` unit vectors (up to quantisation error)."""
    out = q.astype(np.float32)
    out *= (np.asarray(scale, dtype=np.float32) / 127.0)[..., None]
    return out.astype(dtype, copy=False)


def _encode(arr: np.ndarray, dtype: str) -> dict[str, np.ndarray]:
    """Arrays to store for one view: ``{"data": ..., ["scale": ...]}``."""
    arr = np.asarray(arr)
    if dtype == QUANTISED:
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"dtype 'int8' quantises float features, got {arr.dtype}")
        q, scale = quantise(arr)
        return {"data": q, "scale": scale}
    target = np.dtype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(target, copy=False)
    if np.issubdtype(target, np.floating):
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(out).all():
            raise ValueError(f"features do not fit {dtype} (non-finite values after the cast)")
    elif not np.array_equal(out, arr):
        raise ValueError(f"values of dtype {arr.dtype} do not fit {dtype} losslessly")
    return {"data": out}


def _file_suffix(part: str) -> str:
    return ".npy" if part == "data" else f".{part}.npy"


class CachedFeatures:
    """One cache entry: per-view arrays, memory-mapped and verified lazily.

    ``features[i]`` is view ``i`` of the list given to :meth:`FeatureCache.get_or_compute`: a read-only
    ``np.memmap`` in the stored dtype (``float16 [S, H, W, D]`` for pixel CLIP), or for ``"int8"``
    entries a float16 array of dequantised unit vectors.

    Attributes:
        path: the entry folder.
        meta: the parsed ``meta.json``.
        view_ids: scene view indices of the entries, when the caller set them (``ovs3d.foundation.features``
            does), else ``None``.
    """

    def __init__(self, path: Path, meta: dict, compute: Callable[[int], np.ndarray] | None = None) -> None:
        self.path = Path(path)
        self.meta = meta
        self.view_ids: list[int] | None = None
        self._compute = compute
        self._checked: set[int] = set()

    # ---- description ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.meta["views"])

    def __repr__(self) -> str:
        return f"CachedFeatures({self.path}, views={len(self)}, dtype={self.dtype}, shape={self.shape})"

    @property
    def key(self) -> str:
        """The entry key (folder name)."""
        return str(self.meta["key"])

    @property
    def settings(self) -> dict:
        """The settings the entry was computed with (part of its key), e.g. DINO's ``{"size", "downscale",
        "stride"}``."""
        return dict(self.meta["settings"])

    @property
    def dtype(self) -> str:
        """Storage dtype name (``"float16"``, ``"int8"`` = quantised, ...)."""
        return str(self.meta["dtype"])

    @property
    def stems(self) -> list[str]:
        """Image stem of each view."""
        return [v["stem"] for v in self.meta["views"]]

    @property
    def shape(self) -> tuple[int, ...] | None:
        """Common per-view shape, or ``None`` when views differ."""
        s = self.meta.get("shape")
        return tuple(s) if s is not None else None

    def view_shape(self, i: int) -> tuple[int, ...]:
        """Shape of view ``i`` as returned by ``self[i]``."""
        return tuple(self.meta["views"][i]["shape"])

    @property
    def nbytes(self) -> int:
        """Bytes on disk of all view files (headers included, ``meta.json`` excluded)."""
        return sum(rec["size"] for v in self.meta["views"] for rec in v["files"].values())

    # ---- access -------------------------------------------------------------------------------
    def __getitem__(self, i: int) -> np.ndarray:
        arrays = self.raw(i)
        if self.dtype == QUANTISED:
            return dequantise(arrays["data"], arrays["scale"])
        return arrays["data"]

    def raw(self, i: int) -> dict[str, np.ndarray]:
        """The stored arrays of view ``i``, memory-mapped: ``{"data"}``, plus ``"scale"`` for ``"int8"``
        entries (``data [..., D]`` int8 and ``scale [...]`` float16; :func:`dequantise` them, e.g. on
        the GPU after moving half the bytes)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"view {i} out of range for {n} cached views")
        i %= n
        if i not in self._checked:
            bad = self._file_problem(i, hash_files=True)
            if bad:
                self._repair(i, bad)
            self._checked.add(i)
        return {
            part: np.load(self.path / rec["file"], mmap_mode="r", allow_pickle=False)
            for part, rec in self.meta["views"][i]["files"].items()
        }

    def verify(self, hash_files: bool = True, repair: bool = True) -> list[int]:
        """Check every view (sizes, and checksums when ``hash_files``); return the views that failed.

        With ``repair`` (and a compute function) the failed views are recomputed; otherwise the first
        failure raises :class:`CacheCorruptError`.
        """
        bad_views = []
        for i in range(len(self)):
            bad = self._file_problem(i, hash_files=hash_files)
            if bad:
                bad_views.append(i)
                if repair:
                    self._repair(i, bad)
                else:
                    raise CacheCorruptError(f"feature cache {self.path}: {bad}; delete the folder and re-run")
            if hash_files:
                self._checked.add(i)
        return bad_views

    def _file_problem(self, i: int, hash_files: bool) -> str | None:
        """Why view ``i``'s files cannot be used, or ``None`` when they can."""
        for rec in self.meta["views"][i]["files"].values():
            p = self.path / rec["file"]
            try:
                st = p.stat()
            except FileNotFoundError:
                return f"{rec['file']} is missing"
            if st.st_size != rec["size"]:
                return f"{rec['file']} has {st.st_size} bytes, expected {rec['size']}"
            if hash_files and file_sha256(p) != rec["sha256"]:
                return f"{rec['file']} does not match its checksum"
        return None

    def _repair(self, i: int, problem: str) -> None:
        """Recompute view ``i`` in place (atomic per file, then ``meta.json``)."""
        if self._compute is None:
            raise CacheCorruptError(f"feature cache {self.path}: {problem}; delete the folder and re-run")
        logger.warning("feature cache %s: %s; recomputing view %d", self.path, problem, i)
        remove_stale_temps(self.path)  # what a repair killed outright left
        arrays = _encode(self._compute(i), self.dtype)
        files = {}
        for part, arr in arrays.items():
            final = self.path / f"view_{i:05d}{_file_suffix(part)}"
            tmp = self.path / f".{final.name}.tmp-{owner_tag()}-{uuid.uuid4().hex[:8]}"
            try:
                rec = _save_npy(tmp, arr)
                os.replace(tmp, final)
            finally:
                if tmp.exists():
                    tmp.unlink()
            rec["file"] = final.name
            files[part] = rec
        view = self.meta["views"][i]
        view["files"] = files
        view["shape"] = _logical_shape(arrays)
        self.meta["shape"] = _common_shape(self.meta["views"])
        atomic_write_json(self.path / "meta.json", self.meta)
        self._checked.add(i)


def _logical_shape(arrays: dict[str, np.ndarray]) -> list[int]:
    return list(arrays["data"].shape)


def _common_shape(views: list[dict]) -> list[int] | None:
    shapes = {tuple(v["shape"]) for v in views}
    return list(shapes.pop()) if len(shapes) == 1 else None


class FeatureCache:
    """A folder of cache entries (see the module docstring for the layout and guarantees).

    Args:
        root: cache folder; created on first write.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def entry_path(self, kind: str, key: str) -> Path:
        """Folder of entry ``key`` of ``kind``."""
        return self.root / kind / key

    def get_or_compute(
        self,
        kind: str,
        identity: str,
        settings: dict,
        views: Sequence[tuple[str, Path]],
        compute: Callable[[int], np.ndarray],
        dtype: str = "float16",
        desc: str | None = None,
        verify: bool = False,
        work: Work | None = None,
    ) -> CachedFeatures:
        """Open the entry for these inputs, computing (and storing) whatever is missing or corrupt.

        Args:
            kind: what is cached (``"pixel_clip"``, ``"dino"``, ``"masks"``): the sub-folder.
            identity: model and weights name (``ClipBackend.identity``...).
            settings: plain-data dict of everything else the values depend on (resolution included).
            views: per view ``(image stem, image file)``; the file's size and mtime enter the key.
            compute: ``compute(i)`` returns the array of ``views[i]`` (any float/int numpy array).
            dtype: storage dtype (``"float16"``, ``"int8"`` = normalised+quantised, or a numpy name).
            desc: progress label (defaults to ``kind``).
            verify: checksum every file now instead of lazily on first access.
            work: how the computation is counted and what it costs (:class:`~ovs3d.utils.console.Work`;
                ``weights`` are per view); default: views.

        Returns:
            The entry, lazily memory-mapped; ``len`` = ``len(views)``.
        """
        if dtype != QUANTISED:
            np.dtype(dtype)  # raises TypeError on an unknown name
        remove_leftovers(self.root / kind)
        key = cache_key(kind, identity, settings, views, dtype)
        final = self.entry_path(kind, key)
        stems = [str(s) for s, _ in views]
        meta = _read_meta(final)
        if meta is not None and (meta.get("key") != key or [v["stem"] for v in meta.get("views", [])] != stems):
            logger.warning("feature cache %s: meta.json does not describe this entry; recomputing", final)
            meta = None
        checked: set[int] = set()
        if meta is None:
            # One writer per entry: a second process (two fits of one scene at once, as in `ovs3d batch`)
            # waits for the first and then reads what it published instead of computing it again.
            with file_lock(self.root / ".locks" / f"{kind}-{key}.lock"):
                meta = _read_meta(final)
                if meta is not None and (meta.get("key") != key or [v["stem"] for v in meta["views"]] != stems):
                    meta = None
                if meta is None:
                    head = {"kind": kind, "key": key, "identity": identity, "settings": settings, "dtype": dtype}
                    meta, checked = self._write_entry(head, stems, compute, desc or kind, work or Work("views"))
                else:
                    note(f"{desc or kind}: {len(stems)} views from the cache ({final}), written by another process")
        else:
            note(f"{desc or kind}: {len(stems)} views from the cache ({final})")
        entry = CachedFeatures(final, meta, compute)
        entry._checked.update(checked)  # hashed while writing
        entry.verify(hash_files=verify and len(checked) < len(entry), repair=True)
        return entry

    def _write_entry(
        self, head: dict, stems: list[str], compute: Callable[[int], np.ndarray], desc: str, work: Work
    ) -> tuple[dict, set[int]]:
        """Compute and publish an entry, taking over the views an interrupted writer finished.

        Args:
            head: ``kind``, ``key``, ``identity``, ``settings`` and ``dtype`` of the entry.
            stems: image stem of each view.
            compute: ``compute(i)`` returns view ``i``'s array.
            desc: progress label.
            work: how the computation is counted (per-view ``weights``).

        Returns:
            The published meta, and the views whose published files this call hashed while writing them.
        """
        kind, key, dtype = head["kind"], head["key"], head["dtype"]
        final = self.entry_path(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f"{_TMP_PREFIX}{key}-{owner_tag()}-{uuid.uuid4().hex[:8]}"
        records: list[dict | None] = _take_partial(final.parent / f"{_PARTIAL_PREFIX}{key}", tmp, stems, dtype)
        if records is None:
            tmp.mkdir()
            records = [None] * len(stems)
        todo = [i for i, r in enumerate(records) if r is None]
        weights = list(work.weights) if work.weights is not None else [1] * len(stems)
        done_before = sum(w for i, w in enumerate(weights) if records[i] is not None)
        if done_before:
            note(f"{desc}: {len(stems) - len(todo)} of {len(stems)} views from an interrupted run are reused")
        item_work = Work(work.unit, [weights[i] for i in todo], work.size, work.device, work.hint)
        ours: set[int] = set()
        try:
            for i in progress(todo, desc=desc, total=sum(weights), initial=done_before, work=item_work):
                arrays = _encode(compute(i), dtype)
                files = {part: _save_npy(tmp / f"view_{i:05d}{_file_suffix(part)}", a) for part, a in arrays.items()}
                records[i] = {"stem": stems[i], "shape": _logical_shape(arrays), "files": files}
                ours.add(i)
                _save_partial(tmp, stems, records, dtype)
            meta = {
                "format": FORMAT_VERSION,
                "kind": kind,
                "key": key,
                "identity": head["identity"],
                "settings": json.loads(_canonical_json(head["settings"])),
                "dtype": dtype,
                "shape": _common_shape(records),  # type: ignore[arg-type]
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "views": records,
            }
            atomic_write_json(tmp / "meta.json", meta)
            _fsync_dir(tmp)
            self._publish(tmp, final)
            (final / _PARTIAL_FILE).unlink(missing_ok=True)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as the CLI raises it (an error starts afresh)
            kept = _keep_partial(tmp, final.parent / f"{_PARTIAL_PREFIX}{key}")
            if kept:
                note(f"{desc}: the {kept} finished view(s) are kept for the next run")
            raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        published = _read_meta(final)
        if published is None:
            raise OVS3DError(f"feature cache {final} could not be written; check the folder is writable")
        return published, ours if published["views"] == meta["views"] else set()

    @staticmethod
    def _publish(tmp: Path, final: Path) -> None:
        """Rename ``tmp`` to ``final``, moving a previous (broken) ``final`` out of the way first."""
        trash = None
        if final.exists():
            trash = final.parent / f"{_TRASH_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(final, trash)
            except FileNotFoundError:
                trash = None
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process published the same entry meanwhile: keep theirs.
            logger.debug("feature cache %s was written concurrently; using the other copy", final)
        _fsync_dir(final.parent)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def entries(self, kind: str | None = None) -> list[Path]:
        """Folders of the complete entries (those with a ``meta.json``), of one kind or all."""
        if not self.root.is_dir():
            return []
        kinds = [self.root / kind] if kind else [p for p in self.root.iterdir() if p.is_dir()]
        return sorted(e for k in kinds if k.is_dir() for e in k.iterdir() if not e.name.startswith(".") and e.is_dir())

    def prune(self, kind: str | None = None, keep: Collection[str] = (), stale_s: float = 3600.0) -> int:
        """Delete entries whose key is not in ``keep``, and leftovers of crashed writes.

        Args:
            kind: only entries of this kind (all kinds when ``None``).
            keep: keys to keep (e.g. ``[features.key]`` of the entries in use).
            stale_s: temporary folders older than this many seconds count as leftovers.

        Returns:
            Bytes freed.
        """
        freed = 0
        if not self.root.is_dir():
            return 0
        kinds = [self.root / kind] if kind else [p for p in self.root.iterdir() if p.is_dir()]
        now = time.time()
        for k in kinds:
            if not k.is_dir():
                continue
            for e in k.iterdir():
                if not e.is_dir():
                    continue
                leftover = e.name.startswith((_TMP_PREFIX, _TRASH_PREFIX, _PARTIAL_PREFIX))
                if leftover and now - e.stat().st_mtime < stale_s:
                    continue
                if leftover or (not e.name.startswith(".") and e.name not in keep):
                    freed += sum(f.stat().st_size for f in e.rglob("*") if f.is_file())
                    shutil.rmtree(e, ignore_errors=True)
        return freed


def _save_partial(tmp: Path, stems: list[str], records: list[dict | None], dtype: str) -> None:
    """Record the finished views of an entry being written (``partial.json``, atomic)."""
    done = {str(i): r for i, r in enumerate(records) if r is not None}
    atomic_write_json(tmp / _PARTIAL_FILE, {"format": FORMAT_VERSION, "stems": stems, "dtype": dtype, "views": done})


def _keep_partial(tmp: Path, partial: Path) -> int:
    """After an interrupted write: keep ``tmp`` as ``partial`` when it has finished views; how many it has."""
    n = len(_read_partial(tmp).get("views", {}))
    if not n:
        return 0
    if partial.exists():
        shutil.rmtree(partial, ignore_errors=True)
    try:
        os.rename(tmp, partial)
    except OSError:
        return 0
    return n


def _read_partial(folder: Path) -> dict:
    try:
        data = json.loads((folder / _PARTIAL_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("format") == FORMAT_VERSION else {}


def _take_partial(partial: Path, tmp: Path, stems: list[str], dtype: str) -> list[dict | None] | None:
    """Take an interrupted write of the same entry over (renamed to ``tmp``); its records per view (None for
    the views still to compute, and for any whose files are missing or of another size), or None without one."""
    if not partial.is_dir():
        return None
    try:
        os.rename(partial, tmp)  # atomic: one writer takes it
    except OSError:
        return None
    data = _read_partial(tmp)
    records: list[dict | None] = [None] * len(stems)
    if data.get("stems") != stems or data.get("dtype") != dtype:
        data = {}
    for k, rec in dict(data.get("views", {})).items():
        i = int(k) if str(k).isdigit() else -1
        if 0 <= i < len(stems) and _files_ok(tmp, rec):
            records[i] = rec
    return records


def _files_ok(folder: Path, rec: Any) -> bool:
    """Whether a view record's files are in ``folder`` with their recorded sizes."""
    try:
        files = list(rec["files"].values())
        return bool(files) and all((folder / f["file"]).stat().st_size == f["size"] for f in files)
    except (OSError, KeyError, TypeError, AttributeError):
        return False


def remove_leftovers(folder: Path, stale_s: float = 3600.0) -> int:
    """Tidy what interrupted writes left in one kind's folder: a temporary entry whose writer is gone (it names
    the process and the machine; another machine's, or an unnamed one, once it is ``stale_s`` old) becomes
    the ``.partial-<key>`` folder of its finished views (removed when it has none), and every ``.trash-``
    folder is removed. Returns how many temporary folders were tidied.
    """
    if not folder.is_dir():
        return 0
    removed = 0
    for e in folder.iterdir():
        if e.name.startswith(_TRASH_PREFIX) or (e.name.startswith(_TMP_PREFIX) and _abandoned(e, stale_s)):
            m = _TMP_NAME.match(e.name)
            if m is not None and _keep_partial(e, folder / f"{_PARTIAL_PREFIX}{m.group('key')}"):
                logger.info("feature cache %s: kept the finished views of a killed write (%s)", folder, e.name)
            shutil.rmtree(e, ignore_errors=True)
            removed += not e.exists()
    if removed:
        logger.info("feature cache %s: removed %d leftover(s) of interrupted writes", folder, removed)
    return removed


def _abandoned(tmp: Path, stale_s: float) -> bool:
    """Whether a temporary entry folder belongs to no running writer."""
    m = _TMP_NAME.match(tmp.name)
    if m and m.group("host") == HOST:
        return not pid_alive(int(m.group("pid")))
    try:
        return time.time() - tmp.stat().st_mtime > stale_s
    except OSError:
        return False


def _read_meta(path: Path) -> dict | None:
    """Parsed ``meta.json`` of an entry folder, or ``None`` when missing or unreadable."""
    p = path / "meta.json"
    if not p.is_file():
        return None
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        logger.warning("feature cache %s: unreadable meta.json (%s); recomputing", path, e)
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION or "views" not in meta:
        logger.warning("feature cache %s: meta.json of another format; recomputing", path)
        return None
    return meta
