"""LERF's multi-scale CLIP pyramid, and the panoptic-prior segment tiles that override some of its tiles.

**The pyramid (LERF, ``kerrj/lerf`` ``pyramid_embedding_dataloader.py``).** For each tile ratio ``r`` of
:data:`LERF_TILE_RATIOS` (``linspace(0.05, 0.5, 7)``, fractions of the image height ``H``) a level has square
tiles of side ``k = int(H·r)`` on a regular grid with stride ``int(k·interp(r, [0.05, 0.15] → [1.0, 0.5]))``
(clamped outside that range; at least 1 here) and zero padding ``k // 2`` (tiles reach outside the image;
the outside is zeros): :func:`~ovs3d.foundation.pixel_clip.tile_grid`. Tile ``j`` of an axis has its
centre at pixel-index coordinate ``c_j = (k - 1) / 2 - k // 2 + j·stride`` (pixel ``i`` has centre ``i``),
and there are ``n = (L + 2·(k // 2) - k) // stride + 1`` of them (``L = H`` for rows, ``W`` for columns).
Every tile is CLIP-encoded and L2-normalised; a level is stored as a grid ``[rows + 1, cols + 1, D]`` whose
last row and column are duplicated, so the ``+1`` neighbour of the bilinear lookup always exists.

**Lookup** (:meth:`ClipPyramid.interp`). At a pixel ``(x, y)`` (float, pixel-index coordinates) of level
``l``: ``i0 = floor((y - c_0) / stride)``, ``wy = (y - (c_0 + i0·stride)) / stride`` and the same for
columns, then the bilinear mix of the grid entries ``(i0, j0)``, ``(i0, j0 + 1)``, ``(i0 + 1, j0)``,
``(i0 + 1, j0 + 1)``. For every pixel of the image ``i0 ∈ [0, n - 1]`` and ``w ∈ [0, 1)`` already
(:func:`grid_coords`); indices and weights are clamped anyway, for coordinates outside the image. The
training target of a ray (:meth:`ClipPyramid.target`) picks a level bin ``b ∈ {0..5}`` and ``u ∈ [0, 1)``
and is ``lerp(interp(b), interp(b + 1), u)`` (not re-normalised, as LERF); the scale the field is given is
``s_img = (b + u) / 6`` (:meth:`ClipPyramid.scale_value`).

**Panoptic prior** (Ji, Tan et al., "Leveraging Panoptic Prior for 3D Zero-shot Semantic Understanding
within Language Embedded Radiance Fields", §3.3–3.4). Per training view a panoptic partition (here: each
pixel gets the smallest class-agnostic mask covering it, ``-1`` where none, :func:`panoptic_partition`).
Each segment's *segment tile* is its tight bounding box (``h_b × w_b``, the context inside the box kept),
zero-padded to a square of side ``m = max(h_b, w_b)`` with the box centred (:func:`square_boxes`), CLIP-encoded
and L2-normalised (:func:`encode_segments`); its scale is ``s_x = m / H``, the unit of the tile ratios. At
level ``i`` a segment overrides iff ``s_{i-1}·1.1 < s_x <= s_{i+1}·1.1`` or ``s_x >= s_max``
(:func:`override_levels`), and then it replaces at most one tile of the level: among the tiles whose centre
pixel lies in the segment, the one whose centre is nearest to the segment's box centre
(:func:`apply_prior`). Bilinear interpolation then spreads it to the neighbours.

Ablations of the paper (``PyramidConfig.prior``): ``"single_scale"`` (at the largest level only, every tile
whose centre pixel lies in a segment takes the segment's embedding) and ``"full_segmentation"`` (no pyramid
inside segments: a pixel's target at every level is its segment's embedding).

Caching: :func:`pyramid_features` stores per view one ``float16 [Σ_l (rows_l + 1)(cols_l + 1), D]`` array
(kind ``"clip_pyramid"``; it does not depend on the prior), :func:`segment_tiles` per view the segment
embeddings ``float16 [n, D]`` (kind ``"segment_tiles"``); the partitions are recomputed from the cached
mask proposals. :func:`load_pyramid` puts both together into a :class:`ClipPyramid` for training.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ovs3d.foundation.base import ClipBackend, MaskBackend, ViewImage
from ovs3d.foundation.cache import CachedFeatures, FeatureCache
from ovs3d.foundation.features import (
    FeatureConfig,
    MaskProposals,
    default_cache_root,
    mask_proposals,
    masks_to_label_map,
    view_files,
)
from ovs3d.foundation.pixel_clip import encode_box_stream, tile_grid
from ovs3d.io.scene import Scene
from ovs3d.utils.console import Work, cost_hint, progress

logger = logging.getLogger(__name__)

LERF_TILE_RATIOS: tuple[float, ...] = (0.05, 0.125, 0.2, 0.275, 0.35, 0.425, 0.5)
"""LERF's tile sizes as fractions of the image height, ``linspace(0.05, 0.5, 7)`` written out: LERF holds them
as torch float32, where ``0.275`` rounds up, so ``int(240 · 0.275) = 66`` as in LERF (a float64 linspace gives
``0.27499999999999997`` and a kernel of 65)."""

PRIORS: tuple[str, ...] = ("none", "panoptic", "panoptic_all", "single_scale", "full_segmentation")
"""Accepted values of :attr:`PyramidConfig.prior`."""

STRIDE_RATIO_RANGE: tuple[tuple[float, float], tuple[float, float]] = ((0.05, 0.15), (1.0, 0.5))
"""LERF's stride rule: ``stride / kernel = interp(ratio, [0.05, 0.15] → [1.0, 0.5])``, clamped outside."""


@dataclass
class PyramidConfig:
    """Settings of the CLIP pyramid and its prior."""

    tile_ratios: tuple[float, ...] = LERF_TILE_RATIOS
    """Tile side of each level as a fraction of the image height ``H`` (increasing; LERF: 7 levels)."""
    downscale: float = 1.0
    """The pyramid (and the mask proposals of the prior) are computed on images at ``1 / downscale`` of full
    resolution; lookups take pixel coordinates at that resolution."""
    batch_size: int = 64
    """Crops per ``encode_crops`` call (memory/speed only; results do not depend on it)."""
    tolerance: float = 1.1
    """Scale tolerance of the override rule: a segment of scale ``s_x`` overrides level ``i`` iff
    ``s_{i-1}·tolerance < s_x <= s_{i+1}·tolerance`` or ``s_x >= s_max`` (paper: 1.1)."""
    prior: str = "none"
    """``"none"`` (plain LERF), ``"panoptic"`` (segment tiles override matching tiles), ``"single_scale"``
    (ablation: segments override every tile centred on them at the largest level only) or
    ``"full_segmentation"`` (ablation: inside a segment the target is the segment's embedding at every
    level)."""

    def __post_init__(self) -> None:
        self.tile_ratios = tuple(float(r) for r in self.tile_ratios)
        if len(self.tile_ratios) < 2:
            raise ValueError(f"a pyramid needs at least 2 tile ratios, got {self.tile_ratios}")
        if any(r <= 0 for r in self.tile_ratios) or any(b <= a for a, b in zip(self.tile_ratios, self.tile_ratios[1:])):
            raise ValueError(f"tile_ratios must be positive and increasing, got {self.tile_ratios}")
        if self.downscale <= 0:
            raise ValueError(f"downscale must be > 0, got {self.downscale}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.tolerance <= 0:
            raise ValueError(f"tolerance must be > 0, got {self.tolerance}")
        if self.prior not in PRIORS:
            raise ValueError(f"prior must be one of {', '.join(PRIORS)}; got {self.prior!r}")


# ---------------------------------------------------------------------------------------------------
# Levels


@dataclass
class PyramidLevel:
    """The tile grid of one pyramid level.

    Attributes:
        ratio: tile side as a fraction of the image height.
        kernel: tile side ``k`` in pixels (``int(H·ratio)``).
        stride: step between tile centres in pixels.
        row_centres: ``[rows]`` float64 tile-centre rows (pixel-index coordinates).
        col_centres: ``[cols]`` float64 tile-centre columns.
    """

    ratio: float
    kernel: int
    stride: int
    row_centres: np.ndarray = field(repr=False)
    col_centres: np.ndarray = field(repr=False)

    @property
    def rows(self) -> int:
        """Tile rows ``n_r`` (without the duplicated last row)."""
        return len(self.row_centres)

    @property
    def cols(self) -> int:
        """Tile columns ``n_c`` (without the duplicated last column)."""
        return len(self.col_centres)

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(rows + 1, cols + 1)``: the stored grid, last row and column duplicated."""
        return self.rows + 1, self.cols + 1

    @property
    def n_stored(self) -> int:
        """Stored vectors of the level: ``(rows + 1)·(cols + 1)``."""
        return (self.rows + 1) * (self.cols + 1)

    def boxes(self, height: int, width: int) -> np.ndarray:
        """``[rows·cols, 4]`` int64 tile boxes ``(x0, y0, x1, y1)``, row-major, reaching outside the image."""
        return tile_grid(height, width, self.kernel, self.stride)[0]


def lerf_stride(kernel: int, ratio: float) -> int:
    """LERF's stride of a level: ``int(kernel·interp(ratio, [0.05, 0.15] → [1.0, 0.5]))``, at least 1."""
    (r0, r1), (s0, s1) = STRIDE_RATIO_RANGE
    return max(1, int(kernel * float(np.interp(ratio, [r0, r1], [s0, s1]))))


def pyramid_levels(height: int, width: int, ratios: Sequence[float] = LERF_TILE_RATIOS) -> list[PyramidLevel]:
    """The levels of LERF's pyramid for an ``H × W`` image.

    Args:
        height: image height ``H`` (the tile ratios are fractions of it).
        width: image width ``W``.
        ratios: ``[L]`` tile ratios.

    Returns:
        ``L`` levels, in the order of ``ratios``; e.g. for 738×994 and LERF's ratios ``(kernel, stride,
        rows×cols)`` = (36, 36, 21×28), (92, 57, 13×18), ..., (369, 184, 5×6).

    Raises:
        ValueError: a tile would be smaller than one pixel.
    """
    out = []
    for r in ratios:
        kernel = int(height * float(r))
        if kernel < 1:
            raise ValueError(f"tile ratio {r} gives no pixel on an image of height {height}")
        stride = lerf_stride(kernel, float(r))
        _, row_c, col_c = tile_grid(height, width, kernel, stride)
        out.append(PyramidLevel(float(r), kernel, stride, row_c, col_c))
    return out


def duplicate_last(grid: torch.Tensor) -> torch.Tensor:
    """Append a copy of the last row and of the last column: ``[R, C, D]`` -> ``[R + 1, C + 1, D]``."""
    g = torch.cat([grid, grid[-1:]], dim=0)
    return torch.cat([g, g[:, -1:]], dim=1)


def encode_pyramid(
    clip: ClipBackend, view: ViewImage, levels: Sequence[PyramidLevel], batch_size: int = 64
) -> list[torch.Tensor]:
    """CLIP-encode every tile of every level of one view (one stream of batches over all levels).

    Args:
        clip: the CLIP backend (its ``encode_crops`` gets boxes that reach outside the image).
        view: the image, ``rgb [H, W, 3]``.
        levels: the levels (:func:`pyramid_levels` of the view's size).
        batch_size: crops per ``encode_crops`` call.

    Returns:
        Per level ``[rows + 1, cols + 1, D]`` float32 L2-normalised embeddings (CPU), last row and column
        duplicated.
    """
    w, h = view.size
    boxes = [lv.boxes(h, w) for lv in levels]
    embeds = encode_box_stream(clip, view, boxes, batch_size)
    out = []
    for lv, e in zip(levels, embeds):
        g = F.normalize(e.float().cpu(), dim=-1).reshape(lv.rows, lv.cols, -1)
        out.append(duplicate_last(g).contiguous())
    return out


def flatten_pyramid(grids: Sequence[torch.Tensor]) -> np.ndarray:
    """Concatenate the grids of one view for storage.

    Args:
        grids: per level ``[rows_l + 1, cols_l + 1, D]``.

    Returns:
        ``[Σ_l (rows_l + 1)(cols_l + 1), D]`` float32, level after level, each row-major.
    """
    return np.concatenate([g.detach().cpu().float().reshape(-1, g.shape[-1]).numpy() for g in grids], axis=0)


def unflatten_pyramid(flat: np.ndarray | torch.Tensor, levels: Sequence[PyramidLevel]) -> list[torch.Tensor]:
    """Inverse of :func:`flatten_pyramid`.

    Args:
        flat: ``[Σ_l (rows_l + 1)(cols_l + 1), D]``.
        levels: the levels the array was made with.

    Returns:
        Per level ``[rows_l + 1, cols_l + 1, D]`` (views of ``flat`` in its dtype).
    """
    if torch.is_tensor(flat):
        t = flat
    else:
        a = np.asarray(flat)
        t = torch.from_numpy(a if a.flags.writeable else np.array(a))  # memory-mapped cache files are read-only
    counts = [lv.n_stored for lv in levels]
    if t.ndim != 2 or t.shape[0] != sum(counts):
        raise ValueError(f"pyramid array {tuple(t.shape)} does not fit levels with {sum(counts)} stored tiles")
    return [p.view(*lv.grid_shape, t.shape[1]) for p, lv in zip(torch.split(t, counts, dim=0), levels)]


def pyramid_work(levels: Sequence[PyramidLevel], height: int, width: int, n_views: int, device: str) -> Work:
    """How the pyramid is counted (tiles) and what makes it cheaper: without its smallest level (most tiles)."""
    tiles = sum(lv.rows * lv.cols for lv in levels)
    options = []
    if len(levels) > 2:
        rest = [lv.ratio for lv in levels[1:]]
        fewer = sum(lv.rows * lv.cols for lv in pyramid_levels(height, width, rest))
        ratios = " ".join(f"{r:g}" for r in rest)
        options.append(f"--lerf.tile-ratios {ratios} (no smallest level: {fewer / tiles:.0%} of the tiles)")
    size = f"{n_views} views × {tiles:,} tiles"
    return Work("tiles", [tiles] * n_views, size, device, cost_hint(device, *options))


def pyramid_features(
    scene: Scene,
    clip: ClipBackend,
    views: list[int],
    cfg: PyramidConfig | None = None,
    cache_root: Path | None = None,
    verify: bool = False,
) -> CachedFeatures:
    """LERF pyramids of ``views`` at ``1 / cfg.downscale``, cached (kind ``"clip_pyramid"``).

    The entry does not depend on ``cfg.prior``, ``cfg.tolerance`` or ``cfg.batch_size``.

    Args:
        scene: the scene.
        clip: CLIP backend.
        views: view indices.
        cfg: pyramid settings.
        cache_root: cache folder (default ``<scene>/.ovs3d_cache``).
        verify: checksum every cached file now instead of on first access.

    Returns:
        Entry ``j`` is view ``views[j]``: ``float16 [Σ_l (rows_l + 1)(cols_l + 1), D]`` unit vectors
        (:func:`unflatten_pyramid` with ``pyramid_levels(h, w, cfg.tile_ratios)``, ``(w, h) =
        scene.image_size(cfg.downscale)``).
    """
    cfg = cfg or PyramidConfig()
    views = [int(v) for v in views]
    ds = cfg.downscale
    w, h = scene.image_size(ds)
    levels = pyramid_levels(h, w, cfg.tile_ratios)
    settings = {
        "size": [w, h],
        "downscale": ds,
        "tile_ratios": list(cfg.tile_ratios),
        "stride_rule": "lerf:interp(ratio,[0.05,0.15],[1,0.5]);pad=k//2",
        "layout": "flat[sum_l (rows_l+1)*(cols_l+1), D], unit, last row/col duplicated",
    }

    def compute(j: int) -> np.ndarray:
        i = views[j]
        view = ViewImage(stem=scene.stems[i], rgb=scene.load_image(i, ds))
        return flatten_pyramid(encode_pyramid(clip, view, levels, cfg.batch_size))

    out = FeatureCache(cache_root or default_cache_root(scene)).get_or_compute(
        "clip_pyramid",
        clip.identity,
        settings,
        view_files(scene, views),
        compute,
        dtype="float16",
        desc="CLIP pyramid",
        verify=verify,
        work=pyramid_work(levels, h, w, len(views), str(getattr(clip, "device", "cpu"))),
    )
    out.view_ids = views
    return out


# ---------------------------------------------------------------------------------------------------
# Panoptic segments


def panoptic_partition(masks: np.ndarray) -> np.ndarray:
    """A panoptic partition from overlapping class-agnostic masks: each pixel gets the smallest mask covering it.

    Args:
        masks: ``[M, H, W]`` bool (any order).

    Returns:
        ``[H, W]`` int32 segment ids ``0..n-1``, ``-1`` where no mask covers the pixel. Ids follow the mask
        order (mask ``a`` before mask ``b`` gets the smaller id); masks left with no pixel (covered by smaller
        ones everywhere) get no id. Ties of equal area: the later mask wins (as ``masks_to_label_map``).
    """
    m = np.asarray(masks, dtype=bool)
    if m.ndim != 3:
        raise ValueError(f"masks must be [M, H, W], got shape {m.shape}")
    if m.shape[0] == 0:  # (masks_to_label_map cannot reshape an empty stack)
        return np.full(m.shape[1:], -1, dtype=np.int32)
    label = masks_to_label_map(m)
    used, inverse = np.unique(label, return_inverse=True)
    inverse = inverse.reshape(label.shape)
    if len(used) and used[0] == -1:
        return (inverse - 1).astype(np.int32)
    return inverse.astype(np.int32)


def segment_boxes(partition: np.ndarray) -> np.ndarray:
    """Tight bounding boxes of the segments of a partition.

    Args:
        partition: ``[H, W]`` int segment ids ``0..n-1`` (every id present), ``-1`` for none.

    Returns:
        ``[n, 4]`` int64 ``(x0, y0, x1, y1)``, exclusive ends; box ``s`` is segment ``s``.
    """
    from scipy import ndimage

    p = np.asarray(partition)
    n = int(p.max()) + 1 if p.size else 0
    if n <= 0:
        return np.zeros((0, 4), dtype=np.int64)
    slices = ndimage.find_objects(p.astype(np.int64) + 1, max_label=n)  # label 0 (= id -1) is ignored
    out = np.zeros((n, 4), dtype=np.int64)
    for s, sl in enumerate(slices):
        if sl is None:
            raise ValueError(f"segment ids must be consecutive 0..{n - 1}; id {s} has no pixel")
        out[s] = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
    return out


def square_boxes(bboxes: np.ndarray) -> np.ndarray:
    """Square boxes of side ``m = max(h, w)`` with each box centred in its square.

    The shorter side is padded by ``d = m - short``: ``d // 2`` pixels before (left/top) and ``d - d // 2``
    after (right/bottom), so an odd difference puts the extra pixel of padding after. The squares may reach
    outside the image (that part is zero padding too).

    Args:
        bboxes: ``[n, 4]`` int ``(x0, y0, x1, y1)``, exclusive ends.

    Returns:
        ``[n, 4]`` int64 squares ``(x0, y0, x1, y1)``.
    """
    b = np.asarray(bboxes, dtype=np.int64).reshape(-1, 4)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    m = np.maximum(w, h)
    x0 = b[:, 0] - (m - w) // 2
    y0 = b[:, 1] - (m - h) // 2
    return np.stack([x0, y0, x0 + m, y0 + m], axis=1)


def segment_scales(partition: np.ndarray, height: int) -> np.ndarray:
    """``s_x = m / H`` of every segment (``m`` = side of its square tile): ``[n]`` float64."""
    b = segment_boxes(partition)
    return np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]).astype(np.float64) / float(height)


def encode_segments(clip: ClipBackend, view: ViewImage, partition: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """CLIP embeddings of the segment tiles of one view.

    Each tile is the segment's bounding box (everything inside it kept) zero-padded to a centred square
    (:func:`square_boxes`): ``encode_crops(view, squares, content=bboxes)``.

    Args:
        clip: the CLIP backend (its ``encode_crops`` must accept ``content``).
        view: the image, ``rgb [H, W, 3]``.
        partition: ``[H, W]`` int segment ids ``0..n-1``, ``-1`` for none (same size as the view).
        batch_size: crops per ``encode_crops`` call.

    Returns:
        ``[n, D]`` float32 L2-normalised (CPU).
    """
    w, h = view.size
    if tuple(np.shape(partition)) != (h, w):
        raise ValueError(f"partition {np.shape(partition)} does not match the view ({h}, {w})")
    bb = segment_boxes(partition)
    sq = square_boxes(bb)
    chunks = [
        clip.encode_crops(view, sq[i : i + batch_size], content=bb[i : i + batch_size]).float().cpu()
        for i in range(0, len(sq), batch_size)
    ]
    if not chunks:
        return torch.zeros(0, clip.dim)
    return F.normalize(torch.cat(chunks, dim=0), dim=-1)


@dataclass
class SegmentTiles:
    """Cached segment-tile embeddings of several views and their partitions.

    Attributes:
        embeddings: entry ``j``: ``float16 [n_j, D]`` unit embeddings of view ``view_ids[j]``'s segments.
        masks: the cached mask proposals the partitions are made from.
        view_ids: scene view index of each entry.
    """

    embeddings: CachedFeatures
    masks: MaskProposals
    view_ids: list[int]

    def __len__(self) -> int:
        return len(self.view_ids)

    def partition(self, j: int) -> np.ndarray:
        """``[h, w]`` int32 panoptic partition of entry ``j`` (:func:`panoptic_partition` of its masks)."""
        return panoptic_partition(self.masks[j])


def segment_tiles(
    scene: Scene,
    clip: ClipBackend,
    masks_backend: MaskBackend,
    views: list[int],
    cfg: PyramidConfig | None = None,
    cache_root: Path | None = None,
    verify: bool = False,
) -> SegmentTiles:
    """Segment tiles of ``views`` at ``1 / cfg.downscale``, cached (kind ``"segment_tiles"``).

    The masks come from :func:`~ovs3d.foundation.features.mask_proposals` at the pyramid resolution (their
    own cache entry), the partition from :func:`panoptic_partition`, so it is recomputed deterministically.

    Args:
        scene: the scene.
        clip: CLIP backend.
        masks_backend: class-agnostic mask proposer.
        views: view indices.
        cfg: pyramid settings (``downscale``, ``batch_size``).
        cache_root: cache folder (default ``<scene>/.ovs3d_cache``).
        verify: checksum every cached file now instead of on first access.

    Returns:
        Embeddings ``float16 [n_j, D]`` per view and the partitions ``[h, w]`` int32.
    """
    cfg = cfg or PyramidConfig()
    views = [int(v) for v in views]
    ds = cfg.downscale
    w, h = scene.image_size(ds)
    root = cache_root or default_cache_root(scene)
    masks = mask_proposals(scene, masks_backend, views, FeatureConfig(mask_downscale=ds), root, verify)
    settings = {
        "size": [w, h],
        "downscale": ds,
        "masks": masks_backend.identity,
        "partition": "smallest covering mask, ids in mask order",
        "tile": "bbox zero-padded to a centred square (extra pixel after), content=bbox, unit",
    }

    def compute(j: int) -> np.ndarray:
        i = views[j]
        view = ViewImage(stem=scene.stems[i], rgb=scene.load_image(i, ds))
        return encode_segments(clip, view, panoptic_partition(masks[j]), cfg.batch_size).numpy()

    embeds = FeatureCache(root).get_or_compute(
        "segment_tiles",
        clip.identity,
        settings,
        view_files(scene, views),
        compute,
        dtype="float16",
        desc="segment tiles",
        verify=verify,
        work=Work("views", device=str(getattr(clip, "device", "cpu"))),
    )
    embeds.view_ids = views
    return SegmentTiles(embeds, masks, views)


# ---------------------------------------------------------------------------------------------------
# The override rule


def override_levels(s_x: float, ratios: Sequence[float] = LERF_TILE_RATIOS, tolerance: float = 1.1) -> np.ndarray:
    """Levels at which a segment tile of scale ``s_x`` overrides a tile (paper §3.4).

    Level ``i`` matches iff ``s_{i-1}·tolerance < s_x <= s_{i+1}·tolerance`` or ``s_x >= s_max``, with the
    boundary convention ``s_{-1} := 0`` and ``s_L := +inf`` (so the smallest level takes every segment up to
    ``s_1·tolerance`` and the largest every segment above ``s_{L-2}·tolerance``). The clause
    ``s_x >= s_max`` is read literally: a segment at least as large as the largest tile matches every level.
    With LERF's ratios a segment matches 1–2 neighbouring levels (e.g. ``s_x = 0.2`` -> levels 1, 2).

    Args:
        s_x: the segment's scale ``m / H``.
        ratios: ``[L]`` increasing tile ratios ``s_0..s_{L-1}``.
        tolerance: the ``1.1`` of the paper.

    Returns:
        ``[L]`` bool.
    """
    r = np.asarray(ratios, dtype=np.float64)
    below = np.concatenate([[0.0], r[:-1]]) * tolerance
    above = np.concatenate([r[1:], [np.inf]]) * tolerance
    match = (below < s_x) & (s_x <= above)
    if s_x >= r.max():
        match[:] = True
    return match


def centre_pixels(centres: np.ndarray, length: int) -> np.ndarray:
    """Tile-centre coordinates rounded to the nearest pixel (halves up: ``floor(c + 0.5)``), clamped to
    ``[0, length - 1]``: ``[n]`` int64. Even kernels have centres at ``j·stride - 0.5``, which go to
    ``j·stride``."""
    return np.clip(np.floor(np.asarray(centres, dtype=np.float64) + 0.5), 0, length - 1).astype(np.int64)


def centred_tiles(level: PyramidLevel, partition: np.ndarray, bboxes: np.ndarray) -> np.ndarray:
    """For each segment, the tile of ``level`` centred on it.

    Among the tiles whose centre pixel (:func:`centre_pixels`) lies in the segment, the one whose (exact)
    centre is nearest to the centre of the segment's box (``((x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2)``);
    ties go to the first tile in row-major order.

    Args:
        level: the level.
        partition: ``[H, W]`` int segment ids ``0..n-1``, ``-1`` for none.
        bboxes: ``[n, 4]`` the segments' boxes (:func:`segment_boxes`).

    Returns:
        ``[n]`` int64 flat (row-major) tile index of each segment, ``-1`` where no tile centre is in it.
    """
    h, w = partition.shape
    n = len(bboxes)
    out = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return out
    seg = np.asarray(partition)[np.ix_(centre_pixels(level.row_centres, h), centre_pixels(level.col_centres, w))]
    seg = seg.reshape(-1)  # [rows * cols]
    tiles = np.nonzero(seg >= 0)[0]
    if len(tiles) == 0:
        return out
    s = seg[tiles]
    cy = level.row_centres[tiles // level.cols]
    cx = level.col_centres[tiles % level.cols]
    b = np.asarray(bboxes, dtype=np.float64)
    by, bx = (b[s, 1] + b[s, 3] - 1) / 2.0, (b[s, 0] + b[s, 2] - 1) / 2.0
    dist = (cy - by) ** 2 + (cx - bx) ** 2
    order = np.lexsort((tiles, dist, s))  # by segment, then distance, then tile index
    s_sorted = s[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = s_sorted[1:] != s_sorted[:-1]
    out[s_sorted[first]] = tiles[order[first]]
    return out


def apply_prior(
    levels_grids: Sequence[torch.Tensor],
    levels: Sequence[PyramidLevel],
    partition: np.ndarray,
    segment_embeds: torch.Tensor | np.ndarray,
    height: int,
    prior: str = "panoptic",
    tolerance: float = 1.1,
) -> list[torch.Tensor]:
    """Override pyramid tiles of one view with its segment tiles.

    - ``"panoptic"``: at each level :func:`override_levels` accepts, a segment replaces the one tile
      centred on it (:func:`centred_tiles`), if any.
    - ``"panoptic_all"``: the other reading of the paper's §3.4 ("the original tile should be centered at
      certain segmentation"): at each level the rule accepts, *every* tile whose centre pixel lies in the
      segment takes its embedding.
    - ``"single_scale"``: at the largest level only, every tile whose centre pixel lies in a segment
      takes that segment's embedding.
    - ``"none"`` / ``"full_segmentation"``: grids unchanged (full segmentation is applied at lookup).

    The duplicated last row and column are rebuilt after overriding.

    Args:
        levels_grids: per level ``[rows + 1, cols + 1, D]`` (last row/column duplicated).
        levels: the levels.
        partition: ``[H, W]`` int segment ids ``0..n-1``, ``-1`` for none.
        segment_embeds: ``[n, D]`` segment-tile embeddings.
        height: image height ``H`` (the unit of the segment scales).
        prior: one of :data:`PRIORS`.
        tolerance: of the override rule.

    Returns:
        New per-level ``[rows + 1, cols + 1, D]`` grids (the inputs are not modified).
    """
    if prior not in PRIORS:
        raise ValueError(f"prior must be one of {', '.join(PRIORS)}; got {prior!r}")
    grids = [g.clone() for g in levels_grids]
    if prior in ("none", "full_segmentation"):
        return grids
    part = np.asarray(partition)
    bb = segment_boxes(part)
    e = torch.from_numpy(np.array(segment_embeds)) if not torch.is_tensor(segment_embeds) else segment_embeds
    if len(bb) != e.shape[0]:
        raise ValueError(f"{e.shape[0]} segment embeddings for {len(bb)} segments in the partition")
    if len(bb) == 0:
        return grids
    if prior == "panoptic":
        scales = np.maximum(bb[:, 2] - bb[:, 0], bb[:, 3] - bb[:, 1]).astype(np.float64) / float(height)
        ratios = [lv.ratio for lv in levels]
        active = np.stack([override_levels(s, ratios, tolerance) for s in scales])  # [n, L]
        for li, lv in enumerate(levels):
            tile = centred_tiles(lv, part, bb)
            segs = np.nonzero((tile >= 0) & active[:, li])[0]
            _override(grids, li, lv, tile[segs], e[torch.as_tensor(segs)])
        return grids
    if prior == "panoptic_all":
        scales = np.maximum(bb[:, 2] - bb[:, 0], bb[:, 3] - bb[:, 1]).astype(np.float64) / float(height)
        active = np.stack([override_levels(s, [lv.ratio for lv in levels], tolerance) for s in scales])  # [n, L]
        h, w = part.shape
        for li, lv in enumerate(levels):
            seg = part[np.ix_(centre_pixels(lv.row_centres, h), centre_pixels(lv.col_centres, w))].reshape(-1)
            tiles = np.nonzero(seg >= 0)[0]
            tiles = tiles[active[seg[tiles], li]]
            _override(grids, li, lv, tiles, e[torch.as_tensor(seg[tiles])])
        return grids
    # single_scale
    li = int(np.argmax([lv.ratio for lv in levels]))
    lv = levels[li]
    h, w = part.shape
    seg = part[np.ix_(centre_pixels(lv.row_centres, h), centre_pixels(lv.col_centres, w))].reshape(-1)
    tiles = np.nonzero(seg >= 0)[0]
    _override(grids, li, lv, tiles, e[torch.as_tensor(seg[tiles])])
    return grids


def _override(grids: list[torch.Tensor], li: int, lv: PyramidLevel, tiles: np.ndarray, embeds: torch.Tensor) -> None:
    """Write ``embeds [k, D]`` into the flat tiles ``tiles [k]`` of level ``li``, then re-duplicate."""
    if len(tiles) == 0:
        return
    g = grids[li][: lv.rows, : lv.cols].clone()  # [R, C, D]
    flat = g.view(-1, g.shape[-1])
    flat[torch.as_tensor(tiles)] = embeds.to(flat.dtype).to(flat.device)
    grids[li] = duplicate_last(g).contiguous()


# ---------------------------------------------------------------------------------------------------
# Training-time lookups


def grid_coords(
    pos: torch.Tensor, first_centre: float, stride: int, n: int, clamp: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """LERF's grid position of pixel coordinates along one axis.

    ``i0 = floor((pos - c_0) / stride)`` and ``w = (pos - (c_0 + i0·stride)) / stride``; with ``clamp``,
    ``i0`` is clamped to ``[0, n - 1]`` and ``w`` to ``[0, 1]`` (only coordinates outside the image need
    it).

    Args:
        pos: ``[B]`` float pixel-index coordinates.
        first_centre: ``c_0``.
        stride: step between centres.
        n: number of centres (tiles) on the axis.
        clamp: clamp the index and the weight.

    Returns:
        ``(i0 [B] long, w [B] float)``.
    """
    p = pos.to(torch.float64) if pos.dtype == torch.float64 else pos.to(torch.float32)
    i0 = torch.floor((p - first_centre) / stride)
    w = (p - (first_centre + i0 * stride)) / stride
    i0 = i0.long()
    if clamp:
        i0 = i0.clamp(0, n - 1)
        w = w.clamp(0.0, 1.0)
    return i0, w


class ClipPyramid:
    """The CLIP pyramids of ``V`` views, ready for training lookups.

    Args:
        grids: per level ``[V, rows + 1, cols + 1, D]`` (stored as float16; lookups compute in float32).
        levels: the levels (same image size for all views).
        image_size: ``(W, H)`` of the pyramid resolution.
        view_ids: scene view index of each of the ``V`` entries (optional).
        partitions: ``[V, H, W]`` int32 segment ids per view (``-1`` none), for ``"full_segmentation"``.
        segment_embeds: per view ``[n_v, D]`` segment embeddings (list), for ``"full_segmentation"``.

    Attributes:
        grids: per level ``[V, rows + 1, cols + 1, D]`` float16.
        levels: the levels.
        image_size: ``(W, H)``.
        view_ids: scene view indices, or ``None``.
        partitions: ``[V, H, W]`` int32 indices into ``segment_table`` (``-1``: no segment), or ``None``.
        segment_table: ``[Σ_v n_v, D]`` float16 segment embeddings of all views, or ``None``.
    """

    def __init__(
        self,
        grids: Sequence[torch.Tensor],
        levels: Sequence[PyramidLevel],
        image_size: tuple[int, int],
        view_ids: list[int] | None = None,
        partitions: torch.Tensor | np.ndarray | None = None,
        segment_embeds: Sequence[torch.Tensor | np.ndarray] | None = None,
    ) -> None:
        if len(grids) != len(levels) or len(levels) < 2:
            raise ValueError(f"{len(grids)} grids for {len(levels)} levels (at least 2 needed)")
        self.grids = [torch.as_tensor(g).to(torch.float16) for g in grids]
        self.levels = list(levels)
        for g, lv in zip(self.grids, self.levels):
            if tuple(g.shape[1:3]) != lv.grid_shape:
                raise ValueError(f"grid {tuple(g.shape)} does not match level {lv} {lv.grid_shape}")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.view_ids = view_ids
        self.partitions: torch.Tensor | None = None
        self.segment_table: torch.Tensor | None = None
        if (partitions is None) != (segment_embeds is None):
            raise ValueError("full segmentation needs both partitions and segment embeddings")
        if partitions is not None and segment_embeds is not None:
            p = torch.as_tensor(np.asarray(partitions)).to(torch.int32).clone()
            w, h = self.image_size
            if p.shape != (self.n_views, h, w) or len(segment_embeds) != self.n_views:
                raise ValueError(f"partitions {tuple(p.shape)} do not match {self.n_views} views of {w}x{h}")
            tables = [torch.as_tensor(np.asarray(e)).to(torch.float16) for e in segment_embeds]
            offsets = np.cumsum([0] + [len(t) for t in tables])[:-1]
            for v in range(self.n_views):
                p[v] = torch.where(p[v] >= 0, p[v] + int(offsets[v]), p[v])
            self.partitions = p
            self.segment_table = torch.cat(tables, dim=0) if tables else torch.zeros(0, self.dim, dtype=torch.float16)
        self._starts = (
            [float(lv.row_centres[0]) for lv in self.levels],
            [float(lv.col_centres[0]) for lv in self.levels],
        )

    @property
    def n_levels(self) -> int:
        """Number of levels ``L``."""
        return len(self.levels)

    @property
    def n_views(self) -> int:
        """Number of views ``V``."""
        return int(self.grids[0].shape[0])

    @property
    def dim(self) -> int:
        """Embedding dimension ``D``."""
        return int(self.grids[0].shape[-1])

    @property
    def device(self) -> torch.device:
        """Device of the stored tensors."""
        return self.grids[0].device

    @property
    def nbytes(self) -> int:
        """Bytes held: grids, plus partitions and segment table when present."""
        n = sum(g.numel() * g.element_size() for g in self.grids)
        for t in (self.partitions, self.segment_table):
            if t is not None:
                n += t.numel() * t.element_size()
        return n

    def to(self, device: str | torch.device) -> ClipPyramid:
        """Move every tensor to ``device`` (in place); returns ``self``."""
        self.grids = [g.to(device) for g in self.grids]
        if self.partitions is not None:
            self.partitions = self.partitions.to(device)
        if self.segment_table is not None:
            self.segment_table = self.segment_table.to(device)
        return self

    def _segments(self, view: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """``[B]`` long index into ``segment_table`` of the pixel nearest ``(x, y)`` (``-1``: none)."""
        if self.partitions is None:
            return None
        w, h = self.image_size
        col = torch.floor(x.float() + 0.5).long().clamp(0, w - 1)
        row = torch.floor(y.float() + 0.5).long().clamp(0, h - 1)
        return self.partitions[view.long(), row, col].long()

    def _interp_level(self, li: int, view: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        lv = self.levels[li]
        g = self.grids[li]
        i0, wy = grid_coords(y, self._starts[0][li], lv.stride, lv.rows)
        j0, wx = grid_coords(x, self._starts[1][li], lv.stride, lv.cols)
        wy, wx = wy.float()[:, None], wx.float()[:, None]
        a = g[view, i0, j0].float()
        b = g[view, i0, j0 + 1].float()
        c = g[view, i0 + 1, j0].float()
        d = g[view, i0 + 1, j0 + 1].float()
        top = a * (1 - wx) + b * wx
        bottom = c * (1 - wx) + d * wx
        return top * (1 - wy) + bottom * wy

    def interp(self, view: torch.Tensor, x: torch.Tensor, y: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """Bilinear lookup of each sample's level (LERF).

        With full segmentation, samples whose pixel (nearest) lies in a segment get the segment's embedding.

        Args:
            view: ``[B]`` long index into the ``V`` views.
            x: ``[B]`` float column in pixel-index coordinates of the pyramid resolution.
            y: ``[B]`` float row.
            level: ``[B]`` long level index in ``[0, L - 1]``.

        Returns:
            ``[B, D]`` float32.
        """
        view = view.long().to(self.device)
        x, y, level = x.to(self.device), y.to(self.device), level.long().to(self.device)
        out = torch.zeros(len(view), self.dim, dtype=torch.float32, device=self.device)
        for li in torch.unique(level).tolist():
            if not 0 <= li < self.n_levels:
                raise ValueError(f"level {li} out of range [0, {self.n_levels - 1}]")
            sel = torch.nonzero(level == li).squeeze(1)
            out[sel] = self._interp_level(li, view[sel], x[sel], y[sel])
        return self._apply_segments(out, view, x, y)

    def _apply_segments(self, out: torch.Tensor, view: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seg = self._segments(view, x, y)
        if seg is None or self.segment_table is None:
            return out
        inside = seg >= 0
        if bool(inside.any()):
            out[inside] = self.segment_table[seg[inside]].float()
        return out

    def target(
        self, view: torch.Tensor, x: torch.Tensor, y: torch.Tensor, level_bin: torch.Tensor, u: torch.Tensor
    ) -> torch.Tensor:
        """LERF's training target: ``lerp(interp(level b), interp(level b + 1), u)`` (not re-normalised).

        With full segmentation, samples whose pixel lies in a segment get the segment's embedding.

        Args:
            view: ``[B]`` long view index.
            x: ``[B]`` float column (pixel-index coordinates).
            y: ``[B]`` float row.
            level_bin: ``[B]`` long ``b`` in ``[0, L - 2]``.
            u: ``[B]`` float in ``[0, 1]``.

        Returns:
            ``[B, D]`` float32.
        """
        b = level_bin.long().to(self.device)
        if len(b) and (int(b.min()) < 0 or int(b.max()) > self.n_levels - 2):
            raise ValueError(f"level bins must be in [0, {self.n_levels - 2}]")
        lo = self.interp(view, x, y, b)
        hi = self.interp(view, x, y, b + 1)
        t = u.to(self.device).float()[:, None]
        return lo + (hi - lo) * t

    def scale_value(self, level_bin: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """LERF's scale input of a sample: ``s_img = (b + u) / (L - 1)`` in ``[0, 1]``: ``[B]`` float32."""
        return (level_bin.float() + u.float()) / float(self.n_levels - 1)


def load_pyramid(
    scene: Scene,
    clip: ClipBackend,
    views: list[int],
    cfg: PyramidConfig | None = None,
    cache_root: Path | None = None,
    masks_backend: MaskBackend | None = None,
    verify: bool = False,
) -> ClipPyramid:
    """The pyramids of ``views`` with ``cfg.prior`` applied, computed or read from the cache.

    Args:
        scene: the scene.
        clip: CLIP backend.
        views: view indices (entry ``v`` of the result is ``views[v]``).
        cfg: pyramid settings.
        cache_root: cache folder (default ``<scene>/.ovs3d_cache``).
        masks_backend: class-agnostic mask proposer; required unless ``cfg.prior == "none"``.
        verify: checksum every cached file now instead of on first access.

    Returns:
        A :class:`ClipPyramid` at ``scene.image_size(cfg.downscale)``.

    Raises:
        ValueError: a prior is asked for without a mask backend.
    """
    cfg = cfg or PyramidConfig()
    if cfg.prior != "none" and masks_backend is None:
        raise ValueError(
            f"the {cfg.prior!r} pyramid prior needs a mask backend (masks_backend=..., e.g. SAM or sim masks); "
            'use prior="none" for plain LERF'
        )
    views = [int(v) for v in views]
    w, h = scene.image_size(cfg.downscale)
    levels = pyramid_levels(h, w, cfg.tile_ratios)
    feats = pyramid_features(scene, clip, views, cfg, cache_root, verify)
    tiles = None
    if cfg.prior != "none":
        assert masks_backend is not None
        tiles = segment_tiles(scene, clip, masks_backend, views, cfg, cache_root, verify)
    dim = int(feats.view_shape(0)[1]) if len(views) else int(clip.dim)
    grids = [torch.empty(len(views), *lv.grid_shape, dim, dtype=torch.float16) for lv in levels]
    partitions = np.full((len(views), h, w), -1, dtype=np.int32) if cfg.prior == "full_segmentation" else None
    seg_embeds: list[np.ndarray] = []
    for j in progress(range(len(views)), desc="CLIP pyramid (assemble)", work=Work("views")):
        per_level = unflatten_pyramid(np.asarray(feats[j]), levels)
        if tiles is not None:
            part = tiles.partition(j)
            emb = np.array(tiles.embeddings[j])
            if cfg.prior == "full_segmentation":
                assert partitions is not None
                partitions[j] = part
                seg_embeds.append(emb)
            else:
                per_level = apply_prior(per_level, levels, part, torch.from_numpy(emb), h, cfg.prior, cfg.tolerance)
        for li, g in enumerate(per_level):
            grids[li][j] = g
    pyramid = ClipPyramid(
        grids,
        levels,
        (w, h),
        view_ids=views,
        partitions=partitions,
        segment_embeds=seg_embeds if partitions is not None else None,
    )
    logger.info(
        "CLIP pyramid: %d views, %d levels at %dx%d, prior %s, %.1f MiB",
        len(views),
        len(levels),
        w,
        h,
        cfg.prior,
        pyramid.nbytes / 2**20,
    )
    return pyramid
