"""Scene-level feature extraction, cached: what ``ovs3d features`` and ``ovs3d fit`` call.

Each function runs one foundation model over some views of a scene and returns a lazily loaded,
memory-mapped :class:`~ovs3d.foundation.cache.CachedFeatures` (or :class:`MaskProposals`). Results are
stored under ``cache_root`` (default ``<scene>/.ovs3d_cache``, see :func:`default_cache_root`) and
reused as long as the model identity, the settings and the image files are unchanged.

- :func:`clip_features`: 3D-OVS multi-scale pixel CLIP features (Alg. 1, :mod:`.pixel_clip`) at
  ``1 / semantic_downscale`` of full resolution, ``float16 [S, h, w, D]`` per view, not normalised, for
  a seeded random ``views_fraction`` of the given views (3D-OVS ``clip_input``).
- :func:`dino_features`: dense DINO features ``[h / stride, w / stride, D]`` per view at
  ``1 / dino_downscale``.
- :func:`mask_proposals`: class-agnostic masks at the semantic resolution, stored losslessly as packed
  bits (``np.packbits`` of ``[M, h * w]``, overlaps and the largest-first order kept); read back as
  ``[M, h, w]`` bool, or as an int32 label map (smallest covering mask) with :meth:`MaskProposals.label_map`.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ovs3d.foundation.base import ClipBackend, DinoBackend, MaskBackend, ViewImage
from ovs3d.foundation.cache import CachedFeatures, FeatureCache
from ovs3d.foundation.pixel_clip import PixelClipConfig, crops_per_view, pixel_clip_features
from ovs3d.io.scene import Scene
from ovs3d.utils.config import ConfigError, check_on_init, rule
from ovs3d.utils.console import Work, cost_hint

CACHE_DIRNAME = ".ovs3d_cache"


STORAGE_DTYPES = ("float16", "float32", "int8")
"""Storage dtypes of CLIP and DINO features (any other numpy float type also works)."""


def _check_dtype(name: str, flag: str) -> None:
    """A feature storage dtype: ``int8`` (quantised) or a numpy float type."""
    import numpy as np

    try:
        ok = name == "int8" or np.dtype(name).kind == "f"
    except TypeError:
        ok = False
    if not ok:
        raise ConfigError(f"{flag} must be {', '.join(STORAGE_DTYPES)} (or another numpy float type) (got {name!r})")


@dataclass
class FeatureConfig:
    """Settings of the feature extraction stage."""

    semantic_downscale: float = field(default=4.0, metadata=rule(gt=0, le=1000))
    """CLIP features (and mask proposals) are computed on images at ``1 / semantic_downscale`` of full
    resolution (the reference uses 1/8 of 4032x3024 photos); the semantic field trains at this size."""
    dino_downscale: float = field(default=1.0, metadata=rule(gt=0, le=1000))
    """DINO sees images at ``1 / dino_downscale`` (lowered on small images, ``dino_min_cells``); its features
    are ``stride`` times smaller again."""
    dino_min_cells: int | None = field(default=30, metadata=rule(ge=1))
    """DINO's feature grid keeps at least this many cells across the image's shorter side: where
    ``dino_downscale`` would give fewer (small images), DINO sees the image enlarged instead
    (:func:`dino_input_downscale`), so that a small object still spans several cells and FDA can tell it from
    its neighbour (issue 8: at 160x120, 15 cells). The reference's DINO input (1/5 of photos of at least
    1280 px, stride 8) has at least 32. ``None``: ``dino_downscale`` as given (the behaviour before)."""
    mask_downscale: float | None = field(default=None, metadata=rule(gt=0, le=1000))
    """Resolution of the mask proposals; ``None`` = ``semantic_downscale``."""
    pixel_clip: PixelClipConfig = field(default_factory=PixelClipConfig)
    """Windows of Alg. 1."""
    views_fraction: float = field(default=1.0, metadata=rule(gt=0, le=1))
    """Fraction of the given views that get CLIP features (3D-OVS ``clip_input``, 0.5 in its configs)."""
    views_seed: int = field(default=0, metadata=rule(ge=0))
    """Seed of the choice of those views."""
    dtype: str = field(default="float16", metadata=rule(custom=_check_dtype))
    """Storage of CLIP and DINO features: ``"float16"``, ``"float32"`` or ``"int8"`` (unit vectors
    quantised, half the size of float16; the norm is lost, which the losses ignore)."""

    def __post_init__(self) -> None:
        check_on_init(self)


def dino_input_downscale(cfg: FeatureConfig, width: int, height: int, stride: int) -> float:
    """The downscale of DINO's input image: ``dino_downscale``, lowered where its ``stride``-pixel cells would
    number fewer than ``dino_min_cells`` across the shorter side of a ``width`` x ``height`` image (never raised:
    large images cost what they did)."""
    ds = float(cfg.dino_downscale)
    if cfg.dino_min_cells:
        ds = min(ds, min(width, height) / (stride * cfg.dino_min_cells))
    return ds


def default_cache_root(scene: Scene) -> Path:
    """``<scene>/.ovs3d_cache``: where features are cached when no ``cache_root`` is given."""
    return Path(scene.root) / CACHE_DIRNAME


def stem_seed(stem: str | None) -> int:
    """A stable per-view seed from the image stem (crc32), for the window jitter."""
    return zlib.crc32((stem or "").encode("utf-8"))


def select_views(views: list[int], fraction: float, seed: int = 0) -> list[int]:
    """A seeded random ``fraction`` of ``views`` (at least one), in increasing order."""
    views = sorted(int(v) for v in views)
    if fraction >= 1.0 or not views:
        return views
    n = max(1, round(fraction * len(views)))
    chosen = np.random.default_rng(seed).choice(len(views), size=n, replace=False)
    return sorted(views[i] for i in chosen)


def view_files(scene: Scene, views: list[int]) -> list[tuple[str, Path]]:
    """``(image stem, image file)`` of each view: what a cache entry's key reads of its inputs."""
    return [(scene.stems[i], scene.image_paths[i]) for i in views]


def backend_device(backend: Any) -> str:
    """Where a foundation model runs (``cpu``, ``cuda:0``); the simulated ones run on the CPU."""
    return str(getattr(backend, "device", "cpu"))


def clip_work(cfg: FeatureConfig, width: int, height: int, n_views: int, device: str) -> Work:
    """How pixel CLIP features are counted (crops) and what makes them cheaper, for their progress and estimate.

    The crops per view depend on the windows of Alg. 1, not on the resolution; the hint names the settings
    that cut them, with their share of today's crops.
    """
    pc = cfg.pixel_clip
    crops = crops_per_view(height, width, pc)
    options = []
    if cfg.views_fraction > 0.5 and n_views > 1:
        options.append("--features.views-fraction 0.5 (half the views)")
    if pc.stride_divisor > 2:
        alt = crops_per_view(height, width, replace(pc, stride_divisor=2))
        options.append(f"--features.pixel-clip.stride-divisor 2 ({alt / crops:.0%} of the crops)")
    if len(pc.patch_divisors) > 1:
        coarse = tuple(sorted(pc.patch_divisors)[:-1])
        alt = crops_per_view(height, width, replace(pc, patch_divisors=coarse))
        flag = " ".join(map(str, coarse))
        options.append(f"--features.pixel-clip.patch-divisors {flag} (no finest scale: {alt / crops:.0%} of the crops)")
    size = f"{n_views} views × {crops:,} crops"
    return Work("crops", [crops] * n_views, size, device, cost_hint(device, *options))


def clip_features(
    scene: Scene,
    clip: ClipBackend,
    views: list[int],
    cfg: FeatureConfig | None = None,
    cache_root: Path | None = None,
    verify: bool = False,
) -> CachedFeatures:
    """Multi-scale pixel CLIP features of a seeded ``cfg.views_fraction`` of ``views``, cached.

    Args:
        scene: the scene.
        clip: CLIP backend.
        views: candidate view indices (e.g. ``scene.train_views(holdout)``).
        cfg: stage settings.
        cache_root: cache folder (default ``<scene>/.ovs3d_cache``).
        verify: checksum every cached file now instead of on first access.

    Returns:
        Entry ``j`` is view ``result.view_ids[j]``: ``float16 [S, h, w, D]`` (scales largest window
        first, not normalised; unit vectors for ``dtype="int8"``), ``(w, h) = scene.image_size(
        cfg.semantic_downscale)``.
    """
    cfg = cfg or FeatureConfig()
    chosen = select_views(views, cfg.views_fraction, cfg.views_seed)
    ds = cfg.semantic_downscale
    w, h = scene.image_size(ds)
    pc = asdict(cfg.pixel_clip)
    pc.pop("batch_size")  # does not change the values
    settings = {"size": [w, h], "downscale": ds, "pixel_clip": pc, "jitter_seed": "crc32(stem)"}

    def compute(j: int) -> np.ndarray:
        i = chosen[j]
        view = ViewImage(stem=scene.stems[i], rgb=scene.load_image(i, ds))
        feats = pixel_clip_features(clip, view, cfg.pixel_clip, stem_seed(scene.stems[i]))
        return feats.cpu().numpy()

    out = FeatureCache(cache_root or default_cache_root(scene)).get_or_compute(
        "pixel_clip",
        clip.identity,
        settings,
        view_files(scene, chosen),
        compute,
        dtype=cfg.dtype,
        desc="pixel CLIP features",
        verify=verify,
        work=clip_work(cfg, w, h, len(chosen), backend_device(clip)),
    )
    out.view_ids = chosen
    return out


def dino_features(
    scene: Scene,
    dino: DinoBackend,
    views: list[int],
    cfg: FeatureConfig | None = None,
    cache_root: Path | None = None,
    verify: bool = False,
) -> CachedFeatures:
    """Dense DINO features of ``views``, cached.

    Returns:
        Entry ``j`` is view ``views[j]``: ``float16 [h // stride, w // stride, D]`` (not normalised;
        unit vectors for ``dtype="int8"``), ``(w, h) = scene.image_size(ds)`` with ``ds`` from
        :func:`dino_input_downscale`.
    """
    cfg = cfg or FeatureConfig()
    views = [int(v) for v in views]
    ds = dino_input_downscale(cfg, *scene.image_size(), int(dino.stride))
    w, h = scene.image_size(ds)
    settings = {"size": [w, h], "downscale": ds, "stride": int(dino.stride)}

    def compute(j: int) -> np.ndarray:
        i = views[j]
        view = ViewImage(stem=scene.stems[i], rgb=scene.load_image(i, ds))
        return dino.dense_features(view).cpu().numpy()

    device = backend_device(dino)
    if ds < cfg.dino_downscale:  # enlarged by the grid floor: a lower floor is what makes it cheaper
        cheaper = f"--features.dino-min-cells {max(1, cfg.dino_min_cells // 2)}"
    else:
        cheaper = f"--features.dino-downscale {2 * ds:g}"
    hint = cost_hint(device, f"{cheaper} (a quarter of the pixels)")
    work = Work("views", None, f"{len(views)} views at {w}×{h}", device, hint)
    out = FeatureCache(cache_root or default_cache_root(scene)).get_or_compute(
        "dino", dino.identity, settings, view_files(scene, views), compute, cfg.dtype, "DINO features", verify, work
    )
    out.view_ids = views
    return out


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """``[M, H, W]`` bool -> ``[M, ceil(H * W / 8)]`` uint8 (``np.packbits`` per mask, big-endian bits)."""
    m = np.asarray(masks, dtype=bool)
    return np.packbits(m.reshape(m.shape[0], -1), axis=1)


def unpack_masks(packed: np.ndarray, height: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_masks`: ``[M, H, W]`` bool."""
    p = np.asarray(packed)
    return np.unpackbits(p, axis=1, count=height * width).reshape(p.shape[0], height, width).astype(bool)


def masks_to_label_map(masks: np.ndarray) -> np.ndarray:
    """Label map of overlapping masks: ``[H, W]`` int32, each pixel the index of the smallest mask
    covering it (ties: the later index), ``-1`` where none does.

    Args:
        masks: ``[M, H, W]`` bool.
    """
    m = np.asarray(masks, dtype=bool)
    out = np.full(m.shape[1:], -1, dtype=np.int32)
    areas = m.reshape(m.shape[0], -1).sum(axis=1)
    for k in np.argsort(-areas, kind="stable"):  # largest first; smaller masks paint over
        out[m[k]] = k
    return out


class MaskProposals:
    """Cached mask proposals of several views, unpacked on access.

    ``proposals[j]`` is ``[M_j, h, w]`` bool, sorted as the backend returned them (largest first).

    Attributes:
        cached: the underlying entry (packed bits).
        height: mask height ``h``.
        width: mask width ``w``.
        view_ids: scene view index of each entry.
    """

    def __init__(self, cached: CachedFeatures, height: int, width: int, view_ids: list[int]) -> None:
        self.cached = cached
        self.height = height
        self.width = width
        self.view_ids = view_ids

    def __len__(self) -> int:
        return len(self.cached)

    def __getitem__(self, j: int) -> np.ndarray:
        return unpack_masks(self.cached[j], self.height, self.width)

    def label_map(self, j: int) -> np.ndarray:
        """``[h, w]`` int32: index of the smallest mask covering each pixel, ``-1`` for none."""
        return masks_to_label_map(self[j])


def mask_proposals(
    scene: Scene,
    masks: MaskBackend,
    views: list[int],
    cfg: FeatureConfig | None = None,
    cache_root: Path | None = None,
    verify: bool = False,
) -> MaskProposals:
    """Class-agnostic mask proposals of ``views`` at the mask resolution, cached as packed bits.

    Returns:
        Entry ``j`` is view ``views[j]``: ``[M_j, h, w]`` bool, ``(w, h) = scene.image_size(ds)`` with
        ``ds = cfg.mask_downscale or cfg.semantic_downscale``.
    """
    cfg = cfg or FeatureConfig()
    views = [int(v) for v in views]
    ds = cfg.mask_downscale or cfg.semantic_downscale
    w, h = scene.image_size(ds)
    settings = {"size": [w, h], "downscale": ds, "storage": "packbits[M,h*w]"}

    def compute(j: int) -> np.ndarray:
        i = views[j]
        view = ViewImage(stem=scene.stems[i], rgb=scene.load_image(i, ds))
        m = np.asarray(masks.propose(view), dtype=bool)
        if m.ndim != 3 or m.shape[1:] != (h, w):
            raise ValueError(f"mask backend returned {m.shape}, expected [M, {h}, {w}]")
        return pack_masks(m)

    device = backend_device(masks)
    smaller = str(masks.identity).startswith("sam:") and not str(masks.identity).startswith("sam:vit_b:")
    hint = cost_hint(device, "--masks sam:vit_b:<checkpoint> (the smallest SAM)" if smaller else "")
    cached = FeatureCache(cache_root or default_cache_root(scene)).get_or_compute(
        "masks",
        masks.identity,
        settings,
        view_files(scene, views),
        compute,
        "uint8",
        "mask proposals",
        verify,
        Work("views", None, f"{len(views)} views at {w}×{h}", device, hint),
    )
    cached.view_ids = views
    return MaskProposals(cached, h, w, views)
