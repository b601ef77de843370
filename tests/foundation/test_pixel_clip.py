"""Alg. 1 (pixel CLIP features): window grid, jitter, coverage, painting, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ovs3d.foundation.base import ViewImage
from ovs3d.foundation.pixel_clip import (
    PixelClipConfig,
    encode_box_stream,
    paint_interpolate,
    paint_mean,
    patch_sizes,
    pixel_clip_features,
    scale_boxes,
    tile_grid,
    window_boxes,
    window_starts,
)


class FakeClip:
    """Deterministic ClipBackend: mean colour and box geometry of the crop through a fixed random matrix."""

    identity = "fake-clip"

    def __init__(self, dim: int = 16) -> None:
        self.dim = dim
        self.proj = np.random.default_rng(0).normal(size=(7, dim))
        self.calls: list[int] = []

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def encode_crops(self, view: ViewImage, boxes: np.ndarray) -> torch.Tensor:
        self.calls.append(len(boxes))
        h, w = view.rgb.shape[:2]
        rows = []
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            colour = view.rgb[y0:y1, x0:x1].reshape(-1, 3).mean(0)
            geo = np.array([x0 / w, y0 / h, x1 / w, y1 / h], dtype=np.float32)
            rows.append(np.concatenate([colour, geo]).astype(np.float64) @ self.proj)  # per crop: batch-free
        return torch.from_numpy(np.stack(rows).astype(np.float32))


def official_grid(height: int, width: int, patch: int, stride: int) -> list[tuple[int, int, int, int]]:
    """The official extract_clip_feature.py loops with the jitter set to 0."""
    out = []
    for x_idx in range((height - patch) // stride + 1 + int((height - patch) % stride > 0)):
        start_x = x_idx * stride
        for y_idx in range((width - patch) // stride + 1 + int((width - patch) % stride > 0)):
            start_y = y_idx * stride
            left, upper = max(start_y, 0), max(start_x, 0)
            right, lower = min(start_y + patch, width), min(start_x + patch, height)
            out.append((left, upper, right, lower))
    return out


def coverage(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    count = np.zeros((height, width), dtype=np.int64)
    for x0, y0, x1, y1 in boxes:
        count[y0:y1, x0:x1] += 1
    return count


SIZES = [(60, 80), (37, 53), (41, 41), (24, 100), (378, 504)]


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_window_grid_matches_official_code(height: int, width: int) -> None:
    for patch, stride in patch_sizes(height, width, PixelClipConfig()):
        boxes = window_boxes(height, width, patch, stride, 0, None)
        assert [tuple(b) for b in boxes.tolist()] == official_grid(height, width, patch, stride)
        for length in (height, width):
            n = (length - patch) // stride + 1 + int((length - patch) % stride > 0)
            assert len(window_starts(length, patch, stride)) == n


def test_reference_resolution_counts() -> None:
    # 4032x3024 at 1/8: patches 75, 54, 37 px with strides 18, 13, 9 (facts §3), 3453 crops in all.
    assert patch_sizes(378, 504, PixelClipConfig()) == [(75, 18), (54, 13), (37, 9)]
    boxes = scale_boxes(378, 504, PixelClipConfig(), view_seed=0)
    assert [len(b) for b in boxes] == [18 * 25, 26 * 36, 39 * 53]
    assert sum(len(b) for b in boxes) == 3453


@pytest.mark.parametrize(("height", "width"), SIZES)
@pytest.mark.parametrize("jitter", [True, False])
def test_every_pixel_covered_at_every_scale(height: int, width: int, jitter: bool) -> None:
    for boxes in scale_boxes(height, width, PixelClipConfig(jitter=jitter), view_seed=3):
        assert (coverage(boxes, height, width) > 0).all()


def test_box_sizes_and_jitter_bounds() -> None:
    height, width = 60, 80
    seen = set()
    for seed in range(5):
        boxes = scale_boxes(height, width, PixelClipConfig(seed=seed), view_seed=0)
        for (patch, stride), b in zip(patch_sizes(height, width, PixelClipConfig()), boxes):
            j = patch // 4
            base = window_boxes(height, width, patch, stride, 0, None)  # same grid, no jitter
            assert b.shape == base.shape and b.dtype == np.int64
            # outward only, by at most j per side, and inside the image
            push = np.concatenate([base[:, :2] - b[:, :2], b[:, 2:] - base[:, 2:]], axis=1)
            assert push.min() >= 0 and push.max() <= j
            assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
            assert (b[:, 2] <= width).all() and (b[:, 3] <= height).all()
            sides = np.concatenate([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]])
            assert sides.max() <= patch + 2 * j
            # unclipped windows (not touching a border) are between p and p + 2j per side
            inner = (b[:, 0] > 0) & (b[:, 1] > 0) & (b[:, 2] < width) & (b[:, 3] < height)
            inner_sides = np.concatenate([(b[:, 2] - b[:, 0])[inner], (b[:, 3] - b[:, 1])[inner]])
            assert inner_sides.min() >= patch and inner_sides.max() <= patch + 2 * j
            # interior left pushes: both 0 and j occur (randint is inclusive)
            interior = base[:, 0] >= j
            seen.update((j, int(v)) for v in push[interior, 0])
    for j in {patch // 4 for patch, _ in patch_sizes(height, width, PixelClipConfig())}:
        assert (j, 0) in seen and (j, j) in seen


def test_determinism_and_seeds() -> None:
    cfg = PixelClipConfig(seed=7)
    a = scale_boxes(60, 80, cfg, view_seed=11)
    b = scale_boxes(60, 80, PixelClipConfig(seed=7), view_seed=11)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    other_seed = scale_boxes(60, 80, PixelClipConfig(seed=8), view_seed=11)
    other_view = scale_boxes(60, 80, cfg, view_seed=12)
    assert not all(np.array_equal(x, y) for x, y in zip(a, other_seed))
    assert not all(np.array_equal(x, y) for x, y in zip(a, other_view))


def test_scale_order_largest_first() -> None:
    cfg = PixelClipConfig(patch_divisors=(10, 5, 7), jitter=False)
    sizes = patch_sizes(60, 80, cfg)
    assert [p for p, _ in sizes] == [12, 8, 6]
    boxes = scale_boxes(60, 80, cfg, 0)
    assert [int(b[0, 2] - b[0, 0]) for b in boxes] == [12, 8, 6]


def test_too_small_image_is_an_error() -> None:
    with pytest.raises(ValueError, match="too small"):
        patch_sizes(8, 40, PixelClipConfig())


def naive_paint(boxes: np.ndarray, embeds: np.ndarray, height: int, width: int) -> np.ndarray:
    acc = np.zeros((height, width, embeds.shape[1]), dtype=np.float64)
    count = np.zeros((height, width, 1), dtype=np.float64)
    for (x0, y0, x1, y1), e in zip(boxes, embeds):
        acc[y0:y1, x0:x1] += e
        count[y0:y1, x0:x1] += 1
    return acc / np.maximum(count, 1)


def test_paint_mean_equals_naive_loop() -> None:
    rng = np.random.default_rng(1)
    height, width, n, d = 23, 31, 60, 9
    x0 = rng.integers(0, width, n)
    y0 = rng.integers(0, height, n)
    boxes = np.stack([x0, y0, rng.integers(x0 + 1, width + 1), rng.integers(y0 + 1, height + 1)], axis=1)
    embeds = rng.normal(size=(n, d)).astype(np.float32)
    got = paint_mean(boxes, torch.from_numpy(embeds), height, width)
    assert got.shape == (height, width, d) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), naive_paint(boxes, embeds, height, width), atol=1e-5)
    # pixels no box covers are 0
    uncovered = coverage(boxes, height, width) == 0
    assert np.abs(got.numpy()[uncovered]).max(initial=0.0) == 0.0


def test_paint_mean_on_the_real_grid() -> None:
    height, width = 60, 80
    boxes = scale_boxes(height, width, PixelClipConfig(), 5)[2]
    embeds = np.random.default_rng(2).normal(size=(len(boxes), 8)).astype(np.float32) * 10
    got = paint_mean(boxes, torch.from_numpy(embeds), height, width)
    np.testing.assert_allclose(got.numpy(), naive_paint(boxes, embeds, height, width), rtol=1e-5, atol=1e-4)


def test_pixel_clip_features_shape_and_batching() -> None:
    rng = np.random.default_rng(0)
    view = ViewImage(stem="00", rgb=rng.random((30, 40, 3), dtype=np.float32))
    clip1, clip64 = FakeClip(), FakeClip()
    f1 = pixel_clip_features(clip1, view, PixelClipConfig(batch_size=1), view_seed=4)
    f64 = pixel_clip_features(clip64, view, PixelClipConfig(batch_size=64), view_seed=4)
    assert f64.shape == (3, 30, 40, 16) and f64.dtype == torch.float32
    assert torch.equal(f1, f64)
    # one stream of batches over all scales: only the very last batch may be short
    total = sum(len(b) for b in scale_boxes(30, 40, PixelClipConfig(), 4))
    assert sum(clip64.calls) == total and all(c == 64 for c in clip64.calls[:-1])
    assert len(clip1.calls) == total
    # matches painting the same boxes by hand
    boxes = scale_boxes(30, 40, PixelClipConfig(), 4)
    for s, b in enumerate(boxes):
        e = FakeClip().encode_crops(view, b).numpy()
        np.testing.assert_allclose(f64[s].numpy(), naive_paint(b, e, 30, 40), rtol=1e-5, atol=1e-5)


def test_encode_box_stream_splits_per_scale() -> None:
    view = ViewImage(stem=None, rgb=np.zeros((20, 20, 3), dtype=np.float32))
    boxes = [np.array([[0, 0, 5, 5]] * 3), np.array([[0, 0, 2, 2]] * 5)]
    out = encode_box_stream(FakeClip(), view, boxes, batch_size=4)
    assert [tuple(o.shape) for o in out] == [(3, 16), (5, 16)]


def test_lerf_tile_grid_counts() -> None:
    # LERF facts B.1, 738x994 images: (kernel, stride) -> rows x cols
    for (k, s), (r, c) in {(36, 36): (21, 28), (92, 57): (13, 18), (369, 184): (5, 6)}.items():
        boxes, rc, cc = tile_grid(738, 994, k, s)
        assert (len(rc), len(cc)) == (r, c) and len(boxes) == r * c
        assert ((boxes[:, 2] - boxes[:, 0]) == k).all()
        assert rc[0] == (k - 1) / 2 - k // 2
        np.testing.assert_allclose((boxes[:, 1] + boxes[:, 3] - 1) / 2, np.repeat(rc, c))


def test_paint_interpolate() -> None:
    rng = np.random.default_rng(0)
    _, rc, cc = tile_grid(40, 50, 10, 5)
    grid = torch.from_numpy(rng.normal(size=(len(rc), len(cc), 4)).astype(np.float32))
    out = paint_interpolate(grid, rc, cc, 40, 50)
    assert out.shape == (40, 50, 4)
    # exact at integer tile centres, clamped outside
    for i, y in enumerate(rc):
        for j, x in enumerate(cc):
            if float(y).is_integer() and float(x).is_integer() and 0 <= y < 40 and 0 <= x < 50:
                torch.testing.assert_close(out[int(y), int(x)], grid[i, j])
    const = paint_interpolate(torch.ones(len(rc), len(cc), 2), rc, cc, 40, 50)
    torch.testing.assert_close(const, torch.ones(40, 50, 2))
    # halfway between two centres = the mean of the two
    g = torch.tensor([[[0.0]], [[2.0]]])
    line = paint_interpolate(g, np.array([1.0, 3.0]), np.array([0.0]), 5, 1)[:, 0, 0]
    torch.testing.assert_close(line, torch.tensor([0.0, 0.0, 1.0, 2.0, 2.0]))
