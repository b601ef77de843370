"""Evaluation metrics (SPEC §5), as pure numpy functions.

Segmentation follows the 3D-OVS evaluation code exactly, quirks included:

- every pixel is predicted as one of the scene's labels (argmax, no background, no threshold);
- per-label IoU = |GT ∩ Pred| / |GT ∪ Pred| over the view's pixels, and **0** when the label is absent from
  both (sklearn ``jaccard_score(average=None)`` with its zero-division default), so such a label lowers mIoU;
- "accuracy" (the 3D-OVS paper's "mAP" column) is multilabel *subset* accuracy: a pixel is right only when
  its predicted one-hot row equals its GT row exactly, so unlabelled and multi-labelled GT pixels are always
  wrong;
- mIoU = mean over all (view, label) pairs; accuracy = mean over views.

mAcc (SPEC §5; not the column OV-NeRF's tables call mAcc, which is pixel accuracy) is the mean over labels
of per-label recall |GT_c ∩ Pred_c| / |GT_c|, accumulated over all views. Unlabelled GT pixels belong to
no GT_c and are ignored. **A pixel with several GT labels counts in |GT_c| of each of its labels** (and is
a true positive only for the label it is predicted as), i.e. recall is the plain per-mask recall,
consistent with the per-label IoU above. Labels with no GT pixel in any view are left out of the mean
(OV-NeRF's ``nanmean``).

The OV-NeRF protocol (:func:`ovnerf_view_metrics`, :func:`ovnerf_aggregate`) follows OV-NeRF's released
evaluation instead: void GT pixels are ignored, labels absent from a view are skipped rather than scored 0,
and scene scores are means over views.

The LERF panoptic-prior metrics (D_relevancy, query recall) and PSNR are here too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "masks_to_labels",
    "segmentation_view_metrics",
    "aggregate",
    "ovnerf_view_metrics",
    "ovnerf_aggregate",
    "view_key",
    "psnr",
    "relevancy_distance",
    "query_recall",
    "localization",
    "relevancy_metrics",
]


def view_key(view: int) -> str:
    """Name of view ``view`` in metrics and output folders: two digits at least (``3 -> "03"``)."""
    return f"{int(view):02d}"


def masks_to_labels(gt: np.ndarray) -> np.ndarray:
    """Collapse GT masks to one label per pixel, for drawing.

    Args:
        gt: ``[C, H, W]`` bool, one mask per label.

    Returns:
        ``[H, W]`` int64: the (first) label of each pixel, ``-1`` where the pixel has no label. Pixels with
        several labels get the lowest index; metrics never use this map (they use the masks).
    """
    gt = np.asarray(gt, dtype=bool)
    labels = np.argmax(gt, axis=0).astype(np.int64)  # [H, W]
    labels[~gt.any(axis=0)] = -1
    return labels


def _check_inputs(gt: np.ndarray, pred_labels: np.ndarray, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt)
    pred = np.asarray(pred_labels)
    if gt.ndim != 3:
        raise ValueError(f"gt must be [C, H, W] bool, got shape {gt.shape}")
    if gt.shape[0] != len(classes):
        raise ValueError(f"gt has {gt.shape[0]} masks but there are {len(classes)} classes")
    if pred.shape != gt.shape[1:]:
        raise ValueError(f"pred_labels {pred.shape} does not match gt masks {gt.shape[1:]}")
    if not np.issubdtype(pred.dtype, np.integer):
        raise ValueError(f"pred_labels must be integer class indices, got {pred.dtype}")
    if pred.size and (pred.min() < 0 or pred.max() >= len(classes)):
        raise ValueError(f"pred_labels must lie in [0, {len(classes)}), got [{pred.min()}, {pred.max()}]")
    return gt.astype(bool), pred.astype(np.int64)


def segmentation_view_metrics(gt: np.ndarray, pred_labels: np.ndarray, classes: Sequence[str]) -> dict:
    """Segmentation metrics of one annotated view (SPEC §5, 3D-OVS protocol).

    Args:
        gt: ``[C, H, W]`` bool ground-truth masks, one per entry of ``classes`` (a pixel may have zero or
            several labels).
        pred_labels: ``[H, W]`` int predicted class index per pixel, each in ``[0, C)``.
        classes: the ``C`` label names (class index = position).

    Returns:
        ``{"iou": {label: float}, "miou": float, "accuracy": float, "tp": {label: int},
        "gt_pixels": {label: int}, "pred_pixels": {label: int}, "n_pixels": int}``:

        - ``iou``: |GT_c ∩ Pred_c| / |GT_c ∪ Pred_c|, 0 when the label is absent from both;
        - ``miou``: mean of ``iou`` over all ``C`` labels (absent ones included, as 0);
        - ``accuracy``: fraction of pixels whose predicted one-hot row equals the GT row (subset accuracy);
        - ``tp`` / ``gt_pixels``: |GT_c ∩ Pred_c| and |GT_c|, the per-label recall counts :func:`aggregate`
          accumulates into mAcc (multi-labelled pixels count for each of their labels, unlabelled pixels for
          none); ``pred_pixels``: |Pred_c|.
    """
    gt, pred = _check_inputs(gt, pred_labels, classes)
    n_cls = len(classes)
    onehot = pred[None] == np.arange(n_cls)[:, None, None]  # [C, H, W]
    inter = np.logical_and(gt, onehot).reshape(n_cls, -1).sum(axis=1)  # [C]
    union = np.logical_or(gt, onehot).reshape(n_cls, -1).sum(axis=1)  # [C]
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)  # [C]
    # subset accuracy: the GT row must be exactly the predicted one-hot row
    exact = np.all(gt == onehot, axis=0)  # [H, W]
    n_pix = int(pred.size)
    return {
        "iou": {c: float(v) for c, v in zip(classes, iou)},
        "miou": float(iou.mean()) if n_cls else 0.0,
        "accuracy": float(exact.mean()) if n_pix else 0.0,
        "tp": {c: int(v) for c, v in zip(classes, inter)},
        "gt_pixels": {c: int(v) for c, v in zip(classes, gt.reshape(n_cls, -1).sum(axis=1))},
        "pred_pixels": {c: int(v) for c, v in zip(classes, onehot.reshape(n_cls, -1).sum(axis=1))},
        "n_pixels": n_pix,
    }


def aggregate(views: dict[int, dict], classes: Sequence[str]) -> dict:
    """Scene-level metrics from per-view results of :func:`segmentation_view_metrics`.

    Args:
        views: view index -> that view's :func:`segmentation_view_metrics` result.
        classes: the scene's label names (same order as for the per-view metrics).

    Returns:
        The SPEC §4 structure ``{"miou", "accuracy", "macc", "per_view": {"NN": {"miou", "accuracy",
        "iou": {label: float}}}, "classes": [...]}`` plus ``"class_iou"`` (mean IoU of each label over the
        views), ``"class_recall"`` (pooled recall of each label, ``None`` when it has no GT pixel) and
        ``"n_views"``. mIoU is the mean over all (view, label) pairs, accuracy the mean over views, mAcc the
        mean over labels of the pooled per-label recall (labels without GT pixels left out; 0.0 when no
        label has any). With no views every score is 0.0.
    """
    classes = list(classes)
    order = sorted(views)
    per_view = {}
    ious = []  # every (view, label) IoU
    tp = dict.fromkeys(classes, 0)
    gtp = dict.fromkeys(classes, 0)
    for v in order:
        m = views[v]
        missing = [c for c in classes if c not in m["iou"]]
        if missing:
            raise ValueError(f"view {v} has no metrics for labels {missing}")
        per_view[view_key(v)] = {
            "miou": float(m["miou"]),
            "accuracy": float(m["accuracy"]),
            "iou": {c: float(m["iou"][c]) for c in classes},
        }
        ious.extend(float(m["iou"][c]) for c in classes)
        for c in classes:
            tp[c] += int(m["tp"][c])
            gtp[c] += int(m["gt_pixels"][c])
    recall = {c: (tp[c] / gtp[c] if gtp[c] > 0 else None) for c in classes}
    valid = [r for r in recall.values() if r is not None]
    return {
        "miou": float(np.mean(ious)) if ious else 0.0,
        "accuracy": float(np.mean([views[v]["accuracy"] for v in order])) if order else 0.0,
        "macc": float(np.mean(valid)) if valid else 0.0,
        "per_view": per_view,
        "classes": classes,
        "class_iou": {c: float(np.mean([views[v]["iou"][c] for v in order])) if order else 0.0 for c in classes},
        "class_recall": recall,
        "n_views": len(order),
    }


def ovnerf_view_metrics(gt: np.ndarray, pred_labels: np.ndarray, classes: Sequence[str]) -> dict:
    """Segmentation metrics of one annotated view under the OV-NeRF protocol (SPEC §5).

    Follows OV-NeRF's released evaluator (reference digest §A.8): a confusion matrix over the view's
    labelled pixels, per-label IoU only for the labels it sees, ``nanmean`` over them.

    - **Void.** A GT pixel with no label, or with several labels (no single class to compare with), is
      void and ignored entirely, prediction included: a label predicted only on void pixels is absent.
    - **Present labels** are those with a labelled GT pixel or a prediction on a labelled pixel. Their IoU
      is ``TP / (GT + Pred − TP)`` over the labelled pixels; a label predicted but absent from the GT
      gets 0 and counts. **Absent labels get ``None``** (not 0) and stay out of the mean.
    - ``miou`` = mean IoU over the present labels; ``accuracy`` = pixel accuracy over the labelled pixels
      (``TP_total / n_labelled``, the number OV-NeRF's tables call "mAcc").
    - A view whose pixels are all void scores nothing: ``miou`` and ``accuracy`` are ``None`` and
      :func:`ovnerf_aggregate` leaves it out of the scene means.

    Args:
        gt: ``[C, H, W]`` bool ground-truth masks, one per entry of ``classes``.
        pred_labels: ``[H, W]`` int predicted class index per pixel, each in ``[0, C)``.
        classes: the ``C`` label names (class index = position).

    Returns:
        ``{"iou": {label: float | None}, "miou": float | None, "accuracy": float | None, "tp": {label: int},
        "gt_pixels": {label: int}, "pred_pixels": {label: int}, "n_labelled": int, "n_pixels": int}``;
        ``tp``, ``gt_pixels`` and ``pred_pixels`` count labelled pixels only (the per-label recall counts
        :func:`ovnerf_aggregate` pools into mAcc).
    """
    gt, pred = _check_inputs(gt, pred_labels, classes)
    n_cls = len(classes)
    labelled = gt.sum(axis=0) == 1  # [H, W] exactly one GT label
    gt_label = np.argmax(gt, axis=0)[labelled]  # [L] class of each labelled pixel
    pred_l = pred[labelled]  # [L]
    # confusion[i, j] = labelled pixels of GT class i predicted as j
    conf = np.bincount(gt_label * n_cls + pred_l, minlength=n_cls * n_cls).reshape(n_cls, n_cls)  # [C, C]
    tp = np.diag(conf)  # [C]
    gt_pix = conf.sum(axis=1)  # [C]
    pred_pix = conf.sum(axis=0)  # [C]
    union = gt_pix + pred_pix - tp  # [C]
    iou = {c: (float(tp[i] / union[i]) if union[i] > 0 else None) for i, c in enumerate(classes)}
    present = [v for v in iou.values() if v is not None]
    n_lab = int(labelled.sum())
    return {
        "iou": iou,
        "miou": float(np.mean(present)) if present else None,
        "accuracy": float(tp.sum() / n_lab) if n_lab else None,
        "tp": {c: int(v) for c, v in zip(classes, tp)},
        "gt_pixels": {c: int(v) for c, v in zip(classes, gt_pix)},
        "pred_pixels": {c: int(v) for c, v in zip(classes, pred_pix)},
        "n_labelled": n_lab,
        "n_pixels": int(pred.size),
    }


def ovnerf_aggregate(views: dict[int, dict], classes: Sequence[str]) -> dict:
    """Scene-level OV-NeRF-protocol metrics from per-view results of :func:`ovnerf_view_metrics`.

    The output has :func:`aggregate`'s structure, so :mod:`ovs3d.eval.report` writes either:

    - ``miou``: mean over views of the view mIoU (OV-NeRF averages per image, it does not pool a
      confusion matrix);
    - ``accuracy``: mean over views of the per-view pixel accuracy on labelled pixels — per image, like
      the released code and like mIoU, not pooled over the scene's pixels;
    - ``pixel_accuracy``: the same number under its own name; it is what OV-NeRF's tables call "mAcc";
    - ``macc``: SPEC's mAcc, the mean over labels of per-label recall ``TP_c / GT_c`` with counts pooled
      over views (labelled pixels only; labels without GT pixels left out, 0.0 when no label has any);
    - ``per_view``: ``{"NN": {"miou", "accuracy", "iou": {label: float | None}}}``, ``None`` for absent
      labels and for the scores of an all-void view;
    - ``class_iou``: each label's mean IoU over the views where it is present (``None`` if none);
      ``class_recall``: pooled per-label recall (``None`` without GT pixels);
    - ``n_views``: views given; ``n_scored_views``: those with at least one labelled pixel (the others
      are left out of ``miou`` and ``accuracy``). With no scored view every score is 0.0.

    Args:
        views: view index -> that view's :func:`ovnerf_view_metrics` result.
        classes: the scene's label names (same order as for the per-view metrics).

    Returns:
        ``{"miou", "accuracy", "pixel_accuracy", "macc", "per_view", "classes", "class_iou",
        "class_recall", "n_views", "n_scored_views"}``.
    """
    classes = list(classes)
    order = sorted(views)
    per_view = {}
    tp = dict.fromkeys(classes, 0)
    gtp = dict.fromkeys(classes, 0)
    class_ious: dict[str, list[float]] = {c: [] for c in classes}
    for v in order:
        m = views[v]
        missing = [c for c in classes if c not in m["iou"]]
        if missing:
            raise ValueError(f"view {v} has no metrics for labels {missing}")
        iou = {c: (None if m["iou"][c] is None else float(m["iou"][c])) for c in classes}
        per_view[view_key(v)] = {
            "miou": None if m["miou"] is None else float(m["miou"]),
            "accuracy": None if m["accuracy"] is None else float(m["accuracy"]),
            "iou": iou,
        }
        for c in classes:
            if iou[c] is not None:
                class_ious[c].append(iou[c])
            tp[c] += int(m["tp"][c])
            gtp[c] += int(m["gt_pixels"][c])
    scored = [v for v in order if views[v]["miou"] is not None]
    miou = float(np.mean([views[v]["miou"] for v in scored])) if scored else 0.0
    acc = float(np.mean([views[v]["accuracy"] for v in scored])) if scored else 0.0
    recall = {c: (tp[c] / gtp[c] if gtp[c] > 0 else None) for c in classes}
    valid = [r for r in recall.values() if r is not None]
    return {
        "miou": miou,
        "accuracy": acc,
        "pixel_accuracy": acc,
        "macc": float(np.mean(valid)) if valid else 0.0,
        "per_view": per_view,
        "classes": classes,
        "class_iou": {c: (float(np.mean(class_ious[c])) if class_ious[c] else None) for c in classes},
        "class_recall": recall,
        "n_views": len(order),
        "n_scored_views": len(scored),
    }


def psnr(pred: np.ndarray, gt: np.ndarray, max_db: float = 100.0) -> float:
    """Peak signal-to-noise ratio in dB of images with values in [0, 1].

    Args:
        pred: ``[H, W, 3]`` (any shape) float image in [0, 1].
        gt: same shape as ``pred``.
        max_db: value returned for identical images (MSE 0), so results stay finite and JSON-safe.

    Returns:
        ``-10 log10(MSE)``, at most ``max_db``.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"psnr: shapes differ, {pred.shape} vs {gt.shape}")
    mse = float(np.mean((pred - gt) ** 2))
    if mse <= 10.0 ** (-max_db / 10.0):
        return float(max_db)
    return -10.0 * math.log10(mse)


def relevancy_distance(relevancy: np.ndarray, mask: np.ndarray) -> float:
    """D_relevancy (LERF panoptic prior, Eq. 5): mean over pixels of (R_gt − R)².

    Args:
        relevancy: ``[H, W]`` float relevancy map of one query, values in [0, 1].
        mask: ``[H, W]`` bool GT mask of the query (R_gt).

    Returns:
        The distance in [0, 1]; lower is better.
    """
    rel = np.asarray(relevancy, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if rel.shape != m.shape:
        raise ValueError(f"relevancy {rel.shape} and mask {m.shape} differ in shape")
    return float(np.mean((m.astype(np.float64) - rel) ** 2))


def query_recall(
    relevancy: np.ndarray,
    mask: np.ndarray,
    top_frac: float = 0.1,
    inside_frac: float = 0.9,
    reading: str = "range",
) -> bool:
    """Whether one (view, query) pair succeeds under LERF-panoptic-prior query recall (SPEC §5).

    The pair succeeds when at least ``inside_frac`` of its highest-relevancy pixels lie inside the mask.
    "Highest" is, with ``reading="range"`` (SPEC §5, the one to report), every pixel with
    ``R >= max R − top_frac·(max R − min R)``; with ``reading="pixels"`` (the paper's other reading) the
    ``k = max(1, ceil(top_frac · H·W))`` highest pixels, ties with the k-th highest all included (a flat map
    cannot succeed by the luck of sort order). Recall over a scene is the mean over (view, query) pairs.

    Args:
        relevancy: ``[H, W]`` float relevancy map in [0, 1].
        mask: ``[H, W]`` bool GT mask of the query.
        top_frac: the top fraction (of the relevancy range, or of the pixels).
        inside_frac: fraction of the top set that must fall inside the mask.
        reading: ``"range"`` or ``"pixels"``.
    """
    rel = np.asarray(relevancy, dtype=np.float64).ravel()
    m = np.asarray(mask, dtype=bool).ravel()
    if rel.shape != m.shape:
        raise ValueError(f"relevancy and mask differ in shape ({rel.size} vs {m.size} pixels)")
    if rel.size == 0:
        return False
    if reading == "range":
        hi, lo = float(rel.max()), float(rel.min())
        thresh = hi - top_frac * (hi - lo)
    elif reading == "pixels":
        k = min(max(1, math.ceil(top_frac * rel.size - 1e-9)), rel.size)
        thresh = np.partition(rel, rel.size - k)[rel.size - k]  # k-th highest value
    else:
        raise ValueError(f"unknown recall reading {reading!r}; expected 'range' or 'pixels'")
    top = rel >= thresh
    return bool(np.count_nonzero(top & m) >= inside_frac * np.count_nonzero(top) - 1e-9)


def localization(relevancy: np.ndarray, mask: np.ndarray) -> bool:
    """LERF localisation: whether the highest-relevancy pixel (the first in row-major order on ties) lies in
    the mask.

    Args:
        relevancy: ``[H, W]`` float relevancy map.
        mask: ``[H, W]`` bool GT mask of the query.
    """
    rel = np.asarray(relevancy, dtype=np.float64).ravel()
    m = np.asarray(mask, dtype=bool).ravel()
    if rel.shape != m.shape:
        raise ValueError(f"relevancy and mask differ in shape ({rel.size} vs {m.size} pixels)")
    return bool(rel.size and m[int(np.argmax(rel))])


def relevancy_metrics(maps: dict[int, np.ndarray], gts: dict[int, np.ndarray], classes: Sequence[str]) -> dict:
    """D_relevancy, recall and localisation of the labels' relevancy maps over annotated views (SPEC §4–§5).

    Scores are averaged over the (view, label) pairs whose label is visible in that view's GT.

    Args:
        maps: view -> ``[C, H, W]`` relevancy of each label in [0, 1].
        gts: view -> ``[C, H, W]`` bool GT masks (same views, same resolution).
        classes: the ``C`` label names.

    Returns:
        ``{"d_relevancy", "recall", "localization", "n_pairs", "per_label": {label: {"d_relevancy", "recall",
        "localization", "n_views"}}, "per_view": {NN: {label: {...}}}}``; a label visible in no view has
        ``None`` scores.
    """
    per_label: dict[str, list[tuple[float, bool, bool]]] = {c: [] for c in classes}
    per_view: dict[str, dict] = {}
    for v in sorted(maps):
        rel, gt = np.asarray(maps[v]), np.asarray(gts[v], dtype=bool)
        if rel.shape != gt.shape:
            raise ValueError(f"view {v}: relevancy {rel.shape} and masks {gt.shape} differ in shape")
        entry = {}
        for c, name in enumerate(classes):
            if not gt[c].any():
                continue
            score = (relevancy_distance(rel[c], gt[c]), query_recall(rel[c], gt[c]), localization(rel[c], gt[c]))
            per_label[name].append(score)
            entry[name] = {"d_relevancy": score[0], "recall": float(score[1]), "localization": float(score[2])}
        per_view[view_key(v)] = entry
    pairs = [s for scores in per_label.values() for s in scores]

    def means(scores: list[tuple[float, bool, bool]]) -> dict:
        if not scores:
            return {"d_relevancy": None, "recall": None, "localization": None}
        arr = np.asarray(scores, dtype=np.float64)
        return {
            "d_relevancy": float(arr[:, 0].mean()),
            "recall": float(arr[:, 1].mean()),
            "localization": float(arr[:, 2].mean()),
        }

    return {
        **means(pairs),
        "n_pairs": len(pairs),
        "recall_reading": "range",
        "per_label": {c: {**means(s), "n_views": len(s)} for c, s in per_label.items()},
        "per_view": per_view,
    }
