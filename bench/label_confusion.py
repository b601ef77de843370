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
import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image


def label_map(folder: Path, labels: list[str], size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``[H, W]`` label indices from one view's per-label masks (resized by nearest to ``size`` = (H, W)) and
    ``[H, W]`` whether any label covers the pixel."""
    masks = []
    for label in labels:
        m = np.asarray(iio.imread(folder / f"{label}.png"))
        m = m[..., 0] if m.ndim == 3 else m
        if size and m.shape != size:
            m = np.asarray(Image.fromarray(m).resize((size[1], size[0]), Image.NEAREST))
        masks.append(m > 127)
    stack = np.stack(masks)
    return stack.argmax(0), stack.any(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scene", type=Path)
    ap.add_argument("labels", help="comma-separated labels to report")
    ap.add_argument("runs", nargs="+", help="NAME=RUN_FOLDER")
    args = ap.parse_args()
    labels = sorted(set(json.loads((args.scene / "sim" / "instances.json").read_text())["labels"].values()))
    focus = [labels.index(x) for x in args.labels.split(",")]
    views = sorted(p.name for p in (args.scene / "segmentations").iterdir() if p.is_dir())
    for name, run in (x.split("=", 1) for x in args.runs):
        n = len(labels)
        conf = np.zeros((n, n), int)
        for v in views:
            pred_dir = Path(run) / "eval" / "pred" / v
            if not pred_dir.exists():
                continue
            pred, _ = label_map(pred_dir, labels)
            gt, has = label_map(args.scene / "segmentations" / v, labels, pred.shape)
            np.add.at(conf, (gt[has], pred[has]), 1)
        for k in focus:
            row, col = conf[k], conf[:, k]
            went = ", ".join(f"{labels[j]} {row[j]}" for j in np.argsort(-row)[:3] if row[j])
            came = ", ".join(f"{labels[j]} {col[j]}" for j in np.argsort(-col)[:3] if col[j])
            print(f"{name}: {labels[k]}: {row.sum()} GT px -> {went} | predicted from {came}")


if __name__ == "__main__":
    main()
