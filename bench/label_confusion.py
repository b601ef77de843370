"""Where a label's pixels go: confusion counts of chosen labels over a run's stored predictions.

For each run (``ovs3d eval``'s ``eval/pred/<view>/<label>.png`` masks, or a 2D baseline's), counts over the
scene's annotated views where the GT pixels of each chosen label went (its recall side) and which GT labels the
pixels predicted as it had (its precision side). Diagnosis only.

Usage::

    python bench/label_confusion.py bench/out/test/hard-test-2005 "a pink piggy bank,a white candle" \\
        defaults=RUN gt=RUN-gt-targets
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from ovs3d.eval.metrics import masks_to_labels, view_key
from ovs3d.io.loader import load_scene


def predicted_labels(folder: Path, classes: list[str]) -> np.ndarray:
    """``[H, W]`` label indices of one view's predicted per-label masks, as ``ovs3d eval`` writes them."""
    return masks_to_labels(np.stack([np.asarray(Image.open(folder / f"{c}.png").convert("L")) > 127 for c in classes]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scene", type=Path)
    ap.add_argument("labels", help="comma-separated labels to report")
    ap.add_argument("runs", nargs="+", help="NAME=RUN_FOLDER")
    args = ap.parse_args()
    scene = load_scene(args.scene)
    classes = list(scene.classes)
    focus = [classes.index(x) for x in args.labels.split(",")]
    n = len(classes)
    for name, run in (x.split("=", 1) for x in args.runs):
        conf = np.zeros((n, n), int)
        for v in scene.annotated:
            pred_dir = Path(run) / "eval" / "pred" / view_key(v)
            if not pred_dir.exists():
                continue
            pred = predicted_labels(pred_dir, classes)
            gt = masks_to_labels(scene.load_masks(v, scene.width / pred.shape[1]))  # [H, W], -1 = no label
            if gt.shape != pred.shape:
                raise SystemExit(f"{pred_dir}: predictions of {pred.shape} against GT of {gt.shape}")
            has = gt >= 0
            np.add.at(conf, (gt[has], pred[has]), 1)
        for k in focus:
            row, col = conf[k], conf[:, k]
            went = ", ".join(f"{classes[j]} {row[j]}" for j in np.argsort(-row)[:3] if row[j])
            came = ", ".join(f"{classes[j]} {col[j]}" for j in np.argsort(-col)[:3] if col[j])
            print(f"{name}: {classes[k]}: {row.sum()} GT px -> {went} | predicted from {came}")


if __name__ == "__main__":
    main()
