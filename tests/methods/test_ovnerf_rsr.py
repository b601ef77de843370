"""Region Semantic Ranking (OV-NeRF RSR): vectorised voting against a direct loop over masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ovs3d.methods.ovnerf import rsr
from ovs3d.methods.ovnerf.rsr import class_map_from_relevancy, region_vote, region_vote_views


def reference_vote(class_map: np.ndarray, masks: np.ndarray, uncovered: str = "ignore", void: int = -1) -> np.ndarray:
    """Direct loop: masks painted by area, largest first (stable), majority class, lowest class on ties."""
    out = np.full_like(class_map, void) if uncovered == "ignore" else class_map.copy()
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))  # Python's sort is stable
    for i in order:
        votes = class_map[masks[i]]
        votes = votes[votes != void]
        if votes.size == 0:
            continue
        counts = {}
        for c in votes.tolist():
            counts[c] = counts.get(c, 0) + 1
        best = max(counts.values())
        out[masks[i]] = min(c for c, n in counts.items() if n == best)
    return out


def random_case(rng, h: int, w: int, n_masks: int, n_cls: int, p_void: float):
    class_map = rng.integers(0, n_cls, (h, w))
    class_map[rng.random((h, w)) < p_void] = -1
    masks = np.zeros((n_masks, h, w), dtype=bool)
    for m in range(n_masks):
        kind = rng.integers(0, 3)
        if kind == 0:  # rectangle (overlapping others)
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            masks[m, y0 : y0 + rng.integers(1, h + 1), x0 : x0 + rng.integers(1, w + 1)] = True
        elif kind == 1:  # scattered pixels
            masks[m] = rng.random((h, w)) < rng.uniform(0.02, 0.5)
        else:  # a copy of another mask's area (equal areas exercise the stable order)
            masks[m] = masks[rng.integers(0, m)] if m else rng.random((h, w)) < 0.3
    return class_map, masks


@pytest.mark.parametrize("uncovered", ["ignore", "keep"])
def test_region_vote_matches_loop_on_random_inputs(uncovered):
    rng = np.random.default_rng(0)
    for trial in range(60):
        h, w = rng.integers(1, 14), rng.integers(1, 14)
        n_masks = int(rng.integers(0, 12))
        n_cls = int(rng.integers(1, 5))  # few classes: many ties
        class_map, masks = random_case(rng, h, w, n_masks, n_cls, p_void=rng.choice([0.0, 0.3, 0.9]))
        if n_masks and trial % 5 == 0:
            class_map[masks[0]] = -1  # a mask with only void pixels
        got = region_vote(torch.from_numpy(class_map), masks, uncovered=uncovered)
        assert got.dtype == torch.int64 and got.shape == class_map.shape
        np.testing.assert_array_equal(got.numpy(), reference_vote(class_map, masks, uncovered), err_msg=f"{trial}")


def test_region_vote_chunked_equals_unchunked(monkeypatch):
    rng = np.random.default_rng(1)
    class_map, masks = random_case(rng, 12, 10, 9, 4, p_void=0.2)
    whole = region_vote(torch.from_numpy(class_map), masks)
    monkeypatch.setattr(rsr, "_CHUNK_ELEMENTS", 1)  # one mask per chunk
    torch.testing.assert_close(region_vote(torch.from_numpy(class_map), masks), whole)
    np.testing.assert_array_equal(whole.numpy(), reference_vote(class_map, masks))


def test_region_vote_hand_cases():
    cm = torch.tensor(
        [
            [0, 0, 1, 1],
            [0, 2, 1, 1],
            [-1, -1, 2, 2],
        ]
    )
    big = np.zeros((3, 4), dtype=bool)
    big[:2] = True  # 8 pixels: 0,0,1,1,0,2,1,1 -> class 1 (4 votes)
    small = np.zeros((3, 4), dtype=bool)
    small[:2, :2] = True  # 4 pixels: 0,0,0,2 -> class 0, wins over big where they overlap
    tie = np.zeros((3, 4), dtype=bool)
    tie[1, 1:3] = True
    tie[2, 1] = True  # classes 2, 1 and void: one vote each for 1 and 2 -> class 1
    void_only = np.zeros((3, 4), dtype=bool)
    void_only[2, :2] = True  # only void pixels: paints nothing
    # input order smallest first: must not matter (painted by area: big, small, tie)
    masks = np.stack([void_only, tie, small, big])
    got = region_vote(cm, masks)
    expected = torch.tensor(
        [
            [0, 0, 1, 1],
            [0, 1, 1, 1],
            [-1, 1, -1, -1],
        ]
    )
    torch.testing.assert_close(got, expected)
    np.testing.assert_array_equal(got.numpy(), reference_vote(cm.numpy(), masks))
    kept = region_vote(cm, masks, uncovered="keep")
    expected[2, 2:] = 2  # covered by no mask: the raw class; (2, 0) is void in the raw map too
    torch.testing.assert_close(kept, expected)


def test_region_vote_equal_areas_keep_the_input_order():
    cm = torch.tensor([[0, 0, 1, 1, 1]])
    a = np.array([[[True, True, True, False, False]]])  # votes 0
    b = np.array([[[False, False, True, True, True]]])  # votes 1, same area
    torch.testing.assert_close(region_vote(cm, np.concatenate([a, b])), torch.tensor([[0, 0, 1, 1, 1]]))
    torch.testing.assert_close(region_vote(cm, np.concatenate([b, a])), torch.tensor([[0, 0, 0, 1, 1]]))


def test_region_vote_ties_go_to_lowest_class():
    cm = torch.tensor([[3, 3, 1, 1, 2, 2]])
    mask = np.ones((1, 1, 6), dtype=bool)
    torch.testing.assert_close(region_vote(cm, mask), torch.ones(1, 6, dtype=torch.int64))


def test_region_vote_smaller_mask_wins_whatever_the_input_order():
    cm = torch.tensor([[0, 0, 0, 1, 1]])
    big = np.array([[[True] * 5]])
    small = np.array([[[False, False, False, True, True]]])
    for masks in (np.concatenate([big, small]), np.concatenate([small, big])):
        torch.testing.assert_close(region_vote(cm, masks), torch.tensor([[0, 0, 0, 1, 1]]))


def test_region_vote_empty_and_degenerate_inputs():
    cm = torch.tensor([[0, 1], [-1, 2]])
    none = np.zeros((0, 2, 2), dtype=bool)
    torch.testing.assert_close(region_vote(cm, none), torch.full((2, 2), -1))
    torch.testing.assert_close(region_vote(cm, none, uncovered="keep"), cm)
    all_void = torch.full((2, 2), -1)
    torch.testing.assert_close(region_vote(all_void, np.ones((2, 2, 2), dtype=bool), uncovered="keep"), all_void)
    # torch masks, another void value
    cm7 = torch.tensor([[5, -7], [5, 4]])
    out = region_vote(cm7, torch.ones(1, 2, 2, dtype=torch.bool), void=-7)
    torch.testing.assert_close(out, torch.full((2, 2), 5))


def test_region_vote_errors():
    cm = torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(ValueError):
        region_vote(cm, np.ones((1, 3, 2), dtype=bool))
    with pytest.raises(ValueError):
        region_vote(cm, np.ones((1, 2, 3), dtype=bool), uncovered="fill")
    with pytest.raises(ValueError):
        region_vote(cm.float(), np.ones((1, 2, 3), dtype=bool))
    with pytest.raises(ValueError):
        region_vote(torch.tensor([[0, -2, 1]]), np.ones((1, 1, 3), dtype=bool))
    with pytest.raises(ValueError):
        region_vote(cm, np.ones((1, 2, 3), dtype=bool), void=0)


def test_region_vote_views_batches_views():
    rng = np.random.default_rng(3)
    maps, mask_sets = [], []
    for n in (0, 3, 7):
        cm, m = random_case(rng, 6, 5, n, 3, 0.2)
        maps.append(cm)
        mask_sets.append(m)
    out = region_vote_views(torch.from_numpy(np.stack(maps)), mask_sets)
    assert out.shape == (3, 6, 5)
    for b in range(3):
        np.testing.assert_array_equal(out[b].numpy(), reference_vote(maps[b], mask_sets[b]))
    with pytest.raises(ValueError):
        region_vote_views(torch.from_numpy(np.stack(maps)), mask_sets[:2])


def test_region_vote_sam_sized_input_is_correct():
    # about SAM's output at 640x480 scaled down by 4: many overlapping masks, checked against the loop
    rng = np.random.default_rng(4)
    class_map, masks = random_case(rng, 120, 160, 100, 20, p_void=0.1)
    got = region_vote(torch.from_numpy(class_map), masks)
    np.testing.assert_array_equal(got.numpy(), reference_vote(class_map, masks))


def test_class_map_from_relevancy():
    rel = torch.tensor(
        [
            # scales x classes
            [[0.9, 0.0, 0.5], [0.0, 0.6, 0.5]],  # mean: .45 .3 .5 -> 2 ; max: .9 .6 .5 -> 0
            [[0.2, 0.2, 0.1], [0.2, 0.2, 0.1]],  # tie between 0 and 1 -> 0 both ways
        ]
    )
    torch.testing.assert_close(class_map_from_relevancy(rel, "mean"), torch.tensor([2, 0]))
    torch.testing.assert_close(class_map_from_relevancy(rel, "max"), torch.tensor([0, 0]))
    rng = torch.Generator().manual_seed(0)
    big = torch.rand(4, 5, 3, 6, generator=rng)  # [H, W, S, C]
    out = class_map_from_relevancy(big)
    assert out.shape == (4, 5) and out.dtype == torch.int64
    for y in range(4):
        for x in range(5):
            per_class = [float(big[y, x, :, c].mean()) for c in range(6)]
            assert int(out[y, x]) == int(np.argmax(per_class))
    with pytest.raises(ValueError):
        class_map_from_relevancy(rel, "sum")
    with pytest.raises(ValueError):
        class_map_from_relevancy(torch.zeros(3))


def reference_crop_classes(partitions, cosines, class_maps=None, void=-1):
    """Direct loop: per-label min–max over every region of every view, argmax per region, painted."""
    allc = np.concatenate(cosines, 0).astype(np.float64)
    lo, hi = allc.min(0), allc.max(0)
    outs = []
    for b, (p, c) in enumerate(zip(partitions, cosines)):
        out = np.full(p.shape, void, dtype=np.int64) if class_maps is None else class_maps[b].astype(np.int64).copy()
        for s in range(c.shape[0]):
            rel = [(c[s, k] - lo[k]) / (hi[k] - lo[k]) if hi[k] - lo[k] > 1e-6 else 0.0 for k in range(c.shape[1])]
            out[p == s] = int(np.argmax(rel))  # first maximum: lowest class on ties
        outs.append(out)
    return np.stack(outs)


@pytest.mark.parametrize("keep", [False, True])
def test_region_crop_classes_matches_loop(keep):
    rng = np.random.default_rng(1)
    for trial in range(30):
        n_views, h, w, n_cls = int(rng.integers(1, 4)), int(rng.integers(2, 9)), int(rng.integers(2, 9)), 4
        parts, cos = [], []
        for _ in range(n_views):
            n = int(rng.integers(1, 5))
            p = rng.integers(-1, n, (h, w))
            p.flat[:n] = np.arange(n)  # every id present
            parts.append(p)
            cos.append(rng.uniform(-0.2, 0.4, (n, n_cls)).astype(np.float32))
        maps = rng.integers(0, n_cls, (n_views, h, w)) if keep else None
        got = rsr.region_crop_classes(
            parts, [torch.from_numpy(c) for c in cos], torch.from_numpy(maps) if keep else None
        )
        assert got.dtype == torch.int64 and got.shape == (n_views, h, w)
        np.testing.assert_array_equal(got.numpy(), reference_crop_classes(parts, cos, maps), err_msg=f"{trial}")


def test_region_crop_classes_scene_normalisation_beats_a_hub():
    """A hub label (high cosine everywhere) does not win every region: each label's best region in the scene
    gets 1 — and a region in a view that shows no other label still gets its own."""
    part = np.array([[0, 0, 1], [0, 0, -1]])
    # label 0 is the hub: every crop is more like it in absolute terms
    cos_a = torch.tensor([[0.34, 0.10], [0.32, 0.25]])  # region 1: label 1's best region, raw argmax the hub
    cos_b = torch.tensor([[0.33, 0.05]])  # a view of label 0 only
    got = rsr.region_crop_classes([part, np.where(part >= 0, 0, -1)], [cos_a, cos_b])
    assert got[0].tolist() == [[0, 0, 1], [0, 0, -1]]
    assert got[1].tolist() == [[0, 0, 0], [0, 0, -1]]
    with pytest.raises(ValueError, match="region id"):
        rsr.region_crop_classes([part], [cos_a[:1]])
