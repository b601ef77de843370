"""Multi-scale, multi-spatial pixel-level CLIP features (3D-OVS, Alg. 1).

CLIP only embeds whole images. 3D-OVS turns it into a per-pixel feature by sliding square windows of
three sizes over the image, embedding every (randomly enlarged) window, and giving each pixel the mean
embedding of the windows that cover it, one map per window size ("scale"). This module follows the
official ``extract_clip_feature.py`` exactly, except that the window jitter is seeded:

- patch sizes ``p = min(H, W) // d`` for ``d`` in ``(5, 7, 10)``, the largest first;
- stride ``s = p // 4``; per axis of length ``L`` there are ``(L - p) // s + 1 + [(L - p) % s > 0]``
  windows starting at ``k * s``; the extra last window, clipped to the image, makes sure the border
  is covered when the stride does not tile;
- each side of a window is pushed outward by ``randint(0, p // 4)`` (inclusive), then clipped to the
  image, so crops are rectangles of ``p`` to ``p + 2 * (p // 4)`` pixels per side;
- each crop's raw embedding (not normalised) is averaged over every pixel of its whole box.

The stages are separate pure functions so that other crop pyramids reuse them:

1. **boxes** — :func:`window_boxes` / :func:`scale_boxes` give the 3D-OVS windows;
   :func:`tile_grid` gives LERF's square tiles on a regular grid of tile centres.
2. **encode** — :func:`encode_box_stream` sends the boxes of all scales through
   ``ClipBackend.encode_crops`` as one stream of fixed-size batches (batching never changes results).
3. **paint** — :func:`paint_mean` (3D-OVS: a pixel is the mean of the boxes covering it; computed with
   2D difference arrays in ``O(N·D + H·W·D)``) or :func:`paint_interpolate` (LERF: bilinear
   interpolation between tile centres, clamped at the border).

An LERF pyramid is therefore ``tile_grid`` per level -> ``encode_box_stream`` -> ``paint_interpolate``
per level (or keep the ``[rows, cols, D]`` grids and interpolate at training time, as LERF does).
LERF's tiles are zero-padded at the image border, so their boxes reach outside the image: that needs
an ``encode_crops`` that accepts such boxes and fills the outside with zeros (SimCLIP's "padding counts
as nothing"), or a view padded by ``kernel // 2`` on every side with the boxes shifted accordingly.
3D-OVS boxes are always inside the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ovs3d.foundation.base import ClipBackend, ViewImage
from ovs3d.utils.config import check_on_init, rule
from ovs3d.utils.console import advance


@dataclass
class PixelClipConfig:
    """Settings of Alg. 1 (defaults = the official 3D-OVS code)."""

    patch_divisors: tuple[int, ...] = field(default=(5, 7, 10), metadata=rule(ge=1, min_len=1))
    """Window side of each scale is ``min(H, W) // d``; scales are ordered largest window first."""
    stride_divisor: int = field(default=4, metadata=rule(ge=1))
    """Window stride is ``patch // stride_divisor`` (at least 1). The jitter bound is the same number
    (``patch // 4`` in the official code, ``randint(0, stride)`` in the paper's pseudo-code)."""
    jitter: bool = True
    """Push each side of each window outward by a random ``0..patch // stride_divisor`` pixels."""
    seed: int = field(default=0, metadata=rule(ge=0))
    """Seed of the jitter; combined with a per-view seed so every view gets its own reproducible draw."""
    batch_size: int = field(default=64, metadata=rule(ge=1))
    """Crops per ``encode_crops`` call (memory/speed only; results do not depend on it)."""

    def __post_init__(self) -> None:
        self.patch_divisors = tuple(int(d) for d in self.patch_divisors)
        check_on_init(self)


def patch_sizes(height: int, width: int, cfg: PixelClipConfig) -> list[tuple[int, int]]:
    """``(patch, stride)`` of every scale, in scale order (largest patch first).

    Raises:
        ValueError: the image is too small for a divisor (the patch would be 0 pixels).
    """
    short = min(height, width)
    out = []
    for d in sorted(cfg.patch_divisors):
        patch = short // d
        if patch < 1:
            raise ValueError(f"image {width}x{height} is too small for patch divisor {d} (min side < {d} px)")
        out.append((patch, max(1, patch // cfg.stride_divisor)))
    return out


def window_starts(length: int, patch: int, stride: int) -> np.ndarray:
    """Window start offsets along one axis, as the official code: ``[n]`` int64.

    ``n = (length - patch) // stride + 1 + [(length - patch) % stride > 0]``; window ``k`` starts at
    ``k * stride``, and the last one may run past the end (it is clipped later).
    """
    if not 1 <= patch <= length:
        raise ValueError(f"patch {patch} must be in [1, {length}]")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    rest = length - patch
    n = rest // stride + 1 + int(rest % stride > 0)
    return np.arange(n, dtype=np.int64) * stride


def crops_per_view(height: int, width: int, cfg: PixelClipConfig) -> int:
    """How many crops Alg. 1 encodes for one ``width`` x ``height`` view (all scales; the jitter changes no count).

    Window sides follow the image's short side, so the count depends on the aspect ratio and ``cfg``, not on
    the resolution: about ``16 d^2 W / H`` per divisor ``d`` with the default stride (3,133 for 4:3 images).
    """
    return sum(
        len(window_starts(height, patch, stride)) * len(window_starts(width, patch, stride))
        for patch, stride in patch_sizes(height, width, cfg)
    )


def window_boxes(
    height: int,
    width: int,
    patch: int,
    stride: int,
    jitter_max: int,
    rng: np.random.Generator | None,
) -> np.ndarray:
    """The sliding windows of one scale: ``[N, 4]`` int64 ``(x0, y0, x1, y1)``, x1/y1 exclusive.

    Windows are ordered row-major (rows outer, as the official loop). Each side is pushed outward by an
    independent ``rng.integers(0, jitter_max, endpoint=True)`` (drawn per window in the order left,
    top, right, bottom), then clipped to the image. The union of the boxes covers every pixel.

    Args:
        height: image height ``H``.
        width: image width ``W``.
        patch: window side ``p`` (``1 <= p <= min(H, W)``).
        stride: window step (``>= 1``).
        jitter_max: largest outward push per side; 0 or ``rng=None`` disables the jitter.
        rng: random generator of the jitter.
    """
    ys = window_starts(height, patch, stride)
    xs = window_starts(width, patch, stride)
    y0, x0 = np.meshgrid(ys, xs, indexing="ij")
    boxes = np.stack([x0.ravel(), y0.ravel(), x0.ravel() + patch, y0.ravel() + patch], axis=1)  # [N, 4]
    if jitter_max > 0 and rng is not None:
        r = rng.integers(0, jitter_max, size=(len(boxes), 4), endpoint=True)  # [N, 4] left, top, right, bottom
        boxes = boxes + r * np.array([-1, -1, 1, 1], dtype=np.int64)
    np.clip(boxes[:, 0::2], 0, width, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, height, out=boxes[:, 1::2])
    return boxes.astype(np.int64)


def view_rng(seed: int, view_seed: int) -> np.random.Generator:
    """The jitter generator of one view, seeded from ``(seed, view_seed)`` (both non-negative ints)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(view_seed) & 0xFFFFFFFF])


def scale_boxes(height: int, width: int, cfg: PixelClipConfig, view_seed: int) -> list[np.ndarray]:
    """The windows of every scale of one view: a list (largest patch first) of ``[N_s, 4]`` int64.

    The jitter is drawn from :func:`view_rng` ``(cfg.seed, view_seed)``, scale after scale, so the
    same config and view seed always give the same boxes.
    """
    rng = view_rng(cfg.seed, view_seed) if cfg.jitter else None
    out = []
    for patch, stride in patch_sizes(height, width, cfg):
        jitter = patch // cfg.stride_divisor if cfg.jitter else 0
        out.append(window_boxes(height, width, patch, stride, jitter, rng))
    return out


def tile_grid(height: int, width: int, kernel: int, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LERF's square tiles of one pyramid level (``Unfold`` with zero padding ``kernel // 2``).

    Boxes may reach outside the image (by up to ``kernel // 2``): the outside is meant to be zeros.

    Args:
        height: image height ``H``.
        width: image width ``W``.
        kernel: tile side ``k``.
        stride: step between tiles.

    Returns:
        ``(boxes [R*C, 4] int64 (x0, y0, x1, y1) row-major, row_centres [R] float64, col_centres [C]
        float64)``, centres in pixel-index units (pixel ``i`` has centre ``i``):
        ``c_j = (k - 1) / 2 - k // 2 + j * stride``, with ``n = (L + 2 * (k // 2) - k) // stride + 1``.
    """
    if kernel < 1 or stride < 1:
        raise ValueError(f"kernel and stride must be >= 1, got {kernel}, {stride}")
    pad = kernel // 2

    def axis(length: int) -> tuple[np.ndarray, np.ndarray]:
        n = (length + 2 * pad - kernel) // stride + 1
        if n < 1:
            raise ValueError(f"kernel {kernel} does not fit a padded side of {length} px")
        starts = np.arange(n, dtype=np.int64) * stride - pad
        return starts, starts + (kernel - 1) / 2.0

    ys, row_c = axis(height)
    xs, col_c = axis(width)
    y0, x0 = np.meshgrid(ys, xs, indexing="ij")
    boxes = np.stack([x0.ravel(), y0.ravel(), x0.ravel() + kernel, y0.ravel() + kernel], axis=1)
    return boxes.astype(np.int64), row_c, col_c


def encode_box_stream(
    clip: ClipBackend, view: ViewImage, boxes: Sequence[np.ndarray], batch_size: int
) -> list[torch.Tensor]:
    """Embed the boxes of several scales as one stream of batches of ``batch_size`` crops.

    Args:
        clip: the CLIP backend.
        view: the image the boxes refer to.
        boxes: per scale, ``[N_s, 4]`` int boxes.
        batch_size: crops per ``encode_crops`` call.

    Returns:
        Per scale, ``[N_s, D]`` float32 embeddings (on the backend's output device).
    """
    counts = [len(b) for b in boxes]
    stream = np.concatenate([np.asarray(b, dtype=np.int64).reshape(-1, 4) for b in boxes], axis=0)
    chunks = []
    for i in range(0, len(stream), batch_size):
        chunks.append(clip.encode_crops(view, stream[i : i + batch_size]).float())
        advance(len(chunks[-1]))  # the crops of a view being cached count in its progress
    if not chunks:
        return [torch.zeros(0, clip.dim) for _ in boxes]
    embeds = torch.cat(chunks, dim=0)  # [sum N_s, D]
    if embeds.shape[0] != len(stream):
        raise RuntimeError(f"encode_crops returned {embeds.shape[0]} embeddings for {len(stream)} boxes")
    return list(torch.split(embeds, counts, dim=0))


def paint_mean(boxes: np.ndarray | torch.Tensor, embeds: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Give each pixel the mean embedding of the boxes covering it (3D-OVS painting).

    Uses 2D difference arrays: each box adds its embedding at its four corners with signs ``+ - - +``,
    and two cumulative sums turn that into per-pixel sums, so the cost is ``O(N·D + H·W·D)`` instead of
    ``O(N·area·D)``. Pixels covered by no box are 0.

    Args:
        boxes: ``[N, 4]`` int ``(x0, y0, x1, y1)``, exclusive ends, inside the image.
        embeds: ``[N, D]`` embeddings.
        height: image height ``H``.
        width: image width ``W``.

    Returns:
        ``[H, W, D]`` float32 on the device of ``embeds``.
    """
    device = embeds.device
    b = torch.as_tensor(np.asarray(boxes) if not torch.is_tensor(boxes) else boxes, device=device).long()
    b = b.reshape(-1, 4)
    e = embeds.to(torch.float32).reshape(len(b), -1)  # [N, D]
    n, d = e.shape
    x0, y0, x1, y1 = b.unbind(1)
    if n and (x0.min() < 0 or y0.min() < 0 or x1.max() > width or y1.max() > height):
        raise ValueError("paint_mean boxes must lie inside the image")
    # Corner rows/cols of the (H+1) x (W+1) difference grid, and their signs.
    ys = torch.cat([y0, y0, y1, y1])
    xs = torch.cat([x0, x1, x0, x1])
    sign = torch.cat([torch.ones(n), -torch.ones(n), -torch.ones(n), torch.ones(n)]).to(device)  # [4N]
    flat = ys * (width + 1) + xs  # [4N]
    acc = torch.zeros((height + 1) * (width + 1), d + 1, dtype=torch.float32, device=device)
    vals = torch.cat([e.repeat(4, 1), torch.ones(4 * n, 1, device=device)], dim=1) * sign[:, None]  # [4N, D+1]
    acc.index_add_(0, flat, vals)
    grid = acc.view(height + 1, width + 1, d + 1)
    grid.cumsum_(0)
    grid.cumsum_(1)
    out = grid[:height, :width]  # [H, W, D+1]
    count = out[..., d:].round()  # exact integers up to float error
    feats = out[..., :d] / count.clamp_min(1.0)
    return feats.contiguous()


def _lerp_axis(values: torch.Tensor, centres: np.ndarray, length: int, dim: int) -> torch.Tensor:
    """Linear interpolation of ``values`` along ``dim`` (one entry per centre) at pixels ``0..length-1``."""
    c = torch.as_tensor(np.asarray(centres, dtype=np.float64))
    n = len(c)
    pos = torch.arange(length, dtype=torch.float64)
    if n == 1:
        idx = torch.zeros(length, dtype=torch.long)
        return values.index_select(dim, idx.to(values.device))
    i0 = (torch.searchsorted(c, pos, right=True) - 1).clamp(0, n - 2)  # [L]
    w = ((pos - c[i0]) / (c[i0 + 1] - c[i0])).clamp(0.0, 1.0).to(values.dtype).to(values.device)
    a = values.index_select(dim, i0.to(values.device))
    b = values.index_select(dim, (i0 + 1).to(values.device))
    shape = [1] * values.dim()
    shape[dim] = length
    w = w.view(shape)
    return a + (b - a) * w


def paint_interpolate(
    grid: torch.Tensor, row_centres: np.ndarray, col_centres: np.ndarray, height: int, width: int
) -> torch.Tensor:
    """Bilinearly interpolate a grid of tile embeddings at every pixel (LERF painting).

    Pixels beyond the outermost centres take the nearest edge value (clamped), which matches LERF's
    duplicated last row/column.

    Args:
        grid: ``[R, C, D]`` embeddings of the tiles, row-major as :func:`tile_grid` orders them.
        row_centres: ``[R]`` increasing tile-centre rows (pixel-index units).
        col_centres: ``[C]`` increasing tile-centre columns.
        height: image height ``H``.
        width: image width ``W``.

    Returns:
        ``[H, W, D]`` float32 on the device of ``grid``.
    """
    g = grid.to(torch.float32)
    if g.shape[0] != len(row_centres) or g.shape[1] != len(col_centres):
        raise ValueError(f"grid {tuple(g.shape)} does not match {len(row_centres)}x{len(col_centres)} centres")
    rows = _lerp_axis(g, row_centres, height, 0)  # [H, C, D]
    return _lerp_axis(rows, col_centres, width, 1).contiguous()  # [H, W, D]


def pixel_clip_features(
    clip: ClipBackend, view: ViewImage, cfg: PixelClipConfig | None = None, view_seed: int = 0
) -> torch.Tensor:
    """Alg. 1: multi-scale pixel-level CLIP features of one view.

    Args:
        clip: the CLIP backend (its ``encode_crops`` sees every window of every scale, in batches of
            ``cfg.batch_size`` drawn from one stream over all scales).
        view: the image, ``rgb [H, W, 3]``.
        cfg: window settings (defaults = official code).
        view_seed: per-view seed of the jitter (e.g. a stable hash of the image stem).

    Returns:
        ``[S, H, W, D]`` float32 features, scales ordered largest patch first, not normalised (like the
        reference), on the device of the backend's output.
    """
    cfg = cfg or PixelClipConfig()
    height, width = int(view.rgb.shape[0]), int(view.rgb.shape[1])
    boxes = scale_boxes(height, width, cfg, view_seed)
    embeds = encode_box_stream(clip, view, boxes, cfg.batch_size)
    out = torch.empty(len(boxes), height, width, embeds[0].shape[1], device=embeds[0].device)
    for s, (b, e) in enumerate(zip(boxes, embeds)):
        out[s] = paint_mean(b, e, height, width)
    return out
