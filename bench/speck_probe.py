"""Probe: how much do isolated specks of a predicted label cost, and what does removing them give?

Renders the annotated views of finished runs once and scores their label maps (both protocols) after
:func:`remove_specks` at several minimum segment sizes, given as fractions of a view's pixels (0 = the
prediction as it is). Under the OV-NeRF protocol a label predicted on a few pixels of a view that does not show
it counts as an IoU of 0 in that view's mean. Not part of the library: SPEC §5 scores the per-pixel argmax.

Usage::

    python bench/speck_probe.py RUN [RUN ...] [--fractions 0 0.0002 0.0005 0.001 0.002]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ovs3d.eval.metrics import aggregate, ovnerf_aggregate, ovnerf_view_metrics, segmentation_view_metrics
from ovs3d.methods.reconstruction import CHECKPOINT_NAME, load_trained_field
from ovs3d.methods.registry import get_method
from ovs3d.run import _load_scene, fit_config_from_run

_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity: a diagonal step joins two pixels


def remove_specks(labels: np.ndarray, min_fraction: float) -> np.ndarray:
    """Relabel every connected segment smaller than ``min_fraction`` of the image with its surroundings' label.

    A segment is a set of 8-connected pixels of one label. One with at most ``min_fraction × H × W`` pixels
    (``floor``) takes the most frequent label among the pixels that touch it (ties: the lowest label index); a
    segment that touches nothing else (the whole image) stays. Segments are visited per label in
    increasing label order, each against the map as it was given, so the result does not depend on the order
    of relabelling.

    Args:
        labels: ``[H, W]`` integer label map.
        min_fraction: largest removed segment, as a fraction of the image's pixels (0 = return a copy).

    Returns:
        ``[H, W]`` label map of the same dtype.
    """
    out = labels.copy()
    max_pixels = int(np.floor(min_fraction * labels.size + 1e-9))  # 2 / 90 * 90 must give 2
    if max_pixels < 1:
        return out
    for c in np.unique(labels):
        seg, n = ndimage.label(labels == c, structure=_EIGHT)
        sizes = np.bincount(seg.ravel(), minlength=n + 1)
        for i in np.nonzero(sizes[1:] <= max_pixels)[0] + 1:
            part = seg == i
            ring = ndimage.binary_dilation(part, structure=_EIGHT) & ~part
            around = labels[ring]
            if around.size:
                out[part] = np.bincount(around).argmax()
    return out


@torch.no_grad()
def probe(run: Path, fractions: list[float]) -> dict:
    cfg = fit_config_from_run(run)
    scene = _load_scene(cfg.scene, cfg.kind)
    method = get_method(cfg.method).load(load_trained_field(run / "checkpoints" / CHECKPOINT_NAME, "cpu"), run, "cpu")
    ds, classes = cfg.features.semantic_downscale, list(scene.classes)
    ov: dict = {f: {} for f in fractions}
    d3: dict = {f: {} for f in fractions}
    for v in scene.annotated:
        pred = method.predict_labels(method.render_view(scene, v, ds)).numpy()
        gt = scene.load_masks(v, ds)
        for f in fractions:
            p = remove_specks(pred, f)
            ov[f][v] = ovnerf_view_metrics(gt, p, classes)
            d3[f][v] = segmentation_view_metrics(gt, p, classes)
    return {
        "run": str(run),
        "resolution": list(scene.image_size(ds)),
        "miou_ovnerf": {str(f): round(ovnerf_aggregate(ov[f], classes)["miou"], 4) for f in fractions},
        "miou_3dovs": {str(f): round(aggregate(d3[f], classes)["miou"], 4) for f in fractions},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.0, 0.0002, 0.0005, 0.001, 0.002])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for run in args.runs:
        print(json.dumps(probe(run, args.fractions)), flush=True)


if __name__ == "__main__":
    main()
