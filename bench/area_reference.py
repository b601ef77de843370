"""mIoU of a pixel's area-majority label against the evaluation's nearest-resized GT (3D-OVS protocol).

Each pixel at the semantic resolution takes the label that covers most of its footprint in the full-resolution
GT masks: what perfect evidence integrated over the pixel's area would predict. The evaluation resizes the GT
with nearest neighbour, i.e. reads one point per pixel, so this is a reference for how much of a small object's
IoU is lost to its one-pixel-wide border alone at that resolution, not an upper bound (a ray is a point too).

Usage::

    python bench/area_reference.py bench/out/test/hard-test-2001 bench/out/val/hard-val-1001 --downscale 4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ovs3d.io.loader import load_scene


def area_majority_miou(scene_dir: Path, downscale: int) -> tuple[float, tuple[int, int]]:
    """The area-majority mIoU of a scene's annotated views and the ``(h, w)`` it is scored at."""
    scene = load_scene(scene_dir)
    ious = []
    for v in scene.annotated:
        gt = scene.load_masks(v, downscale).astype(bool)  # [C, h, w], as eval reads it
        full = scene.load_masks(v).astype(np.float32)  # [C, H, W]
        c, h, w = gt.shape
        area = full[:, : h * downscale, : w * downscale].reshape(c, h, downscale, w, downscale).mean((2, 4))
        pred = area.argmax(0)
        for k in range(c):
            p, g = pred == k, gt[k]
            union = (p | g).sum()
            ious.append((p & g).sum() / union if union else 0.0)
    return float(np.mean(ious)), (h, w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenes", type=Path, nargs="+")
    ap.add_argument("--downscale", type=int, default=4, help="the semantic downscale (an integer here)")
    args = ap.parse_args()
    print("| scene | scored at | area-majority mIoU |")
    print("|---|---|---|")
    for d in args.scenes:
        miou, (h, w) = area_majority_miou(d, args.downscale)
        print(f"| {d} | {w}x{h} | {miou:.3f} |")


if __name__ == "__main__":
    main()
