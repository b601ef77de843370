"""Opacity, depth and depth spread of reconstructions side by side: where a field leaves a surface empty or fogged.

For each run (a reconstruction, or a semantic run with its copied checkpoint) and each view: the photo, the
rendered opacity (sum of the weights; 1 = the ray ends on a surface), the expected depth and the depth spread
(``render_view(..., spread=True)``: :func:`ovs3d.render.volume.depth_spread`, how far a ray's weight spreads
along it, in ray-parameter units; NDC on forward-facing scenes), with a label's GT outline drawn on every panel;
printed: the mean opacity over the label's pixels and over the rest, the view's PSNR and its mean depth spread.

Usage::

    python bench/opacity_maps.py --scene SCENE --runs RUN_A RUN_B --label "a black chess pawn" --views 2 12 \\
        --out bench/results/opacity.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ovs3d.eval.metrics import masks_to_labels  # noqa: E402
from ovs3d.eval.metrics import psnr as image_psnr  # noqa: E402
from ovs3d.io.loader import load_scene  # noqa: E402
from ovs3d.methods.reconstruction import CHECKPOINT_NAME, load_trained_field, render_view  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", type=Path, required=True)
    ap.add_argument("--runs", type=Path, nargs="+", required=True)
    ap.add_argument("--names", nargs="+", default=None, help="one per run (default: the run folders' names)")
    ap.add_argument("--label", required=True, help="GT label whose outline is drawn")
    ap.add_argument("--views", type=int, nargs="+", default=None, help="annotated views (default: the first)")
    ap.add_argument("--downscale", type=float, default=2.0)
    ap.add_argument("--spread-max", type=float, default=0.08, help="top of the depth-spread colour scale")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    scene = load_scene(args.scene)
    views = args.views or list(scene.annotated)[:1]
    names = args.names or [r.name for r in args.runs]
    ci = list(scene.classes).index(args.label)
    fields = [load_trained_field(r / "checkpoints" / CHECKPOINT_NAME, "cpu") for r in args.runs]
    rows = len(views) * len(fields)
    fig, ax = plt.subplots(rows, 4, figsize=(12, 2.4 * rows), squeeze=False)
    row = 0
    for v in views:
        inside = masks_to_labels(scene.load_masks(v, args.downscale)) == ci
        photo = scene.load_image(v, args.downscale)
        for name, trained in zip(names, fields):
            out = render_view(trained, scene, v, args.downscale, spread=True)
            acc, depth, spread = out["acc"], out["depth"], out["depth_spread"]
            psnr = image_psnr(out["rgb"], photo)
            print(
                f"view {v} {name}: opacity on {args.label!r} {acc[inside].mean():.2f}, elsewhere "
                f"{acc[~inside].mean():.2f}; opacity < 0.5 on {100 * (acc < 0.5).mean():.1f}% of the view; "
                f"PSNR {psnr:.2f} dB; depth spread {spread.mean():.4f} (on the label {spread[inside].mean():.4f})"
            )
            panels = [(out["rgb"], "render"), (acc, "opacity"), (depth, "depth"), (spread, "depth spread")]
            for k, (img, title) in enumerate(panels):
                a = ax[row, k]
                if title == "opacity":
                    a.imshow(img, vmin=0, vmax=1)
                elif title == "depth spread":
                    a.imshow(img, vmin=0, vmax=args.spread_max, cmap="viridis")
                    title = f"depth spread (mean {img.mean():.4f})"
                else:
                    a.imshow(img)
                a.contour(inside, colors="r", linewidths=0.6)
                a.set_title(f"view {v}, {name}: {title}", fontsize=7)
                a.axis("off")
            row += 1
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
