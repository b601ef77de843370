"""Finding model weight files offline.

Real backends never download on their own. A weight file is resolved in this order:

1. the explicit path the user gave (``--clip open_clip:ViT-B-16:/path/to/weights.bin``); a bare file
   name that does not exist in the working directory is also looked up in the folders below;
2. ``$OVS3D_WEIGHTS_DIR/<known file name>``;
3. the library's caches: ovs3d's own (``$OVS3D_CACHE_DIR``, else ``$XDG_CACHE_HOME/ovs3d``, else
   ``~/.cache/ovs3d``, under ``weights/``), then the model library's cache (Hugging Face hub cache,
   ``~/.cache/clip``, ``$TORCH_HOME/hub/checkpoints``), looked up without any network access;
4. a download, only when the caller passed ``allow_download=True`` and ``HF_HUB_OFFLINE`` is not set.

Otherwise a :class:`~ovs3d.errors.BackendError` names the file that is missing and the flag that
provides it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ovs3d.errors import BackendError

logger = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "OVS3D_WEIGHTS_DIR"
CACHE_DIR_ENV = "OVS3D_CACHE_DIR"
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".npz", ".ckpt")

_FINGERPRINT_BYTES = 1 << 20
_fingerprint_cache: dict[tuple[str, int, int], str] = {}


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids network access (``1``/``true``/``yes``/``on``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def library_cache_dir() -> Path:
    """ovs3d's own cache folder (``$OVS3D_CACHE_DIR``, ``$XDG_CACHE_HOME/ovs3d`` or ``~/.cache/ovs3d``)."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "ovs3d"


def weights_search_dirs() -> list[Path]:
    """Folders searched for known weight file names: ``$OVS3D_WEIGHTS_DIR``, then ``<cache>/weights``."""
    dirs = []
    if os.environ.get(WEIGHTS_DIR_ENV):
        dirs.append(Path(os.environ[WEIGHTS_DIR_ENV]).expanduser())
    dirs.append(library_cache_dir() / "weights")
    return dirs


def find_weights(names: Iterable[str], extra_paths: Sequence[str | os.PathLike] = ()) -> Path | None:
    """First existing file among ``<dir>/<name>`` for the search folders, then ``extra_paths``.

    Args:
        names: known file names (e.g. ``sam_vit_h_4b8939.pth``), most preferred first.
        extra_paths: further candidate files (a model library's cache), tried last.

    Returns:
        The file, or ``None`` if none exists. Nothing is downloaded.
    """
    names = [n for n in names if n]
    for d in weights_search_dirs():
        for name in names:
            p = d / name
            if p.is_file():
                return p
    for p in extra_paths:
        if p and Path(p).is_file():
            return Path(p)
    return None


def looks_like_path(text: str) -> bool:
    """Whether a weights argument names a file rather than a hub tag (a separator, a weights suffix or an
    existing file)."""
    return (
        "/" in text
        or "\\" in text
        or text.startswith("~")
        or text.lower().endswith(WEIGHT_SUFFIXES)
        or Path(text).is_file()
    )


def resolve_weights_file(path: str | os.PathLike, *, what: str, flag: str) -> Path:
    """Resolve an explicit weights path.

    Args:
        path: the file the user named. If it does not exist and is a bare file name, it is also looked
            for in ``$OVS3D_WEIGHTS_DIR`` and ovs3d's weights cache.
        what: what the file is, for the error (``"open_clip ViT-B-16 weights"``).
        flag: the flag that names the file, for the error (``"--clip open_clip:ViT-B-16:/path/to/weights.bin"``).

    Raises:
        BackendError: the file does not exist.
    """
    p = Path(path).expanduser()
    if p.is_file():
        return p.resolve()
    if p.exists():
        raise BackendError(f"{what}: {p} is not a file; pass a weights file with {flag}")
    if len(p.parts) == 1:
        found = find_weights([p.name])
        if found is not None:
            return found.resolve()
    looked = ", ".join(str(d) for d in weights_search_dirs())
    raise BackendError(
        f"{what} not found: {path} (also looked in {looked}); pass an existing file with {flag} "
        f"or put it in ${WEIGHTS_DIR_ENV}"
    )


def check_download_allowed(allow_download: bool, *, what: str, hint: str) -> None:
    """Raise unless a download may happen now.

    Args:
        allow_download: the caller's explicit permission.
        what: what would be downloaded (``"open_clip ViT-B-16 'openai' weights"``).
        hint: how to provide the file instead (one clause, with the flag).

    Raises:
        BackendError: downloads are not allowed or ``HF_HUB_OFFLINE`` is set.
    """
    if hub_offline():
        raise BackendError(f"{what} are not cached and HF_HUB_OFFLINE is set, so nothing is downloaded; {hint}")
    if not allow_download:
        raise BackendError(
            f"{what} are not cached and downloads are off; {hint}, or allow downloading (--allow-download)"
        )


def download_url(url: str, filename: str) -> Path:
    """Download ``url`` into ovs3d's weights cache (only call after :func:`check_download_allowed`).

    Returns:
        The downloaded file ``<cache>/weights/<filename>``.
    """
    import torch.hub

    dest = library_cache_dir() / "weights" / filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s to %s", url, dest)
    try:
        torch.hub.download_url_to_file(url, str(dest), progress=True)
    except Exception as e:  # network errors come in many types
        raise BackendError(f"could not download {url}: {e}; download it by hand and pass the file") from e
    return dest


def fingerprint(path: str | os.PathLike) -> str:
    """``<name>@<size>:<sha256 of the first MiB, 12 hex>``: changes whenever the weights change.

    Cached per (path, size, mtime), so calling it for a multi-GB checkpoint is cheap after the first time.
    """
    p = Path(path)
    st = p.stat()
    key = (str(p.absolute()), st.st_size, st.st_mtime_ns)
    if key not in _fingerprint_cache:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            h.update(f.read(_FINGERPRINT_BYTES))
        _fingerprint_cache[key] = f"{p.name}@{st.st_size}:{h.hexdigest()[:12]}"
    return _fingerprint_cache[key]


def hf_cached_file(repo_id: str, filenames: Iterable[str], cache_dir: str | os.PathLike | None = None) -> Path | None:
    """A file of a Hugging Face repo already in the local hub cache (no network), or ``None``."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in filenames:
        try:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        except Exception:  # malformed repo ids and the like: treat as not cached
            continue
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None
