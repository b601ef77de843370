"""Relevancy of the CLIP pyramid itself, in 2D, with each panoptic-prior reading (issue 10 diagnosis).

The LERF field is trained to reproduce ``ClipPyramid.target`` (the pyramid interpolated at a pixel and lerped
between levels). This script skips the field: for every annotated view it reads the target at each pixel
of the semantic resolution at ``--scales`` level positions ``s_img`` in [0, 1] (the scale input LERF trains
on), takes LERF's relevancy of every label at every position, keeps the best position per (view, label) as
LERF's query does, and scores D_relevancy, recall (SPEC §5, range reading) and localisation exactly as
``ovs3d eval`` does. What a prior cannot change in these 2D maps, no field trained on them can show either.

It also splits D_relevancy into the part inside the label's mask and outside it, and reports how much of the
pyramid each prior changes (share of stored tiles whose embedding differs from the plain pyramid).

Usage::

    python bench/pyramid_relevancy.py bench/out/val/tabletop-5 bench/out/rooms-val/room-10 \
        --priors none panoptic panoptic_all full_segmentation --out bench/out/pyramid_relevancy.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def level_positions(n_levels: int, n_scales: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_scales`` evenly spaced ``s_img`` in [0, 1] as LERF's ``(bin b [S], u [S])``."""
    s = torch.linspace(0.0, 1.0, n_scales) * (n_levels - 1)
    b = s.floor().long().clamp(max=n_levels - 2)
    return b, s - b.float()


def pyramid_maps(pyramid, view_pos: int, h: int, w: int, n_scales: int) -> torch.Tensor:
    """``[h * w, S, D]`` unit target features of one view at ``S`` level positions (semantic resolution)."""
    from ovs3d.methods.lerf.method import pixel_to_grid

    pw, ph = pyramid.image_size
    gx, gy = pixel_to_grid(pw, w), pixel_to_grid(ph, h)
    yy, xx = torch.meshgrid(gy, gx, indexing="ij")
    x, y = xx.reshape(-1), yy.reshape(-1)
    n = len(x)
    view = torch.full((n,), view_pos, dtype=torch.long)
    bins, us = level_positions(pyramid.n_levels, n_scales)
    out = []
    for b, u in zip(bins.tolist(), us.tolist()):
        t = pyramid.target(view, x, y, torch.full((n,), b), torch.full((n,), u))
        out.append(torch.nn.functional.normalize(t, dim=-1))
    return torch.stack(out, 1)


def scene_scores(scene_dir: Path, prior: str, n_scales: int, downscale: float) -> dict:
    """D_relevancy / recall / localisation of the pyramid's own best-scale relevancy on a scene's annotated views."""
    from ovs3d.eval.metrics import relevancy_metrics
    from ovs3d.foundation.pyramid import PyramidConfig, load_pyramid
    from ovs3d.foundation.registry import build_backends
    from ovs3d.io.loader import load_scene
    from ovs3d.relevancy import CANONICAL_NEGATIVES, best_scale_relevancy

    scene = load_scene(scene_dir)
    backends = build_backends({"clip", "masks"}, {"clip": "auto", "masks": "auto"}, scene.root, scene.has_sim)
    clip = backends["clip"]
    views = [int(v) for v in scene.annotated]
    pyramid = load_pyramid(scene, clip, views, PyramidConfig(prior=prior), None, backends["masks"])
    plain = load_pyramid(scene, clip, views, PyramidConfig(prior="none"), None, None) if prior != "none" else None
    labels = list(scene.classes)
    queries = torch.nn.functional.normalize(clip.encode_text(labels).float(), dim=-1)
    negatives = torch.nn.functional.normalize(clip.encode_text(list(CANONICAL_NEGATIVES)).float(), dim=-1)
    w, h = scene.image_size(downscale)
    maps, gts, inside, outside = {}, {}, [], []
    out_rel: dict[str, list[float]] = {c: [] for c in labels}
    for j, v in enumerate(views):
        feats = pyramid_maps(pyramid, j, h, w, n_scales)
        rel, _ = best_scale_relevancy(feats, queries, negatives)  # [h*w, C]
        rel = rel.T.reshape(len(labels), h, w).numpy()
        gt = scene.load_masks(v, downscale).astype(bool)
        maps[v], gts[v] = rel, gt
        for c in range(len(labels)):
            if gt[c].any():
                err = (gt[c].astype(np.float64) - rel[c]) ** 2
                inside.append(err[gt[c]].sum() / err.size)
                outside.append(err[~gt[c]].sum() / err.size)
                out_rel[labels[c]].append(float(rel[c][~gt[c]].mean()))
    m = relevancy_metrics(maps, gts, labels)
    changed = None
    if plain is not None and pyramid.partitions is None:
        diff = [int((a.float() - b.float()).abs().amax(-1).gt(1e-3).sum()) for a, b in zip(pyramid.grids, plain.grids)]
        changed = float(sum(diff) / sum(g[..., 0].numel() for g in plain.grids))
    return {
        "scene": str(scene_dir),
        "prior": prior,
        "scales": n_scales,
        "d_relevancy": m["d_relevancy"],
        "d_inside": float(np.mean(inside)),
        "d_outside": float(np.mean(outside)),
        "recall": m["recall"],
        "localization": m["localization"],
        "n_pairs": m["n_pairs"],
        "tiles_changed": changed,
        # per label: SimCLIP's hubness of the label and of the strongest negative (None for a real CLIP), and
        # the label's mean relevancy outside its mask
        "per_label": {
            c: {
                "hubness": _hubness(clip, c),
                "outside_relevancy": float(np.mean(out_rel[c])) if out_rel[c] else None,
            }
            for c in labels
        },
        "negatives_hubness": [_hubness(clip, n) for n in CANONICAL_NEGATIVES],
    }


def _hubness(clip, text: str) -> float | None:
    """SimCLIP's ``β(text)`` (SPEC §2), None for a backend without one."""
    return float(clip.hubness(text)) if hasattr(clip, "hubness") else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenes", type=Path, nargs="+")
    ap.add_argument("--priors", nargs="+", default=["none", "panoptic", "panoptic_all", "full_segmentation"])
    ap.add_argument("--scales", type=int, default=30, help="level positions tried per (view, label), as LERF's 30")
    ap.add_argument("--downscale", type=float, default=4.0, help="the semantic resolution eval scores at")
    ap.add_argument("--out", type=Path, default=None, help="append one JSON line per (scene, prior)")
    ap.add_argument("--per-label", action="store_true", help="then print the per-label table of every record in --out")
    ap.add_argument("--plot", type=Path, default=None, help="then plot the per-label records of --out into this PNG")
    args = ap.parse_args()
    from ovs3d.utils.console import set_quiet

    set_quiet(True)
    torch.set_num_threads(1)
    print("| scene | prior | D_rel | inside / outside | recall | localisation | tiles changed |")
    print("|---|---|---|---|---|---|---|")
    for d in args.scenes:
        for prior in args.priors:
            r = scene_scores(d, prior, args.scales, args.downscale)
            ch = "—" if r["tiles_changed"] is None else f"{100 * r['tiles_changed']:.1f} %"
            print(
                f"| {d.name} | {prior} | {r['d_relevancy']:.3f} | {r['d_inside']:.3f} / {r['d_outside']:.3f} "
                f"| {r['recall']:.2f} | {r['localization']:.2f} | {ch} |",
                flush=True,
            )
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(r) + "\n")
    if args.per_label and args.out:
        print_per_label(args.out)
    if args.plot and args.out:
        plot_hubness(args.out, args.plot)


def plot_hubness(records: Path, png: Path) -> None:
    """Scatter of each label's mean relevancy outside its mask against its hubness gap to the strongest
    negative (plain pyramid), and the same relevancy with the panoptic prior against without it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gap, rel, pairs = [], [], []
    by_scene: dict[str, dict[str, dict]] = {}
    for line in open(records):
        r = json.loads(line)
        by_scene.setdefault(r["scene"], {})[r["prior"]] = r
    for priors in by_scene.values():
        plain = priors.get("none")
        if plain is None or plain["negatives_hubness"][0] is None:
            continue
        neg = max(plain["negatives_hubness"])
        for c, v in plain["per_label"].items():
            if v["outside_relevancy"] is None:
                continue
            gap.append(v["hubness"] - neg)
            rel.append(v["outside_relevancy"])
            if "panoptic" in priors:
                pairs.append((v["outside_relevancy"], priors["panoptic"]["per_label"][c]["outside_relevancy"]))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    axes[0].scatter(gap, rel, s=14)
    r = float(np.corrcoef(gap, rel)[0, 1]) if len(gap) > 1 else float("nan")
    axes[0].set(
        xlabel="β(label) − max β(negatives)  (SimCLIP hubness)",
        ylabel="mean relevancy outside the label's mask",
        title=f"plain pyramid, {len(gap)} labels (Pearson {r:.2f})",
    )
    if pairs:
        a, b = np.array(pairs).T
        axes[1].scatter(a, b, s=14)
        axes[1].plot([0, 1], [0, 1], "k--", lw=0.8)
        axes[1].set(xlabel="no prior", ylabel="panoptic prior", title="relevancy outside the mask, per label")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    print(f"wrote {png}")


def print_per_label(records: Path) -> None:
    """Per label: hubness against the negatives' and the mean relevancy outside the mask, for each prior."""
    rows: dict[tuple[str, str], dict[str, float]] = {}
    hub: dict[tuple[str, str], float | None] = {}
    neg: dict[str, float] = {}
    priors: list[str] = []
    for line in open(records):
        r = json.loads(line)
        if r["prior"] not in priors:
            priors.append(r["prior"])
        hubs = [h for h in r["negatives_hubness"] if h is not None]
        neg[r["scene"]] = max(hubs) if hubs else 0.0
        for c, v in r["per_label"].items():
            rows.setdefault((r["scene"], c), {})[r["prior"]] = v["outside_relevancy"]
            hub[(r["scene"], c)] = v["hubness"]
    head = " / ".join(priors)
    print(f"\n| scene | label | β(label) − max β(negatives) | mean relevancy outside the mask: {head} |")
    print("|---|---|---|---|")
    for (scene, c), v in rows.items():
        h = hub[(scene, c)]
        d = "—" if h is None else f"{h - neg[scene]:+.3f}"
        vals = " / ".join("—" if v.get(p) is None else f"{v[p]:.2f}" for p in priors)
        print(f"| {Path(scene).name} | {c} | {d} | {vals} |")


if __name__ == "__main__":
    main()
