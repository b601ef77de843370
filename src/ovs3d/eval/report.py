"""Writing evaluation outputs (SPEC §4): ``metrics.json``, predicted masks, overlays and the legend.

Layout written by :func:`write_segmentation_eval` under ``out_dir`` (normally ``RUN/eval``)::

    metrics.json            {"protocol", "miou", "accuracy", "macc", "per_view", "classes", ...extra}
    pred/NN/<label>.png     uint8, 255 where the label is predicted, 0 elsewhere (NN = view index, 2 digits)
    overlays/NN.png         RGB | GT overlay | prediction overlay | legend
    legend.png              class colours

and by :func:`write_rgb_eval` (reconstruction-only runs)::

    metrics.json            {"protocol", "psnr", "per_view": {NN: {"psnr"}}, ...extra}
    rgb/NN.png              rendered | ground truth, side by side

Every file goes through :mod:`ovs3d.utils.files` (atomic writes).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ovs3d.eval.metrics import (
    aggregate,
    masks_to_labels,
    ovnerf_aggregate,
    ovnerf_view_metrics,
    psnr,
    segmentation_view_metrics,
    view_key,
)
from ovs3d.eval.visualize import compose_eval_figure, label_palette, legend_image, text_band, upscale_nearest
from ovs3d.utils.files import atomic_write_image, atomic_write_json

__all__ = ["SEGMENTATION_METRICS", "write_segmentation_eval", "write_rgb_eval"]

logger = logging.getLogger(__name__)

SEGMENTATION_METRICS = {
    "3dovs": (segmentation_view_metrics, aggregate),
    "ovnerf": (ovnerf_view_metrics, ovnerf_aggregate),
}
"""Scoring protocols of SPEC §5: name -> (per-view metrics, scene aggregation) from :mod:`ovs3d.eval.metrics`."""


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _merge(metrics: dict, extra: dict | None) -> dict:
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(metrics))
    if clash:
        raise ValueError(f"extra keys {clash} would overwrite computed metrics")
    return {**metrics, **extra}


def write_segmentation_eval(
    out_dir: Path,
    scene_classes: Sequence[str],
    per_view_preds: dict[int, np.ndarray],
    per_view_gt: dict[int, np.ndarray],
    per_view_rgb: dict[int, np.ndarray] | None,
    protocol: str,
    extra: dict | None = None,
    *,
    metric: str | None = None,
) -> dict:
    """Score the predictions of every annotated view and write the SPEC §4 evaluation folder.

    Args:
        out_dir: destination folder (created).
        scene_classes: the ``C`` label names, class index = position.
        per_view_preds: view index -> ``[H, W]`` int predicted class index in ``[0, C)``.
        per_view_gt: view index -> ``[C, H, W]`` bool GT masks at the same resolution; must hold every view
            of ``per_view_preds``.
        per_view_rgb: view index -> ``[H, W, 3]`` float image in [0, 1] drawn under the overlays (the
            rendered or the real image); a missing view (or ``None``) is drawn grey.
        protocol: ``"3dovs"`` or ``"novel-view"``; recorded as ``"protocol"`` when ``metric`` is ``None``.
        extra: more top-level entries for ``metrics.json`` (``psnr``, ``resolution``, ``method``...); they
            may not reuse a computed key.
        metric: the scoring protocol of SPEC §5, a key of :data:`SEGMENTATION_METRICS`: ``"3dovs"``
            (:func:`~ovs3d.eval.metrics.segmentation_view_metrics` + :func:`~ovs3d.eval.metrics.aggregate`)
            or ``"ovnerf"`` (:func:`~ovs3d.eval.metrics.ovnerf_view_metrics` +
            :func:`~ovs3d.eval.metrics.ovnerf_aggregate`). Given, ``"protocol"`` records it and the
            ``protocol`` argument is kept as ``"split"`` (``"3dovs"``: the annotated views trained,
            ``"novel-view"``: they were held out). ``None``
            (default) is exactly the behaviour from before this parameter: 3D-OVS scoring, ``protocol``
            recorded as given.

    Returns:
        The dict written to ``metrics.json``: ``{"protocol", "miou", "accuracy", "macc", "per_view",
        "classes", "class_iou", "class_recall", "n_views", **extra}`` (plus ``"split"`` when ``metric`` is
        given); the OV-NeRF protocol adds ``"pixel_accuracy"`` and ``"n_scored_views"`` and may hold
        ``None`` for absent labels and unscorable views (see :func:`~ovs3d.eval.metrics.ovnerf_aggregate`).
    """
    if metric is not None and metric not in SEGMENTATION_METRICS:
        raise ValueError(f"unknown segmentation metric {metric!r}; expected one of {sorted(SEGMENTATION_METRICS)}")
    view_metrics, aggregate_views = SEGMENTATION_METRICS[metric or "3dovs"]
    header = {"protocol": protocol} if metric is None else {"protocol": metric}
    if metric is not None:
        header["split"] = protocol  # which views trained: the scoring protocol no longer says it
    out_dir = Path(out_dir)
    classes = list(scene_classes)
    missing = sorted(set(per_view_preds) - set(per_view_gt))
    if missing:
        raise ValueError(f"no ground truth for predicted views {missing}")
    palette = label_palette(len(classes))
    views = {}
    for v in sorted(per_view_preds):
        pred = np.asarray(per_view_preds[v])
        gt = np.asarray(per_view_gt[v], dtype=bool)
        m = view_metrics(gt, pred, classes)
        views[v] = m
        key = view_key(v)
        for c, name in enumerate(classes):
            atomic_write_image(out_dir / "pred" / key / f"{name}.png", np.where(pred == c, 255, 0).astype(np.uint8))
        rgb = None if per_view_rgb is None else per_view_rgb.get(v)
        title = f"view {key}   mIoU {_fmt(m['miou'])}   accuracy {_fmt(m['accuracy'])}   ({header['protocol']})"
        fig = compose_eval_figure(rgb, masks_to_labels(gt), pred, classes, palette, title=title)
        atomic_write_image(out_dir / "overlays" / f"{key}.png", fig)
    atomic_write_image(out_dir / "legend.png", legend_image(classes, palette))
    metrics = _merge({**header, **aggregate_views(views, classes)}, extra)
    atomic_write_json(out_dir / "metrics.json", metrics)
    logger.info(
        "eval: mIoU %.4f, accuracy %.4f, mAcc %.4f over %d views -> %s",
        metrics["miou"],
        metrics["accuracy"],
        metrics["macc"],
        len(views),
        out_dir,
    )
    return metrics


def write_rgb_eval(
    out_dir: Path,
    psnr_per_view: dict[int, float] | None,
    pred_images: dict[int, np.ndarray],
    gt_images: dict[int, np.ndarray],
    protocol: str,
    extra: dict | None = None,
) -> dict:
    """Write the evaluation of a reconstruction-only run: PSNR per view and rendered | GT pictures.

    Args:
        out_dir: destination folder (created).
        psnr_per_view: view index -> PSNR in dB; ``None`` computes it from the images with
            :func:`ovs3d.eval.metrics.psnr`.
        pred_images: view index -> ``[H, W, 3]`` float rendered image in [0, 1].
        gt_images: view index -> ``[H, W, 3]`` float real image in [0, 1], same views.
        protocol: recorded as is.
        extra: more top-level entries for ``metrics.json``; they may not reuse a computed key.

    Returns:
        The dict written to ``metrics.json``: ``{"protocol", "psnr", "per_view": {"NN": {"psnr"}},
        "n_views", **extra}``; ``psnr`` is the mean of the per-view PSNRs (0.0 with no views).
    """
    out_dir = Path(out_dir)
    missing = sorted(set(pred_images) ^ set(gt_images))
    if missing:
        raise ValueError(f"views {missing} lack a rendered or a ground-truth image")
    if psnr_per_view is None:
        psnr_per_view = {v: psnr(pred_images[v], gt_images[v]) for v in pred_images}
    per_view = {}
    for v in sorted(psnr_per_view):
        per_view[view_key(v)] = {"psnr": float(psnr_per_view[v])}
    for v in sorted(pred_images):
        pred = np.clip(np.asarray(pred_images[v], dtype=np.float64), 0, 1)
        gt = np.clip(np.asarray(gt_images[v], dtype=np.float64), 0, 1)
        if pred.shape != gt.shape:
            raise ValueError(f"view {v}: rendered {pred.shape} and real {gt.shape} images differ in shape")
        h, w = pred.shape[:2]
        s = max(1, -(-256 // max(h, 1)))
        pair = [
            upscale_nearest((pred * 255 + 0.5).astype(np.uint8), s),
            upscale_nearest((gt * 255 + 0.5).astype(np.uint8), s),
        ]
        gap = np.full((h * s, 6, 3), 255, dtype=np.uint8)
        img = np.concatenate([pair[0], gap, pair[1]], axis=1)
        label = f"view {view_key(v)}   rendered | ground truth"
        if v in psnr_per_view:
            label += f"   PSNR {float(psnr_per_view[v]):.2f} dB"
        img = np.concatenate([text_band(label, img.shape[1]), img], axis=0)
        atomic_write_image(out_dir / "rgb" / f"{view_key(v)}.png", img)
    values = [d["psnr"] for d in per_view.values()]
    metrics = {
        "protocol": protocol,
        "psnr": float(np.mean(values)) if values else 0.0,
        "per_view": per_view,
        "n_views": len(per_view),
    }
    metrics = _merge(metrics, extra)
    atomic_write_json(out_dir / "metrics.json", metrics)
    logger.info("eval: PSNR %.2f dB over %d views -> %s", metrics["psnr"], len(per_view), out_dir)
    return metrics
