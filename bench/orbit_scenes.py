"""``orbit`` scenes (issue 12, part 3): generate seeds 0-2 at the default size and describe them.

For each seed, writes ``bench/out/orbit/orbit-<seed>`` with ``make_scene("orbit", seed)`` unless a scene is
already there (then its generation time is shown as ``cached``), loads it with ``ovs3d.io.loader.load_scene``
and prints one markdown row: views, annotated views, labels, the loader's scene kind, the far/near ratio
(largest far over smallest near), the largest far bound over the largest camera distance from the centre
(the loader's normalised world puts the cameras on the unit sphere), the smallest share of the image any
label covers in an annotated view, and the generation time. Below the table, the share of every label
(minimum over the annotated views). Writes a contact sheet ``bench/results/issue12-orbit-scenes.png``: per
seed, a low-ring and a high-ring training view and every annotated view with its ground-truth overlay.

Usage::

    .venv/bin/python bench/orbit_scenes.py [--seeds 0 1 2] [--force]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from ovs3d.eval.metrics import masks_to_labels
from ovs3d.eval.visualize import label_palette, legend_image, overlay_segmentation, text_band, upscale_nearest
from ovs3d.io.loader import load_scene
from ovs3d.scenegen import OrbitConfig, make_scene
from ovs3d.utils.console import set_quiet
from ovs3d.utils.files import atomic_write_image

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "out" / "orbit"
SHEET = ROOT / "results" / "issue12-orbit-scenes.png"
SCALE = 2
"""Panels of the contact sheet are the images enlarged this many times (nearest neighbour)."""


def _describe(folder: Path) -> dict:
    """Numbers of one scene folder (see the module docstring)."""
    scene = load_scene(folder)
    cam = np.linalg.norm(scene.c2w[:, :, 3].astype(np.float64), axis=1).max()
    near, far = scene.near_far[:, 0].astype(np.float64), scene.near_far[:, 1].astype(np.float64)
    share = {}
    for view in scene.annotated:
        masks = scene.load_masks(view)
        for label, mask in zip(scene.classes, masks):
            share[label] = min(share.get(label, 1.0), float(mask.mean()))
    return {
        "scene": scene,
        "views": scene.n_views,
        "annotated": len(scene.annotated),
        "labels": len(scene.classes),
        "kind": scene.kind,
        "far_near": float(far.max() / near.min()),
        "far_cam": float(far.max() / cam),
        "share": share,
    }


def _row(scene, title: str) -> np.ndarray:
    """One contact-sheet row: a low-ring and a high-ring training view, then every annotated view's GT overlay."""
    palette = label_palette(len(scene.classes))
    cfg = OrbitConfig()
    sizes = cfg.ring_sizes() if scene.n_views == cfg.n_views else [scene.n_views]
    train = [sizes[0] // 2, scene.n_views - sizes[-1] // 2 - 1]
    panels = []
    for view in train:
        rgb = scene.load_image(view)
        panels.append((f"view {view} (train)", (upscale_nearest(rgb, SCALE) * 255 + 0.5).astype(np.uint8)))
    for view in scene.annotated:
        rgb = upscale_nearest(scene.load_image(view), SCALE)
        labels = upscale_nearest(masks_to_labels(scene.load_masks(view)), SCALE)
        panels.append((f"view {view} (GT)", overlay_segmentation(rgb, labels, palette)))
    h, w = panels[0][1].shape[:2]
    gap = np.full((h + 22, 4, 3), 255, dtype=np.uint8)
    cols = []
    for name, img in panels:
        cols += [np.concatenate([text_band(name, w, 12), img], axis=0), gap]
    body = np.concatenate(cols, axis=1)
    legend = legend_image(scene.classes, palette, height=body.shape[0], font_size=12)
    lh = max(body.shape[0], legend.shape[0])
    pad = [np.full((lh, x.shape[1], 3), 255, dtype=np.uint8) for x in (body, legend)]
    pad[0][: body.shape[0]] = body
    pad[1][: legend.shape[0]] = legend
    row = np.concatenate(pad, axis=1)
    return np.concatenate([text_band(title, row.shape[1], 14), row], axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--force", action="store_true", help="regenerate scenes that are already there")
    args = parser.parse_args()
    set_quiet(True)
    rows, sheet = [], []
    for seed in args.seeds:
        folder = OUT / f"orbit-{seed}"
        seconds = None
        if args.force and folder.exists():
            shutil.rmtree(folder)
        if not (folder / "sim" / "instances.json").is_file():
            t0 = time.perf_counter()
            make_scene("orbit", seed, folder)
            seconds = time.perf_counter() - t0
        d = _describe(folder)
        d["seed"], d["seconds"] = seed, seconds
        rows.append(d)
        title = (
            f"orbit seed {seed}: {d['views']} views, {d['labels']} labels, kind {d['kind']}, "
            f"far/near {d['far_near']:.1f}, max far / camera distance {d['far_cam']:.1f}"
        )
        sheet.append(_row(d["scene"], title))

    print("| seed | views | annotated | labels | kind | far/near | max far / cam dist | min label share | gen s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d in rows:
        gen = "cached" if d["seconds"] is None else f"{d['seconds']:.1f}"
        print(
            f"| {d['seed']} | {d['views']} | {d['annotated']} | {d['labels']} | {d['kind']} | {d['far_near']:.1f} "
            f"| {d['far_cam']:.2f} | {100 * min(d['share'].values()):.2f}% | {gen} |"
        )
    for d in rows:
        shares = ", ".join(f"{k} {100 * v:.1f}%" for k, v in sorted(d["share"].items(), key=lambda kv: kv[1]))
        print(f"\nseed {d['seed']} label share (min over annotated views): {shares}")

    width = max(r.shape[1] for r in sheet)
    padded = []
    for r in sheet:
        p = np.full((r.shape[0] + 8, width, 3), 255, dtype=np.uint8)
        p[: r.shape[0], : r.shape[1]] = r
        padded.append(p)
    SHEET.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_image(SHEET, np.concatenate(padded, axis=0))
    print(f"\ncontact sheet: {SHEET.relative_to(ROOT.parent)}")


if __name__ == "__main__":
    main()
