"""Picture of what a read-out changes on one annotated view of each run: the rendered colour, the labels read two
ways, and where each is wrong. ``--compare crf`` (default): the argmax against the dense CRF; ``--compare fill``:
the CRF without and with the fill of empty pixels (``--semantic.empty-fill-opacity 0.5``).

Usage::

    python bench/crf_picture.py --runs RUN [RUN ...] --names NAME [NAME ...] --out picture.png
    python bench/crf_picture.py --runs RUN --names NAME --compare fill --view 21 --out picture.png
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ovs3d.eval.visualize import label_palette, overlay_segmentation  # noqa: E402
from ovs3d.methods.reconstruction import CHECKPOINT_NAME, load_trained_field  # noqa: E402
from ovs3d.methods.registry import get_method  # noqa: E402
from ovs3d.run import _load_scene, fit_config_from_run  # noqa: E402
from refine_probe import with_default_crf  # noqa: E402  (bench/ is the script's folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True)
    ap.add_argument("--names", nargs="+", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--compare", choices=("crf", "fill"), default="crf")
    ap.add_argument("--view", type=int, default=None, help="view index (default: each run's first annotated view)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for run, name in zip(args.runs, args.names):
        cfg = fit_config_from_run(run)
        scene = _load_scene(cfg.scene, cfg.kind)
        method = get_method(cfg.method).load(
            load_trained_field(run / "checkpoints" / CHECKPOINT_NAME, "cpu"), run, "cpu"
        )
        crf = with_default_crf(method.cfg, scene.kind)
        if args.compare == "crf":
            readouts = (("argmax", replace(method.cfg, crf_iters=0)), ("dense CRF", crf))
        else:
            no_fill, fill = replace(crf, empty_fill_opacity=0.0), replace(crf, empty_fill_opacity=0.5)
            readouts = (("CRF, no fill", no_fill), ("CRF after the fill (0.5)", fill))
        v = scene.annotated[0] if args.view is None else args.view
        if v not in scene.annotated:
            raise SystemExit(f"error: view {v} of {run} is not annotated (annotated: {list(scene.annotated)})")
        r = method.render_view(scene, v, cfg.features.semantic_downscale)
        gt = scene.load_masks(v, cfg.features.semantic_downscale)
        labelled = gt.any(0)
        gl = gt.argmax(0)
        rgb = r["rgb"].numpy()
        pal = label_palette(len(scene.classes))
        panels = [("rendered colour", rgb)]
        for title, c in readouts:
            method.cfg = c
            pred = method.predict_labels(r).numpy()
            wrong = labelled & (pred != gl)
            err = rgb * 0.35
            err[wrong] = [1.0, 0.1, 0.1]
            miou = np.mean([((pred == k) & gt[k]).sum() / max(((pred == k) | gt[k]).sum(), 1) for k in range(len(gt))])
            panels += [(f"{title}: labels", overlay_segmentation(rgb, pred, pal) / 255.0),
                       (f"{title}: wrong pixels ({wrong.sum()}), view mIoU {miou:.3f}", err)]  # fmt: skip
        rows.append((f"{name}, view {v}", panels))
    fig, axes = plt.subplots(len(rows), 5, figsize=(17, 3.2 * len(rows)), squeeze=False)
    for ax_row, (name, panels) in zip(axes, rows):
        for ax, (title, img) in zip(ax_row, panels):
            ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        ax_row[0].set_title(f"{name}\nrendered colour", fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
