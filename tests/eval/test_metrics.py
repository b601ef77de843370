"""Metrics (SPEC §5) against hand-computed cases and, when installed, sklearn."""

from __future__ import annotations

import numpy as np
import pytest

from ovs3d.eval.metrics import (
    aggregate,
    localization,
    masks_to_labels,
    ovnerf_aggregate,
    ovnerf_view_metrics,
    psnr,
    query_recall,
    relevancy_distance,
    relevancy_metrics,
    segmentation_view_metrics,
    view_key,
)

CLASSES = ["apple", "bowl", "cup"]


def _view1():
    """3x3 view: (1,0) has labels apple+bowl, (2,0) has none, cup is absent from GT and prediction."""
    gt = np.zeros((3, 3, 3), dtype=bool)
    gt[0, 0, :] = True  # apple: top row
    gt[0, 1, 0] = True  # apple also at (1, 0)
    gt[1, 1, :] = True  # bowl: middle row (incl. (1, 0): multi-labelled)
    gt[1, 2, 1:] = True  # bowl: (2, 1), (2, 2); (2, 0) unlabelled
    pred = np.array([[0, 0, 1], [0, 1, 1], [0, 1, 1]])
    return gt, pred


def _view2():
    gt = np.zeros((3, 3, 3), dtype=bool)
    gt[0] = True
    return gt, np.zeros((3, 3), dtype=np.int64)


def test_view_metrics_hand_computed():
    gt, pred = _view1()
    m = segmentation_view_metrics(gt, pred, CLASSES)
    # apple: GT {00,01,02,10}, pred {00,01,10,20}: inter 3, union 5
    # bowl: GT {10,11,12,21,22}, pred {02,11,12,21,22}: inter 4, union 6
    assert m["iou"] == pytest.approx({"apple": 0.6, "bowl": 4 / 6, "cup": 0.0})
    assert m["miou"] == pytest.approx((0.6 + 4 / 6 + 0.0) / 3)
    # right: 00, 01, 11, 12, 21, 22; wrong: 02 (miss), 10 (multi-labelled), 20 (unlabelled)
    assert m["accuracy"] == pytest.approx(6 / 9)
    assert m["tp"] == {"apple": 3, "bowl": 4, "cup": 0}
    assert m["gt_pixels"] == {"apple": 4, "bowl": 5, "cup": 0}
    assert m["pred_pixels"] == {"apple": 4, "bowl": 5, "cup": 0}
    assert m["n_pixels"] == 9


def test_absent_label_scores_zero_and_lowers_miou():
    gt, pred = _view2()  # all apple, all predicted apple
    m = segmentation_view_metrics(gt, pred, CLASSES)
    assert m["iou"] == {"apple": 1.0, "bowl": 0.0, "cup": 0.0}
    assert m["miou"] == pytest.approx(1 / 3)
    assert m["accuracy"] == 1.0
    only = segmentation_view_metrics(gt[:1], pred, CLASSES[:1])
    assert only["miou"] == 1.0


def test_unlabelled_pixels_always_wrong():
    gt = np.zeros((2, 3, 3), dtype=bool)
    for p in range(2):
        m = segmentation_view_metrics(gt, np.full((3, 3), p), ["a", "b"])
        assert m["accuracy"] == 0.0
        assert m["iou"][["a", "b"][p]] == 0.0  # predicted, not in GT: false positives


def test_multi_labelled_pixels_always_wrong():
    gt = np.ones((2, 3, 3), dtype=bool)
    for p in range(2):
        m = segmentation_view_metrics(gt, np.full((3, 3), p), ["a", "b"])
        assert m["accuracy"] == 0.0
        assert m["gt_pixels"] == {"a": 9, "b": 9}  # counted for each of its labels in mAcc


def test_aggregate_structure_and_values():
    v1 = segmentation_view_metrics(*_view1(), CLASSES)
    v2 = segmentation_view_metrics(*_view2(), CLASSES)
    agg = aggregate({7: v2, 3: v1}, CLASSES)
    assert set(agg) >= {"miou", "accuracy", "macc", "per_view", "classes"}
    assert agg["classes"] == CLASSES
    assert list(agg["per_view"]) == ["03", "07"]
    assert set(agg["per_view"]["03"]) == {"miou", "accuracy", "iou"}
    assert agg["per_view"]["03"]["iou"]["apple"] == pytest.approx(0.6)
    assert agg["miou"] == pytest.approx((0.6 + 4 / 6 + 0 + 1 + 0 + 0) / 6)
    assert agg["accuracy"] == pytest.approx((6 / 9 + 1) / 2)
    # pooled recall: apple (3 + 9) / (4 + 9), bowl 4 / 5, cup has no GT pixel -> left out
    assert agg["macc"] == pytest.approx(((12 / 13) + 0.8) / 2)
    assert agg["class_recall"]["cup"] is None
    assert agg["n_views"] == 2


def test_aggregate_empty():
    agg = aggregate({}, CLASSES)
    assert agg["miou"] == 0.0 and agg["accuracy"] == 0.0 and agg["macc"] == 0.0 and agg["per_view"] == {}


def test_input_validation():
    gt, pred = _view1()
    with pytest.raises(ValueError):
        segmentation_view_metrics(gt, pred + 5, CLASSES)
    with pytest.raises(ValueError):
        segmentation_view_metrics(gt[:2], pred, CLASSES)
    with pytest.raises(ValueError):
        segmentation_view_metrics(gt, pred[:2], CLASSES)


def test_masks_to_labels_and_view_key():
    gt, _ = _view1()
    lab = masks_to_labels(gt)
    assert lab[2, 0] == -1 and lab[1, 0] == 0 and lab[1, 1] == 1
    assert view_key(3) == "03" and view_key(12) == "12" and view_key(123) == "123"


def test_matches_sklearn_on_random_multilabel():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for trial in range(20):
        c = int(rng.integers(2, 5))
        h, w = int(rng.integers(2, 7)), int(rng.integers(2, 7))
        gt = rng.random((c, h, w)) < rng.uniform(0.1, 0.6)
        pred = rng.integers(0, c, size=(h, w))
        if trial % 4 == 0:
            pred[:] = 0  # labels absent from the prediction
            gt[-1] = False  # and one absent from both
        classes = [f"l{i}" for i in range(c)]
        m = segmentation_view_metrics(gt, pred, classes)
        gt_flat = gt.reshape(c, -1).T.astype(int)  # [H*W, C]
        onehot = np.eye(c, dtype=int)[pred.ravel()]
        ref_iou = metrics.jaccard_score(gt_flat, onehot, average=None, zero_division=0)
        np.testing.assert_allclose([m["iou"][k] for k in classes], ref_iou)
        assert m["accuracy"] == pytest.approx(metrics.accuracy_score(gt_flat, onehot))


def test_psnr():
    gt = np.zeros((4, 4, 3))
    assert psnr(gt + 0.1, gt) == pytest.approx(20.0)
    assert psnr(gt + 0.01, gt) == pytest.approx(40.0)
    assert psnr(gt, gt) == 100.0
    with pytest.raises(ValueError):
        psnr(gt, gt[:2])


def test_relevancy_distance():
    mask = np.zeros((3, 3), dtype=bool)
    mask[0] = True
    assert relevancy_distance(np.full((3, 3), 0.5), mask) == pytest.approx(0.25)
    assert relevancy_distance(mask.astype(float), mask) == 0.0
    rel = np.zeros((3, 3))
    rel[0, 0] = 0.4  # 0.36 at (0,0), 1 at (0,1), (0,2)
    assert relevancy_distance(rel, mask) == pytest.approx((0.36 + 2) / 9)


def test_query_recall_pixels_reading():
    mask = np.zeros((10, 10), dtype=bool)
    mask[:5, :5] = True
    rel = np.zeros((10, 10))
    rel[:2, :5] = np.linspace(0.5, 1.0, 10).reshape(2, 5)  # top 10 pixels all inside
    assert query_recall(rel, mask, reading="pixels")
    rel2 = rel.copy()
    rel2[9, 9] = 0.99  # 9 of the top 10 inside: exactly 90% succeeds
    assert query_recall(rel2, mask, reading="pixels")
    rel3 = rel2.copy()
    rel3[9, 8] = 0.98  # 8 of 10
    assert not query_recall(rel3, mask, reading="pixels")
    # flat maps: every pixel is tied for the top set
    assert not query_recall(np.ones((10, 10)), mask, reading="pixels")
    assert query_recall(np.ones((10, 10)), np.ones((10, 10), dtype=bool), reading="pixels")
    # 3x3: top 10% is one pixel
    small = np.zeros((3, 3))
    small[1, 1] = 1.0
    m = np.zeros((3, 3), dtype=bool)
    m[1, 1] = True
    assert query_recall(small, m, reading="pixels") and not query_recall(small, ~m, reading="pixels")


def test_query_recall_range_reading_small_object():
    # A perfect map of a 2-pixel object (2 % of the image): the pixel reading (top 10 pixels) can never
    # succeed, the range reading (R >= max - 0.1 (max - min)) does.
    mask = np.zeros((10, 10), dtype=bool)
    mask[0, :2] = True
    rel = np.where(mask, 0.9, 0.2)
    assert query_recall(rel, mask)
    assert not query_recall(rel, mask, reading="pixels")
    # top range [0.83, 0.9]: the two object pixels and one outside pixel at 0.85 -> 2 of 3 < 90 %
    rel2 = rel.copy()
    rel2[5, 5] = 0.85
    assert not query_recall(rel2, mask)
    rel2[5, 5] = 0.82  # just below the threshold 0.9 - 0.07 = 0.83
    assert query_recall(rel2, mask)
    with pytest.raises(ValueError):
        query_recall(rel, mask, reading="other")


def test_localization():
    mask = np.zeros((4, 4), dtype=bool)
    mask[1, 1] = True
    rel = np.zeros((4, 4))
    rel[1, 1] = 0.7
    assert localization(rel, mask)
    rel[3, 3] = 0.8
    assert not localization(rel, mask)


def test_relevancy_metrics_hand_computed():
    classes = ["a", "b", "c"]
    gt = np.zeros((3, 2, 2), dtype=bool)
    gt[0, 0] = True  # a: top row
    gt[1, 1] = True  # b: bottom row; c absent from this view
    rel = np.zeros((3, 2, 2))
    rel[0] = [[1.0, 1.0], [0.0, 0.0]]  # perfect: D 0, recall, localisation
    rel[1] = [[0.5, 0.0], [0.0, 0.5]]  # D (0.25 + 0 + 1 + 0.25) / 4; top range {0.5}: 1 of 2 in
    rel[2] = 1.0  # absent label: not scored
    out = relevancy_metrics({3: rel}, {3: gt}, classes)
    assert out["n_pairs"] == 2
    assert out["per_label"]["a"] == {"d_relevancy": 0.0, "recall": 1.0, "localization": 1.0, "n_views": 1}
    assert out["per_label"]["b"]["d_relevancy"] == pytest.approx(1.5 / 4)
    assert out["per_label"]["b"]["recall"] == 0.0
    assert out["per_label"]["b"]["localization"] == 0.0  # argmax (0, 0) is outside b
    assert out["per_label"]["c"]["d_relevancy"] is None and out["per_label"]["c"]["n_views"] == 0
    assert out["d_relevancy"] == pytest.approx(1.5 / 8)
    assert out["recall"] == 0.5 and out["localization"] == 0.5
    assert set(out["per_view"]["03"]) == {"a", "b"}


# ---------------------------------------------------------------------------------------------------
# OV-NeRF protocol


def test_ovnerf_view_metrics_hand_computed():
    # _view1: void pixels (1, 0) (two labels) and (2, 0) (none) are ignored, both predicted apple.
    # labelled: apple GT {(0,0), (0,1), (0,2)} predicted {(0,0), (0,1)}; bowl GT 4 pixels, predicted on
    # those 4 and on (0, 2); cup absent from GT and from the prediction on labelled pixels.
    gt, pred = _view1()
    m = ovnerf_view_metrics(gt, pred, CLASSES)
    assert m["iou"]["apple"] == pytest.approx(2 / 3)
    assert m["iou"]["bowl"] == pytest.approx(4 / 5)
    assert m["iou"]["cup"] is None  # absent: skipped, not 0
    assert m["miou"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert m["accuracy"] == pytest.approx(6 / 7)
    assert m["n_labelled"] == 7 and m["n_pixels"] == 9
    assert m["tp"] == {"apple": 2, "bowl": 4, "cup": 0}
    assert m["gt_pixels"] == {"apple": 3, "bowl": 4, "cup": 0}
    assert m["pred_pixels"] == {"apple": 2, "bowl": 5, "cup": 0}


def test_ovnerf_label_predicted_but_absent_from_gt_scores_zero_and_counts():
    gt, pred = _view1()
    pred = pred.copy()
    pred[0, 2] = 2  # cup predicted on a labelled (apple) pixel
    m = ovnerf_view_metrics(gt, pred, CLASSES)
    assert m["iou"] == pytest.approx({"apple": 2 / 3, "bowl": 1.0, "cup": 0.0})
    assert m["miou"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    # predicted only on void pixels: still absent
    pred = _view1()[1].copy()
    pred[2, 0] = 2
    pred[1, 0] = 2
    m = ovnerf_view_metrics(gt, pred, CLASSES)
    assert m["iou"]["cup"] is None and m["miou"] == pytest.approx((2 / 3 + 4 / 5) / 2)


def test_ovnerf_void_pixels_are_ignored():
    gt, pred = _view1()
    base = ovnerf_view_metrics(gt, pred, CLASSES)
    for p in range(3):  # whatever is predicted on the two void pixels
        other = pred.copy()
        other[1, 0] = other[2, 0] = p
        assert ovnerf_view_metrics(gt, other, CLASSES) == base


def test_ovnerf_all_void_view_scores_nothing():
    pred = np.zeros((2, 2), dtype=np.int64)
    for gt in (np.zeros((3, 2, 2), dtype=bool), np.ones((3, 2, 2), dtype=bool)):  # no label / all multi
        m = ovnerf_view_metrics(gt, pred, CLASSES)
        assert m["miou"] is None and m["accuracy"] is None and m["n_labelled"] == 0
        assert all(v is None for v in m["iou"].values())


def test_ovnerf_aggregate_hand_computed():
    v1 = ovnerf_view_metrics(*_view1(), CLASSES)
    v2 = ovnerf_view_metrics(*_view2(), CLASSES)  # all apple, all predicted apple
    void = ovnerf_view_metrics(np.zeros((3, 3, 3), dtype=bool), np.zeros((3, 3), dtype=np.int64), CLASSES)
    agg = ovnerf_aggregate({7: v2, 3: v1, 9: void}, CLASSES)
    assert set(agg) >= {"miou", "accuracy", "macc", "per_view", "classes"}  # aggregate's structure
    assert list(agg["per_view"]) == ["03", "07", "09"]
    assert set(agg["per_view"]["03"]) == {"miou", "accuracy", "iou"}
    assert agg["per_view"]["07"]["iou"] == {"apple": 1.0, "bowl": None, "cup": None}
    assert agg["per_view"]["09"]["miou"] is None and agg["per_view"]["09"]["accuracy"] is None
    # scene scores: means over the two scored views; the all-void view is left out
    assert agg["miou"] == pytest.approx(((2 / 3 + 4 / 5) / 2 + 1) / 2)
    assert agg["accuracy"] == pytest.approx((6 / 7 + 1) / 2)
    assert agg["pixel_accuracy"] == agg["accuracy"]
    # pooled recall over labelled pixels: apple (2 + 9) / (3 + 9), bowl 4 / 4, cup no GT -> left out
    assert agg["macc"] == pytest.approx((11 / 12 + 1) / 2)
    assert agg["class_recall"] == pytest.approx({"apple": 11 / 12, "bowl": 1.0, "cup": None})
    assert agg["class_iou"] == pytest.approx({"apple": (2 / 3 + 1) / 2, "bowl": 4 / 5, "cup": None})
    assert agg["n_views"] == 3 and agg["n_scored_views"] == 2
    empty = ovnerf_aggregate({}, CLASSES)
    assert empty["miou"] == 0.0 and empty["accuracy"] == 0.0 and empty["macc"] == 0.0 and empty["per_view"] == {}
    with pytest.raises(ValueError):
        ovnerf_aggregate({1: {**v1, "iou": {"apple": 1.0}}}, CLASSES)


def test_ovnerf_matches_a_confusion_matrix_loop_on_random_inputs():
    """Against a pixel loop building OV-NeRF's confusion matrix and its nanmean IoU."""
    rng = np.random.default_rng(1)
    for trial in range(30):
        c = int(rng.integers(2, 6))
        h, w = int(rng.integers(1, 7)), int(rng.integers(1, 7))
        gt = rng.random((c, h, w)) < rng.uniform(0.05, 0.5)
        pred = rng.integers(0, max(1, c - trial % 3), size=(h, w))  # some labels never predicted
        classes = [f"l{i}" for i in range(c)]
        conf = np.zeros((c, c))
        for y in range(h):
            for x in range(w):
                labels = np.flatnonzero(gt[:, y, x])
                if len(labels) == 1:
                    conf[labels[0], pred[y, x]] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.diag(conf) / (conf.sum(0) + conf.sum(1) - np.diag(conf))
        m = ovnerf_view_metrics(gt, pred, classes)
        got = np.array([np.nan if m["iou"][k] is None else m["iou"][k] for k in classes])
        np.testing.assert_allclose(got, iou)
        if conf.sum():
            assert m["miou"] == pytest.approx(np.nanmean(iou))
            assert m["accuracy"] == pytest.approx(np.trace(conf) / conf.sum())
        else:
            assert m["miou"] is None and m["accuracy"] is None
