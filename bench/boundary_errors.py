"""Where a run's small-label errors lie: on the object's edge, in the one-pixel ring around it, or elsewhere.

For every label that covers at most 20 % of an annotated view (the backgrounds are left out), counts over the
annotated views at the run's semantic resolution: GT pixels, true positives, missed pixels on the mask's edge
(a GT pixel with a non-GT neighbour) and inside it, false positives in the one-pixel ring around the mask and
farther away; and the IoU of those counts. Reads the binary masks ``ovs3d eval`` (or the 2D baseline)
writes to ``<eval>/pred/<NN>/<label>.png``.

Usage::

    python bench/boundary_errors.py --scene bench/out/val/hard-val-1001 --downscale 4 --preds \\
        bench/out/val/hard-val/seed1001/3dovs/full/eval/pred bench/out/val/hard-val/seed1001/baseline-minmax/pred
"""

from __future__ import annotations

import argparse
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from scipy.ndimage import binary_dilation, binary_erosion

from ovs3d.io.loader import load_scene


def counts(scene, pred_dir: Path, downscale: float) -> dict[str, np.ndarray]:
    """Per small label: ``[gt, tp, fn_edge, fn_inner, fp_ring, fp_far]`` summed over the annotated views."""
    out: dict[str, np.ndarray] = {}
    for v in scene.annotated:
        gt = scene.load_masks(v, downscale).astype(bool)  # [C, h, w]
        for ci, c in enumerate(scene.classes):
            g = gt[ci]
            if g.mean() > 0.2:
                continue
            p = iio.imread(pred_dir / f"{v:02d}" / f"{c}.png") > 127
            p = p[..., 0] if p.ndim == 3 else p
            ring = binary_dilation(g) & ~g
            edge = g & ~binary_erosion(g)
            row = [g.sum(), (p & g).sum(), (g & ~p & edge).sum(), (g & ~p & ~edge).sum()]
            row += [(p & ring).sum(), (p & ~g & ~ring).sum()]
            out[c] = out.get(c, np.zeros(6, np.int64)) + np.array(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", type=Path, required=True)
    ap.add_argument("--preds", type=Path, nargs="+", required=True, help="pred/ folders of eval or baseline runs")
    ap.add_argument("--downscale", type=float, default=4.0, help="the runs' semantic downscale")
    args = ap.parse_args()
    scene = load_scene(args.scene)
    for pred in args.preds:
        table = counts(scene, pred, args.downscale)
        print(f"\n{pred}")
        print("| label | GT px | TP | missed, edge | missed, inside | false, ring | false, farther | IoU |")
        print("|---|---|---|---|---|---|---|---|")
        for c, t in [*table.items(), ("all small labels", sum(table.values()))]:
            iou = t[1] / (t[0] + t[4] + t[5]) if t[0] else 0.0
            print(f"| {c} | " + " | ".join(str(int(x)) for x in t) + f" | {iou:.2f} |")


if __name__ == "__main__":
    main()
