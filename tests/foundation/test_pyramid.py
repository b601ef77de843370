"""LERF's CLIP pyramid and the panoptic-prior segment tiles (``ovs3d.foundation.pyramid``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ovs3d.foundation.base import ViewImage
from ovs3d.foundation.pixel_clip import paint_interpolate, tile_grid
from ovs3d.foundation.pyramid import (
    LERF_TILE_RATIOS,
    ClipPyramid,
    PyramidConfig,
    apply_prior,
    centre_pixels,
    centred_tiles,
    encode_pyramid,
    encode_segments,
    flatten_pyramid,
    grid_coords,
    load_pyramid,
    override_levels,
    panoptic_partition,
    pyramid_features,
    pyramid_levels,
    segment_boxes,
    segment_scales,
    segment_tiles,
    square_boxes,
    unflatten_pyramid,
)
from ovs3d.foundation.sim import SimCLIP, SimScene

# ---- helpers --------------------------------------------------------------------------------------


def key_vector(key: tuple[int, ...], dim: int) -> np.ndarray:
    """A fixed random vector per integer tuple (boxes may be negative)."""
    return np.random.default_rng([int(k) + 100_000 for k in key]).standard_normal(dim)


class KeyClip:
    """Fake CLIP: a crop's embedding is a random vector keyed by its box (and content box), times 3."""

    identity = "key-clip"
    dim = 16

    def __init__(self) -> None:
        self.n_crops = 0
        self.calls: list[tuple[np.ndarray, np.ndarray | None]] = []

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def embed(self, box, content=None) -> np.ndarray:
        key = tuple(int(v) for v in box) + (() if content is None else tuple(int(v) for v in content))
        return 3.0 * key_vector(key, self.dim)

    def encode_crops(self, view: ViewImage, boxes: np.ndarray, *, content: np.ndarray | None = None) -> torch.Tensor:
        b = np.asarray(boxes).reshape(-1, 4)
        self.n_crops += len(b)
        self.calls.append((b.copy(), None if content is None else np.asarray(content).copy()))
        rows = [self.embed(bi, None if content is None else content[i]) for i, bi in enumerate(b)]
        return torch.from_numpy(np.stack(rows).astype(np.float32)) if rows else torch.zeros(0, self.dim)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def rect_partition(h: int, w: int, rects: list[tuple[int, int, int, int]]) -> np.ndarray:
    """Partition with segment ``s`` = rect ``s`` (x0, y0, x1, y1), later rects painted over earlier ones."""
    p = np.full((h, w), -1, dtype=np.int32)
    for s, (x0, y0, x1, y1) in enumerate(rects):
        p[y0:y1, x0:x1] = s
    return p


def one_view_pyramid(h: int, w: int, clip=None, ratios=LERF_TILE_RATIOS):
    clip = clip or KeyClip()
    levels = pyramid_levels(h, w, ratios)
    view = ViewImage("v", np.zeros((h, w, 3), np.float32))
    return levels, encode_pyramid(clip, view, levels, batch_size=50), clip


# ---- levels ---------------------------------------------------------------------------------------

LERF_738x994 = [(36, 36, 21, 28), (92, 57, 13, 18), (147, 73, 11, 14), (202, 101, 8, 10), (258, 129, 6, 8)]
LERF_738x994 += [(313, 156, 5, 7), (369, 184, 5, 6)]


def test_levels_match_lerf_on_738x994() -> None:
    levels = pyramid_levels(738, 994)
    assert [(lv.kernel, lv.stride, lv.rows, lv.cols) for lv in levels] == LERF_738x994
    assert np.allclose(LERF_TILE_RATIOS, np.linspace(0.05, 0.5, 7))
    assert sum(lv.rows * lv.cols for lv in levels) == 1169  # ~1.17k CLIP forwards per image


@pytest.mark.parametrize("h, w", [(738, 994), (378, 504), (48, 64), (37, 53), (100, 31)])
def test_centres_and_counts_follow_the_formulas(h: int, w: int) -> None:
    for lv in pyramid_levels(h, w):
        k, s = lv.kernel, lv.stride
        assert k == int(h * lv.ratio)
        assert s == max(1, int(k * np.interp(lv.ratio, [0.05, 0.15], [1.0, 0.5])))
        for n, centres, length in ((lv.rows, lv.row_centres, h), (lv.cols, lv.col_centres, w)):
            assert n == int(np.floor((length + 2 * (k // 2) - k) / s + 1))
            np.testing.assert_array_equal(centres, (k - 1) / 2 - k // 2 + np.arange(n) * s)
        boxes = lv.boxes(h, w)
        assert len(boxes) == lv.rows * lv.cols
        np.testing.assert_array_equal(boxes, tile_grid(h, w, k, s)[0])
        # box centres = tile centres
        np.testing.assert_allclose((boxes[:: lv.cols, 1] + boxes[:: lv.cols, 3] - 1) / 2, lv.row_centres)


def test_config_validation() -> None:
    assert PyramidConfig().tile_ratios == LERF_TILE_RATIOS
    with pytest.raises(ValueError, match="prior"):
        PyramidConfig(prior="segments")
    with pytest.raises(ValueError, match="increasing"):
        PyramidConfig(tile_ratios=(0.2, 0.1))
    with pytest.raises(ValueError, match="no pixel"):
        pyramid_levels(10, 10, (0.05, 0.5))


# ---- encoding and layout --------------------------------------------------------------------------


def test_encode_pyramid_normalised_with_duplicated_last_row_and_column() -> None:
    h, w = 40, 56
    levels, grids, clip = one_view_pyramid(h, w)
    assert clip.n_crops == sum(lv.rows * lv.cols for lv in levels)
    assert len(clip.calls) == -(-clip.n_crops // 50)  # one stream over all levels
    for lv, g in zip(levels, grids):
        assert g.shape == (lv.rows + 1, lv.cols + 1, clip.dim) and g.dtype == torch.float32
        torch.testing.assert_close(g.norm(dim=-1), torch.ones(lv.rows + 1, lv.cols + 1))
        torch.testing.assert_close(g[-1], g[-2], rtol=0, atol=0)
        torch.testing.assert_close(g[:, -1], g[:, -2], rtol=0, atol=0)
        boxes = lv.boxes(h, w)
        for t in (0, len(boxes) // 2, len(boxes) - 1):
            expect = unit(clip.embed(boxes[t])).astype(np.float32)
            np.testing.assert_allclose(g[t // lv.cols, t % lv.cols].numpy(), expect, rtol=1e-5, atol=1e-6)


def test_flatten_round_trip() -> None:
    levels, grids, _ = one_view_pyramid(30, 45)
    flat = flatten_pyramid(grids)
    assert flat.shape == (sum((lv.rows + 1) * (lv.cols + 1) for lv in levels), 16)
    back = unflatten_pyramid(flat.astype(np.float16), levels)
    for a, b in zip(grids, back):
        assert b.dtype == torch.float16
        torch.testing.assert_close(b.float(), a, atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError):
        unflatten_pyramid(flat[1:], levels)


# ---- lookups --------------------------------------------------------------------------------------


def stack(grids: list[torch.Tensor]) -> list[torch.Tensor]:
    return [g[None] for g in grids]


def test_lookup_at_tile_centres_returns_the_tile_exactly() -> None:
    h, w = 48, 64
    levels, grids, _ = one_view_pyramid(h, w)
    pyr = ClipPyramid(stack(grids), levels, (w, h))
    for li, lv in enumerate(levels):
        yy, xx = np.meshgrid(lv.row_centres, lv.col_centres, indexing="ij")
        b = yy.size
        out = pyr.interp(
            torch.zeros(b, dtype=torch.long), torch.tensor(xx.ravel()), torch.tensor(yy.ravel()), torch.full((b,), li)
        )
        expect = grids[li][: lv.rows, : lv.cols].reshape(-1, 16).half().float()
        torch.testing.assert_close(out, expect, rtol=0, atol=0)


@pytest.mark.parametrize("h, w", [(738, 994), (378, 504), (48, 64), (37, 53), (100, 31), (31, 100)])
def test_raw_weights_and_indices_in_range_for_every_pixel(h: int, w: int) -> None:
    for lv in pyramid_levels(h, w):
        for n, centres, length in ((lv.rows, lv.row_centres, h), (lv.cols, lv.col_centres, w)):
            pos = torch.arange(length, dtype=torch.float32)
            i0, wt = grid_coords(pos, float(centres[0]), lv.stride, n, clamp=False)
            assert int(i0.min()) >= 0 and int(i0.max()) <= n - 1
            assert float(wt.min()) >= 0.0 and float(wt.max()) < 1.0
            # the weight is the fractional offset to the centre i0
            np.testing.assert_allclose(pos.numpy(), centres[i0.numpy()] + wt.numpy() * lv.stride, atol=1e-4)


def test_lookup_matches_painted_interpolation_and_clamps_outside() -> None:
    h, w = 37, 53
    levels, grids, _ = one_view_pyramid(h, w)
    pyr = ClipPyramid(stack(grids), levels, (w, h))
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    n = h * w
    for li, lv in enumerate(levels):
        g = grids[li].half().float()
        painted = paint_interpolate(g[: lv.rows, : lv.cols], lv.row_centres, lv.col_centres, h, w)
        out = pyr.interp(torch.zeros(n, dtype=torch.long), xx.ravel(), yy.ravel(), torch.full((n,), li))
        torch.testing.assert_close(out, painted.reshape(n, -1), atol=1e-5, rtol=1e-5)
    # far outside the image: clamped to the border entries
    far = pyr.interp(
        torch.zeros(2, dtype=torch.long),
        torch.tensor([-50.0, 500.0]),
        torch.tensor([-50.0, 500.0]),
        torch.zeros(2, dtype=torch.long),
    )
    torch.testing.assert_close(far[0], grids[0][0, 0].half().float())
    torch.testing.assert_close(far[1], grids[0][-1, -1].half().float())


def test_target_lerps_between_levels_and_scale_value() -> None:
    h, w = 48, 64
    _, grids_a, _ = one_view_pyramid(h, w)
    levels, grids_b, _ = one_view_pyramid(h, w, clip=KeyClip())
    grids_b = [g.flip(-1) for g in grids_b]  # another view
    pyr = ClipPyramid([torch.stack([a, b]) for a, b in zip(grids_a, grids_b)], levels, (w, h), view_ids=[3, 5])
    assert pyr.n_levels == 7 and pyr.n_views == 2 and pyr.dim == 16
    assert pyr.nbytes == sum(2 * lv.n_stored * 16 * 2 for lv in levels)
    g = torch.Generator().manual_seed(0)
    b = 200
    view = torch.randint(0, 2, (b,), generator=g)
    x, y = torch.rand(b, generator=g) * (w - 1), torch.rand(b, generator=g) * (h - 1)
    lb = torch.randint(0, 6, (b,), generator=g)
    u = torch.rand(b, generator=g)
    t = pyr.target(view, x, y, lb, u)
    lo, hi = pyr.interp(view, x, y, lb), pyr.interp(view, x, y, lb + 1)
    torch.testing.assert_close(t, lo * (1 - u[:, None]) + hi * u[:, None])
    torch.testing.assert_close(pyr.target(view, x, y, lb, torch.zeros(b)), lo, rtol=0, atol=0)
    assert not torch.allclose(t.norm(dim=-1), torch.ones(b))  # not re-normalised
    torch.testing.assert_close(pyr.scale_value(lb, u), (lb + u) / 6)
    # the two views differ
    one = pyr.interp(torch.tensor([0, 1]), torch.tensor([5.0, 5.0]), torch.tensor([5.0, 5.0]), torch.tensor([2, 2]))
    assert not torch.allclose(one[0], one[1])
    with pytest.raises(ValueError):
        pyr.target(view, x, y, torch.full((b,), 6), u)


# ---- the override rule and segments ---------------------------------------------------------------


def test_override_rule_on_lerf_ratios() -> None:
    # ratios 0.05 0.125 0.2 0.275 0.35 0.425 0.5; window of level i: (s_{i-1}·1.1, s_{i+1}·1.1]
    table = {
        0.03: [0],
        0.05: [0],
        0.1: [0, 1],
        0.2: [1, 2],
        0.3: [2, 3],
        0.45: [4, 5],
        0.5: [0, 1, 2, 3, 4, 5, 6],  # s_x >= s_max: every level
        0.8: [0, 1, 2, 3, 4, 5, 6],
    }
    for s, expect in table.items():
        got = override_levels(s, LERF_TILE_RATIOS, 1.1)
        assert got.shape == (7,) and got.dtype == bool
        assert np.nonzero(got)[0].tolist() == expect, s
    # edges: s_{i+1}·1.1 is inside level i's window, s_{i-1}·1.1 is not
    assert np.nonzero(override_levels(0.125 * 1.1))[0].tolist() == [0, 1]
    assert np.nonzero(override_levels(0.49))[0].tolist() == [5, 6]  # s_7 = +inf: the top level takes it
    assert np.nonzero(override_levels(0.2, tolerance=1.0))[0].tolist() == [1, 2]


def test_panoptic_partition_smallest_mask_wins() -> None:
    m = np.zeros((4, 6, 8), bool)
    m[0] = True  # background (largest)
    m[0, 5, :] = False  # bottom row uncovered
    m[1, 1:4, 1:4] = True
    m[2, 2:3, 2:3] = True  # inside mask 1
    m[3, 1:4, 1:4] = True  # same as mask 1: equal areas, the later wins, mask 1 is left with no pixel
    p = panoptic_partition(m)
    assert p.dtype == np.int32 and p.shape == (6, 8)
    assert (p[5] == -1).all()
    assert p[0, 0] == 0 and p[2, 2] == 1 and p[1, 1] == 2  # ids in mask order: 0, 2, 3 -> 0, 1, 2
    assert sorted(np.unique(p).tolist()) == [-1, 0, 1, 2]
    assert (panoptic_partition(np.zeros((0, 3, 4), bool)) == -1).all()


def test_segment_and_square_boxes() -> None:
    p = rect_partition(20, 30, [(0, 0, 30, 20), (3, 4, 10, 7), (20, 2, 23, 18)])
    bb = segment_boxes(p)
    assert bb.tolist() == [[0, 0, 30, 20], [3, 4, 10, 7], [20, 2, 23, 18]]
    sq = square_boxes(bb)
    # 30x20 -> side 30, 10 rows of padding split 5 / 5; 7x3 -> side 7, 4 rows split 2 / 2; 3x16 -> 13: 6 / 7
    assert sq.tolist() == [[0, -5, 30, 25], [3, 2, 10, 9], [14, 2, 30, 18]]
    np.testing.assert_allclose(segment_scales(p, 20), [1.5, 7 / 20, 16 / 20])
    with pytest.raises(ValueError, match="consecutive"):
        segment_boxes(np.array([[0, 2]]))


def test_encode_segments_uses_square_boxes_with_the_bbox_as_content() -> None:
    p = rect_partition(20, 30, [(0, 0, 30, 20), (3, 4, 10, 7), (20, 2, 23, 18)])
    clip = KeyClip()
    view = ViewImage("v", np.zeros((20, 30, 3), np.float32))
    e = encode_segments(clip, view, p, batch_size=2)
    assert e.shape == (3, 16) and len(clip.calls) == 2
    bb, sq = segment_boxes(p), square_boxes(segment_boxes(p))
    for s in range(3):
        np.testing.assert_allclose(e[s].numpy(), unit(clip.embed(sq[s], bb[s])), rtol=1e-5, atol=1e-6)
    assert encode_segments(clip, view, np.full((20, 30), -1, np.int32)).shape == (0, 16)


def segments_scene(h: int = 120, w: int = 160) -> tuple[np.ndarray, torch.Tensor]:
    """A background, objects of several sizes (and one with no tile centre at fine levels)."""
    rects = [
        (0, 0, w, h),  # background stuff, s_x = 160 / 120 >= s_max: every level
        (10, 10, 22, 19),  # 12 px: s_x = 0.1 -> levels 0, 1
        (40, 30, 64, 54),  # 24 px: 0.2 -> levels 1, 2
        (80, 60, 116, 100),  # 40 px: 0.33 -> levels 3, 4
        (130, 5, 131, 6),  # one pixel: no tile centre unless one falls on it
    ]
    p = rect_partition(h, w, rects)
    e = F.normalize(torch.randn(len(rects), 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    return p, e


def test_panoptic_override_at_most_one_tile_per_segment_per_level() -> None:
    h, w = 120, 160
    p, e = segments_scene(h, w)
    levels, grids, _ = one_view_pyramid(h, w)
    out = apply_prior(grids, levels, p, e, h, "panoptic", 1.1)
    bb = segment_boxes(p)
    scales = segment_scales(p, h)
    n_overrides = 0
    for li, (lv, g0, g1) in enumerate(zip(levels, grids, out)):
        assert g1.shape == g0.shape
        torch.testing.assert_close(g1[-1], g1[-2], rtol=0, atol=0)  # duplicated after overriding
        torch.testing.assert_close(g1[:, -1], g1[:, -2], rtol=0, atol=0)
        inner0, inner1 = g0[: lv.rows, : lv.cols].reshape(-1, 16), g1[: lv.rows, : lv.cols].reshape(-1, 16)
        changed = np.nonzero((inner0 != inner1).any(dim=1).numpy())[0]
        rows, cols = centre_pixels(lv.row_centres, h), centre_pixels(lv.col_centres, w)
        seen = set()
        for t in changed:
            match = torch.isclose(inner1[t][None], e).all(dim=1).nonzero().ravel().tolist()
            assert len(match) == 1
            s = match[0]
            assert s not in seen  # at most one tile per segment per level
            seen.add(s)
            assert override_levels(scales[s], LERF_TILE_RATIOS)[li]
            cy, cx = rows[t // lv.cols], cols[t % lv.cols]
            assert p[cy, cx] == s  # the tile's centre pixel lies in the segment
            # and it is the nearest such centre to the segment's box centre
            cand = [q for q in range(lv.rows * lv.cols) if p[rows[q // lv.cols], cols[q % lv.cols]] == s]
            by, bx = (bb[s, 1] + bb[s, 3] - 1) / 2, (bb[s, 0] + bb[s, 2] - 1) / 2
            d = [(lv.row_centres[q // lv.cols] - by) ** 2 + (lv.col_centres[q % lv.cols] - bx) ** 2 for q in cand]
            assert t == cand[int(np.argmin(d))]
        # every active segment with a tile centre in it got exactly one tile
        tiles = centred_tiles(lv, p, bb)
        for s in range(len(bb)):
            expect = override_levels(scales[s], LERF_TILE_RATIOS)[li] and tiles[s] >= 0
            assert (s in seen) == bool(expect), (li, s)
        n_overrides += len(seen)
        # input grids are not modified
        assert not torch.equal(g0, g1) or not seen
    assert n_overrides >= 7 + 2  # background at every level, plus the objects
    assert centred_tiles(levels[-1], p, bb)[4] == -1  # the 1-pixel segment has no coarse tile centre


def test_panoptic_all_overrides_every_tile_centred_in_an_active_segment() -> None:
    h, w = 120, 160
    p, e = segments_scene(h, w)
    levels, grids, _ = one_view_pyramid(h, w)
    out = apply_prior(grids, levels, p, e, h, "panoptic_all", 1.1)
    scales = segment_scales(p, h)
    for li, (lv, g0, g1) in enumerate(zip(levels, grids, out)):
        rows, cols = centre_pixels(lv.row_centres, h), centre_pixels(lv.col_centres, w)
        for i in range(lv.rows):
            for j in range(lv.cols):
                s = p[rows[i], cols[j]]
                want = e[s] if s >= 0 and override_levels(scales[s], LERF_TILE_RATIOS)[li] else g0[i, j]
                torch.testing.assert_close(g1[i, j], want.to(g1.dtype), rtol=0, atol=0)
        torch.testing.assert_close(g1[-1], g1[-2], rtol=0, atol=0)
    # a superset of the one-tile reading's overrides
    one = apply_prior(grids, levels, p, e, h, "panoptic", 1.1)
    for g0, g1, gall in zip(grids, one, out):
        changed_one = (g0 != g1).any(-1)
        assert torch.equal(gall[changed_one], g1[changed_one])


def test_single_scale_and_full_segmentation_ablations() -> None:
    h, w = 120, 160
    p, e = segments_scene(h, w)
    levels, grids, _ = one_view_pyramid(h, w)
    single = apply_prior(grids, levels, p, e, h, "single_scale")
    for li in range(len(levels) - 1):
        torch.testing.assert_close(single[li], grids[li], rtol=0, atol=0)
    lv = levels[-1]
    rows, cols = centre_pixels(lv.row_centres, h), centre_pixels(lv.col_centres, w)
    for i in range(lv.rows):
        for j in range(lv.cols):
            s = p[rows[i], cols[j]]
            torch.testing.assert_close(single[-1][i, j], e[s], rtol=0, atol=0)
    torch.testing.assert_close(single[-1][-1], single[-1][-2], rtol=0, atol=0)

    full = apply_prior(grids, levels, p, e, h, "full_segmentation")
    for a, b in zip(full, grids):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(apply_prior(grids, levels, p, e, h, "none"), grids))

    part = p.copy()
    part[:, :40] = -1  # pixels in no segment keep the pyramid
    keep = np.unique(part[part >= 0])
    remap = np.full(len(e), -1)
    remap[keep] = np.arange(len(keep))
    part = np.where(part >= 0, remap[np.maximum(part, 0)], -1).astype(np.int32)
    e2 = e[torch.as_tensor(keep)]
    pyr = ClipPyramid(stack(grids), levels, (w, h), partitions=part[None], segment_embeds=[e2])
    plain = ClipPyramid(stack(grids), levels, (w, h))
    xs = torch.tensor([5.0, 45.0, 90.0, 150.0, 20.4])
    ys = torch.tensor([50.0, 40.0, 80.0, 100.0, 14.6])
    v = torch.zeros(5, dtype=torch.long)
    for li in range(7):
        lvl = torch.full((5,), li)
        out, ref = pyr.interp(v, xs, ys, lvl), plain.interp(v, xs, ys, lvl)
        torch.testing.assert_close(out[0], ref[0], rtol=0, atol=0)  # x = 5: no segment
        torch.testing.assert_close(out[4], ref[4], rtol=0, atol=0)
        for k, (x, y) in enumerate(zip(xs.tolist(), ys.tolist())):
            if k in (0, 4):
                continue
            s = part[round(y), round(x)]
            torch.testing.assert_close(out[k], e2[s].half().float(), rtol=0, atol=0)
    t = pyr.target(v, xs, ys, torch.tensor([0, 1, 2, 3, 5]), torch.rand(5))
    torch.testing.assert_close(t[1], e2[part[40, 45]].half().float(), rtol=0, atol=0)


# ---- content boxes in the backends ----------------------------------------------------------------


def write_sim_scene(root: Path, m: np.ndarray, labels: dict[int, str]) -> Path:
    (root / "sim" / "instances").mkdir(parents=True, exist_ok=True)
    Image.fromarray(m.astype(np.uint16)).save(root / "sim" / "instances" / "v0.png")
    (root / "sim" / "instances.json").write_text(json.dumps({"labels": {str(k): v for k, v in labels.items()}}))
    return root


def test_simclip_content_boxes(tmp_path: Path) -> None:
    m = np.ones((60, 80), np.uint16)  # table
    m[10:30, 10:30] = 2  # mug on the left
    clip = SimCLIP(SimScene(write_sim_scene(tmp_path, m, {1: "table", 2: "coffee mug"})))
    view = ViewImage("v0", np.zeros((60, 80, 3), np.float32))
    box = np.array([[10, 10, 30, 34]])  # mostly mug
    names = clip.scene.label_names
    mug, table = names.index("coffee mug"), names.index("table")
    a = clip.label_fractions(view, box)
    assert a[0, mug] == pytest.approx(400 / 480)
    content = np.array([[5, 30, 30, 40]])  # the bottom strip only: no mug
    ac = clip.label_fractions(view, box, content)
    assert ac[0, mug] == 0 and ac[0, table] == pytest.approx(80 / 480)  # denominator: the whole box
    f = clip.encode_crops(view, box)
    fc = clip.encode_crops(view, box, content=content)
    pure_table = clip.encode_crops(view, np.array([[40, 35, 80, 60]]))
    e_mug = torch.from_numpy(clip.label_embedding("coffee mug")).float()
    assert float(fc[0] @ e_mug) < float(f[0] @ e_mug) - 0.05
    assert float(fc[0] @ pure_table[0]) > float(f[0] @ pure_table[0]) + 0.02  # the crop now looks like table
    # content = the box itself (or larger) changes nothing; content=None is the old behaviour
    torch.testing.assert_close(clip.encode_crops(view, box, content=box), f, rtol=0, atol=0)
    torch.testing.assert_close(clip.encode_crops(view, box, content=np.array([[-9, -9, 99, 99]])), f, rtol=0, atol=0)
    # padding outside the image and outside the content box are alike
    sq = np.array([[-10, 0, 50, 60]])
    torch.testing.assert_close(
        clip.label_fractions(view, sq, np.array([[0, 0, 50, 60]])), clip.label_fractions(view, sq), rtol=0, atol=0
    )
    with pytest.raises(ValueError, match="content"):
        clip.encode_crops(view, box, content=np.zeros((2, 4)))


@pytest.fixture(scope="module")
def tiny_open_clip(tiny_open_clip_weights):
    """The tiny open_clip architecture of tests/foundation/conftest.py, loaded through the registry."""
    from ovs3d.foundation.registry import build_clip

    arch, path, _ = tiny_open_clip_weights
    return build_clip(f"open_clip:{arch}:{path}", None, batch_size=3)


def test_open_clip_content_boxes(tiny_open_clip) -> None:
    clip = tiny_open_clip
    rng = np.random.default_rng(0)
    rgb = rng.random((40, 56, 3)).astype(np.float32)
    view = ViewImage(None, rgb)
    boxes = np.array([[0, 0, 40, 40], [10, 5, 30, 25], [-8, -8, 24, 24], [30, 10, 56, 36], [0, 0, 56, 40]])
    content = np.array([[0, 0, 20, 40], [10, 5, 30, 25], [0, 0, 24, 10], [35, 10, 50, 36], [-5, -5, 60, 45]])
    plain = clip.encode_crops(view, boxes)
    got = clip.encode_crops(view, boxes, content=content)
    # content = the box (or larger) is no change
    torch.testing.assert_close(got[[1, 4]], plain[[1, 4]], rtol=0, atol=0)
    # otherwise: as if the image were zero outside the content box
    for i in (0, 2, 3):
        x0, y0, x1, y1 = content[i]
        masked = np.zeros_like(rgb)
        masked[max(y0, 0) : y1, max(x0, 0) : x1] = rgb[max(y0, 0) : y1, max(x0, 0) : x1]
        ref = clip.encode_crops(ViewImage(None, masked), boxes[i : i + 1])
        torch.testing.assert_close(got[i : i + 1], ref, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(got[i], plain[i], atol=1e-3)
    # segment tiles through the real backend
    p = rect_partition(40, 56, [(0, 0, 56, 40), (5, 5, 20, 12)])
    e = encode_segments(clip, view, p)
    assert e.shape == (2, 32)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(2))


# ---- cached, scene-level ---------------------------------------------------------------------------


class FakeMasks:
    identity = "fake-masks"

    def propose(self, view: ViewImage) -> np.ndarray:
        h, w = view.rgb.shape[:2]
        m = np.zeros((3, h, w), dtype=bool)
        m[0] = True
        m[1, : h // 2, : w // 2] = True
        m[2, h // 2 :, w // 3 : w // 2] = True
        return m


def test_pyramid_cache_round_trip(tmp_path: Path, image_scene, caplog: pytest.LogCaptureFixture) -> None:
    scene = image_scene(tmp_path / "scene")
    cfg = PyramidConfig(downscale=2.0, batch_size=32)
    clip = KeyClip()
    feats = pyramid_features(scene, clip, [0, 2], cfg, tmp_path / "c")
    w, h = scene.image_size(2.0)
    levels = pyramid_levels(h, w)
    assert (w, h) == (40, 30) and feats.view_ids == [0, 2] and feats.path.parent.name == "clip_pyramid"
    assert feats.shape == (sum(lv.n_stored for lv in levels), 16) and feats[0].dtype == np.float16
    assert feats.meta["settings"]["size"] == [40, 30]
    view = ViewImage(scene.stems[2], scene.load_image(2, 2.0))
    direct = encode_pyramid(KeyClip(), view, levels)
    for a, b in zip(unflatten_pyramid(feats[1], levels), direct):
        torch.testing.assert_close(a.float(), b, atol=2e-3, rtol=2e-3)
    # second call (another batch size, prior, tolerance): a cache hit
    clip2 = KeyClip()
    again = pyramid_features(
        scene, clip2, [0, 2], PyramidConfig(downscale=2.0, batch_size=7, prior="panoptic"), tmp_path / "c"
    )
    assert again.key == feats.key and clip2.n_crops == 0
    # another resolution is another entry
    assert pyramid_features(scene, KeyClip(), [0], PyramidConfig(downscale=1.0), tmp_path / "c").key != feats.key
    # a truncated view file is recomputed with a warning
    f = feats.path / feats.meta["views"][1]["files"]["data"]["file"]
    f.write_bytes(f.read_bytes()[:100])
    clip3 = KeyClip()
    with caplog.at_level(logging.WARNING, logger="ovs3d.foundation.cache"):
        fixed = pyramid_features(scene, clip3, [0, 2], cfg, tmp_path / "c")
    assert "recomputing view 1" in caplog.text
    assert clip3.n_crops == sum(lv.rows * lv.cols for lv in levels)  # one view only
    np.testing.assert_array_equal(fixed[1], feats[1])


def test_segment_tiles_and_load_pyramid(tmp_path: Path, image_scene) -> None:
    scene = image_scene(tmp_path / "scene")
    root = tmp_path / "c"
    cfg = PyramidConfig(downscale=2.0, prior="panoptic")
    with pytest.raises(ValueError, match="mask backend"):
        load_pyramid(scene, KeyClip(), [0, 1], cfg, root)
    clip = KeyClip()
    tiles = segment_tiles(scene, clip, FakeMasks(), [0, 1], cfg, root)
    assert len(tiles) == 2 and tiles.embeddings.path.parent.name == "segment_tiles"
    assert tiles.embeddings.meta["settings"]["masks"] == "fake-masks"
    part = tiles.partition(1)
    assert part.shape == (30, 40) and sorted(np.unique(part).tolist()) == [0, 1, 2]
    assert tiles.embeddings[1].shape == (3, 16) and clip.n_crops == 6
    view = ViewImage(scene.stems[1], scene.load_image(1, 2.0))
    torch.testing.assert_close(
        torch.from_numpy(tiles.embeddings[1].astype(np.float32)),
        encode_segments(KeyClip(), view, part),
        atol=2e-3,
        rtol=0,
    )
    # load: everything cached now except the pyramid itself
    clip = KeyClip()
    pyr = load_pyramid(scene, clip, [0, 1], cfg, root, masks_backend=FakeMasks())
    assert clip.n_crops == 2 * sum(lv.rows * lv.cols for lv in pyr.levels)
    assert pyr.image_size == (40, 30) and pyr.n_views == 2 and pyr.view_ids == [0, 1]
    assert pyr.grids[0].shape == (2, *pyr.levels[0].grid_shape, 16) and pyr.grids[0].dtype == torch.float16
    clip = KeyClip()
    plain = load_pyramid(scene, clip, [0, 1], PyramidConfig(downscale=2.0), root)
    assert clip.n_crops == 0
    levels = pyr.levels
    grids1 = unflatten_pyramid(pyramid_features(scene, clip, [0, 1], cfg, root)[1], levels)
    expect = apply_prior(grids1, levels, part, torch.from_numpy(np.array(tiles.embeddings[1])), 30, "panoptic")
    for li in range(7):
        torch.testing.assert_close(pyr.grids[li][1], expect[li].half(), rtol=0, atol=0)
    assert any(not torch.equal(a, b) for a, b in zip(pyr.grids, plain.grids))
    full = load_pyramid(scene, clip, [0, 1], PyramidConfig(downscale=2.0, prior="full_segmentation"), root, FakeMasks())
    assert clip.n_crops == 0 and full.partitions.shape == (2, 30, 40) and full.segment_table.shape == (6, 16)
    assert all(torch.equal(a, b) for a, b in zip(full.grids, plain.grids))
    out = full.interp(torch.tensor([1]), torch.tensor([3.0]), torch.tensor([3.0]), torch.tensor([0]))
    torch.testing.assert_close(out[0], torch.from_numpy(tiles.embeddings[1][part[3, 3]].astype(np.float32)))
    assert full.nbytes > plain.nbytes


def test_sim_backends_end_to_end(tiny_scene_dir: Path, tmp_path: Path) -> None:
    from ovs3d.foundation.sim import SimMasks
    from ovs3d.io.loader import load_scene

    scene = load_scene(tiny_scene_dir)
    clip = SimCLIP.from_scene(tiny_scene_dir)
    masks = SimMasks.from_scene(tiny_scene_dir)
    pyr = load_pyramid(scene, clip, [0, 1], PyramidConfig(prior="panoptic"), tmp_path / "c", masks)
    w, h = scene.image_size(1.0)
    assert pyr.image_size == (w, h) and pyr.dim == clip.dim
    b = 64
    g = torch.Generator().manual_seed(0)
    t = pyr.target(
        torch.randint(0, 2, (b,), generator=g),
        torch.rand(b, generator=g) * (w - 1),
        torch.rand(b, generator=g) * (h - 1),
        torch.randint(0, 6, (b,), generator=g),
        torch.rand(b, generator=g),
    )
    assert t.shape == (b, clip.dim) and torch.isfinite(t).all()
    assert float(t.norm(dim=1).min()) > 0.5
