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
