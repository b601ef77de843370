"""Where a label's pixels go: per GT label, the shares of its pixels that each run predicts as each label.

Reads the scene's GT masks and each run's ``eval/pred`` maps (or a baseline's ``pred``), at the prediction's
resolution (GT resized with nearest neighbour), pixels with exactly one GT label only, pooled over the
annotated views. Prints the three largest shares per GT label.

Usage::

    python bench/confusion.py --scene bench/out/val/hard-val-1001 --runs RUN BASELINE_RUN
"""

from __future__ import annotations

import argparse
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from skimage.transform import resize


def _masks(folder: Path, view: str, classes: list[str]) -> np.ndarray:
    """``[C, H, W]`` bool masks of a view folder (``<label>.png``, 255 = the label)."""
    out = []
    for c in classes:
        m = iio.imread(folder / view / f"{c}.png")
        out.append((m if m.ndim == 2 else m[..., 0]) > 127)
    return np.stack(out)


def confusion(scene: Path, pred_root: Path) -> tuple[list[str], np.ndarray]:
    """``(classes, [C, C] pixel counts)``: rows = GT label, columns = predicted label (``pred_root``: a run,
    its ``eval``, or a baseline folder)."""
    for sub in ("pred", "eval/pred"):
        if (pred_root / sub).is_dir():
            pred_root = pred_root / sub
            break
    classes = [c for c in (scene / "segmentations" / "classes.txt").read_text().splitlines() if c]
    views = sorted(p.name for p in (scene / "segmentations").iterdir() if p.is_dir())
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for v in views:
        pred = _masks(pred_root, v, classes)
        gt = _masks(scene / "segmentations", v, classes)
        if gt.shape != pred.shape:
            gt = np.stack([resize(g.astype(float), pred.shape[1:], order=0) > 0.5 for g in gt])
        valid = gt.sum(0) == 1
        np.add.at(counts, (gt.argmax(0)[valid], pred.argmax(0)[valid]), 1)
    return classes, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", type=Path, required=True)
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="runs, their eval/, or baselines")
    args = ap.parse_args()
    for run in args.runs:
        classes, counts = confusion(args.scene, run)
        print(f"== {run}")
        for i, c in enumerate(classes):
            row, total = counts[i], max(int(counts[i].sum()), 1)
            top = [j for j in np.argsort(-row)[:3] if row[j] > 0]
            print(f"{c:28s} n={total:5d}  " + "  ".join(f"{classes[j]}: {row[j] / total:.2f}" for j in top))


if __name__ == "__main__":
    main()
