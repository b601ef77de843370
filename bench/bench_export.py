"""Exported 3D labels against the run's own 2D predictions and against ground truth (issue 11).

For each run: ``ovs3d export`` (default settings) into ``bench/out/export/<name>``, timed, file sizes read. Then,
per annotated view at the run's semantic resolution, the exported points (read back from ``points.ply``, in the
input poses' frame) are projected with the scene's camera into a z-buffer: each point splats a disk of its
stored ``radius`` (its surface patch) and every pixel keeps the nearest point. Reported per run (means over the
annotated views):

* ``coverage``: share of pixels some point covers (target >= 98 %);
* ``agreement``: share of pixels whose nearest point carries the label the run itself predicts for that pixel
  (``eval``'s argmax, rendered again here); uncovered pixels count as disagreeing (target >= 95 %);
* ``accuracy_3d`` / ``accuracy_2d``: SPEC §5 accuracy (3D-OVS "mAP") of the projected labels and of the run's
  2D prediction against the GT masks (target: within 0.03); also the mIoU of both.

Usage::

    python bench/bench_export.py --run bench/out/3dovs/seed0/3dovs/full --name tabletop0-3dovs --split test
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results" / "issue11-export.jsonl"


def splat_labels(
    xyz_world: np.ndarray,
    radius_world: np.ndarray,
    labels: np.ndarray,
    c2w: np.ndarray,
    intr: np.ndarray,
    w: int,
    h: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Z-buffer the points into a camera: ``([H, W] label of the nearest point (-2: none), [H, W] covered)``.

    Args:
        xyz_world: ``[N, 3]`` points in the scene's normalised world.
        radius_world: ``[N]`` their patch radii (same units).
        labels: ``[N]`` int labels.
        c2w: ``[3, 4]`` OpenCV camera-to-world.
        intr: ``[4]`` ``(fx, fy, cx, cy)`` at the image's resolution.
        w: width.
        h: height.
    """
    rot, t = c2w[:, :3], c2w[:, 3]
    cam = (xyz_world - t) @ rot  # world -> camera (rot is orthonormal)
    z = cam[:, 2]
    front = z > 1e-6
    cam, z, rad, lab = cam[front], z[front], radius_world[front], labels[front]
    fx, fy, cx, cy = intr
    u = fx * cam[:, 0] / z + cx
    v = fy * cam[:, 1] / z + cy
    r_px = np.maximum(rad * fx / z, 0.5)  # a point covers at least its own pixel
    reach = int(min(np.ceil(r_px.max()), 6))
    pix, dep, idx = [], [], []
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            px = np.floor(u).astype(np.int64) + dx
            py = np.floor(v).astype(np.int64) + dy
            # pixel centre distance to the projected point
            dist = np.hypot(px + 0.5 - u, py + 0.5 - v)
            ok = (px >= 0) & (px < w) & (py >= 0) & (py < h) & ((dist <= r_px) | ((dx == 0) & (dy == 0)))
            pix.append(py[ok] * w + px[ok])
            dep.append(z[ok])
            idx.append(np.nonzero(ok)[0])
    pix, dep, idx = np.concatenate(pix), np.concatenate(dep), np.concatenate(idx)
    order = np.lexsort((dep, pix))
    first = np.unique(pix[order], return_index=True)[1]
    winners = order[first]
    out = np.full(w * h, -2, dtype=np.int64)
    out[pix[winners]] = lab[idx[winners]]
    return out.reshape(h, w), (out >= -1).reshape(h, w)


def view_scores(gt: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """SPEC §5 (3D-OVS protocol) accuracy and mIoU of one view, where ``pred`` may hold -1 (no prediction,
    wrong everywhere): ``gt`` ``[C, H, W]`` bool, ``pred`` ``[H, W]`` int."""
    n = gt.shape[0]
    onehot = pred[None] == np.arange(n)[:, None, None]  # [C, H, W]; all False where pred == -1
    accuracy = float((onehot == gt).all(0).mean())
    ious = []
    for c in range(n):
        union = (gt[c] | onehot[c]).sum()
        ious.append(float((gt[c] & onehot[c]).sum() / union) if union else 0.0)
    return accuracy, float(np.mean(ious))


def _write_projection_figure(path: Path, render: dict, pred2d: np.ndarray, proj: np.ndarray, gt, classes) -> None:
    """RGB render | the run's 2D labels | the exported points' z-buffered labels | where they differ (red)."""
    from ovs3d.eval.metrics import masks_to_labels
    from ovs3d.eval.visualize import label_palette, overlay_segmentation, text_band, upscale_nearest
    from ovs3d.utils.files import atomic_write_image

    rgb = np.clip(render["rgb"].float().numpy(), 0, 1)
    pal = label_palette(len(classes))
    diff = (rgb * 255).astype(np.uint8)
    diff[proj != pred2d] = (255, 0, 0)
    panels = [
        (rgb * 255).astype(np.uint8),
        overlay_segmentation(rgb, masks_to_labels(gt), pal),
        overlay_segmentation(rgb, pred2d, pal),
        overlay_segmentation(rgb, np.maximum(proj, -1), pal),
        diff,
    ]
    s = max(1, 240 // rgb.shape[0])
    gap = np.full((rgb.shape[0] * s, 4, 3), 255, np.uint8)
    row = np.concatenate([x for p in panels for x in (upscale_nearest(p, s), gap)][:-1], axis=1)
    title = "RGB | GT | run's 2D labels | exported points, z-buffered | differing pixels (red)"
    atomic_write_image(path, np.concatenate([text_band(title, row.shape[1]), row], axis=0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--split", choices=["test", "validation"], required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--free-space-views", type=int, default=None, help="override ExportConfig.free_space_views")
    ap.add_argument("--voxel", type=float, default=None, help="override ExportConfig.voxel")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from ovs3d.eval.metrics import segmentation_view_metrics
    from ovs3d.export import ExportConfig, export_run, read_points
    from ovs3d.query import load_run
    from ovs3d.render.scene_rays import input_scale, input_to_world
    from ovs3d.utils.console import set_quiet

    set_quiet(True)
    out = Path(__file__).parent / "out" / "export" / args.name
    t0 = time.perf_counter()
    cfg = ExportConfig()
    if args.free_space_views is not None:
        cfg.free_space_views = args.free_space_views
    if args.voxel is not None:
        cfg.voxel = args.voxel
    meta = export_run(args.run, out, cfg, overwrite=True)
    seconds = time.perf_counter() - t0
    info = meta["info"]
    pts = read_points(out)
    loaded = load_run(args.run)
    scene, method = loaded.scene, loaded.method
    ds = loaded.cfg.features.semantic_downscale
    w, h = scene.image_size(ds)
    intr = scene.intrinsics_at(ds)
    world = input_to_world(scene, pts.xyz.astype(np.float64))
    radius = pts.radius.astype(np.float64) / input_scale(scene)
    classes = list(scene.classes)
    per_view, m2d, m3d = [], {}, {}
    for v in scene.annotated:
        render = method.render_view(scene, v, ds)
        pred2d = method.predict_labels(render).cpu().numpy().astype(np.int64)
        proj, covered = splat_labels(world, radius, pts.label.astype(np.int64), scene.c2w[v], intr[v], w, h)
        gt = scene.load_masks(v, ds)
        m2d[v] = view_scores(gt, pred2d)
        m3d[v] = view_scores(gt, np.where(covered, proj, -1))
        ref = segmentation_view_metrics(gt, pred2d, classes)  # the scorer eval uses: must agree
        assert abs(ref["accuracy"] - m2d[v][0]) < 1e-9 and abs(ref["miou"] - m2d[v][1]) < 1e-9
        if v == scene.annotated[0]:
            _write_projection_figure(out.parent / f"{args.name}-projection.png", render, pred2d, proj, gt, classes)
        per_view.append(
            {
                "view": v,
                "coverage": float(covered.mean()),
                "agreement": float((proj == pred2d).mean()),
                "agreement_covered": float((proj == pred2d)[covered].mean()) if covered.any() else 0.0,
            }
        )
    a2d = {
        "accuracy": float(np.mean([a for a, _ in m2d.values()])),
        "miou": float(np.mean([m for _, m in m2d.values()])),
    }
    a3d = {
        "accuracy": float(np.mean([a for a, _ in m3d.values()])),
        "miou": float(np.mean([m for _, m in m3d.values()])),
    }
    row = {
        "run": str(args.run),
        "name": args.name,
        "split": args.split,
        "method": info["method"],
        "scene_kind": info["scene_kind"],
        "holdout": bool(loaded.cfg.holdout),
        "resolution": [w, h],
        "views_fused": len(info["views"]),
        "points": info["points"],
        "points_before_fusion": info["points_before_fusion"],
        "free_space_views": cfg.free_space_views,
        "voxel": cfg.voxel,
        "floaters_dropped": info.get("floaters_dropped", 0),
        "coverage": float(np.mean([p["coverage"] for p in per_view])),
        "agreement": float(np.mean([p["agreement"] for p in per_view])),
        "agreement_covered": float(np.mean([p["agreement_covered"] for p in per_view])),
        "accuracy_2d": float(a2d["accuracy"]),
        "accuracy_3d": float(a3d["accuracy"]),
        "miou_2d": float(a2d["miou"]),
        "miou_3d": float(a3d["miou"]),
        "seconds_export": seconds,
        "seconds_points": info["seconds_points"],
        "seconds_meshes": info["seconds_meshes"],
        "bytes_points": info["bytes"]["points.ply"],
        "bytes_meshes": sum(b for k, b in info["bytes"].items() if k.startswith("meshes")),
        "meshes": len(info["meshes"]),
        "per_view": per_view,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "command": f"python bench/bench_export.py --run {args.run} --name {args.name} --split {args.split}"
        + ("" if args.free_space_views is None else f" --free-space-views {args.free_space_views}")
        + ("" if args.voxel is None else f" --voxel {args.voxel}"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    keys = ("coverage", "agreement", "accuracy_2d", "accuracy_3d", "miou_2d", "miou_3d", "seconds_export", "points")
    print(args.name, {k: round(row[k], 4) if isinstance(row[k], float) else row[k] for k in keys})


if __name__ == "__main__":
    main()
