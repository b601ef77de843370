"""Per-scene table of one 3D-OVS variant against the defaults, with the 2D baselines and lost labels.

The variant's records come from ``--results``; the defaults' record of a scene is taken from the same file
when it holds one (``<scene>/3dovs/<name>``, the first of ``--reference-names``, default ``full``), else from
``--reference`` under the given name, but only when that record was measured on the same scene (the same
labels and the same min–max 2D baseline or, where ``--reference`` holds no baseline records, the same labels'
pixel shares: scene generators change between versions). "Lost" = labels with 2D
min–max IoU ≥ 0.3 that end below 0.5 (issue 8).

``--probe`` adds ``bench/refine_probe.py`` read-outs of the defaults' runs as records named ``<run>+crf`` (their
``defaults`` read-out: the dense CRF since round 13), so that ``--reference-names full+crf`` compares a variant fitted
with today's defaults against the defaults' runs read out the same way.

Usage::

    python bench/variant_vs_defaults.py --results bench/out/val/results.jsonl --variant smallest_scale \\
        --reference bench/results/issue8-results.jsonl --protocol 3dovs
    python bench/variant_vs_defaults.py --results bench/out/val/results.jsonl --variant semantic.seed=7 \\
        --probe bench/results/issue8-round13-crf-val.jsonl --reference-names full+crf
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from label_table import probe_runs  # bench/ is the script's folder
from method_table import records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--reference", type=Path, default=None, help="older records holding the defaults' runs")
    ap.add_argument(
        "--reference-names",
        nargs="+",
        default=["full", "semantic.ray_sampling=balanced"],
        help="names the defaults' record may have, in order of preference",
    )
    ap.add_argument(
        "--reference-for",
        nargs="+",
        default=[],
        metavar="SCENE=NAME",
        help="the defaults' record name for one scene (e.g. hard-val/seed1001=features.dino_downscale=0.5), "
        "before --reference-names",
    )
    ap.add_argument("--protocol", default="3dovs", help="3dovs or holdout (the records' name segment)")
    ap.add_argument("--probe", type=Path, nargs="*", default=[], help="bench/refine_probe.py records: '<run>+crf'")
    ap.add_argument("--cost", action="store_true", help="also the fits' seconds: defaults against the variant")
    args = ap.parse_args()

    new = records(args.results)
    new += probe_runs(args.probe, new)
    ref = records(args.reference) if args.reference else []
    seg = args.protocol  # records are named <scene>/<3dovs|holdout>/<variant>

    def find(recs, scene, suffix):
        hits = [r for r in recs if r["name"] == f"{scene}/{suffix}"]
        return hits[-1] if hits else None

    print(
        f"| scene | 2D raw | 2D min–max | 2D min–max smallest | defaults | `{args.variant}` | Δ | Δ vs min–max | lost |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rows, pairs = [], []
    for rec in new:
        if not rec["name"].endswith(f"/{seg}/{args.variant}"):
            continue
        scene = rec["name"][: -len(f"/{seg}/{args.variant}")]
        mm = find(new, scene, "baseline-minmax")
        raw, s2 = find(new, scene, "baseline"), find(new, scene, "baseline-minmax-scale2")
        # the defaults' record: the first of --reference-names held by this file, else by --reference
        names = [n for sc, _, n in (a.partition("=") for a in args.reference_for) if sc == scene]
        default = next((r for n in [*names, *args.reference_names] if (r := find(new, scene, f"{seg}/{n}"))), None)
        if default is None:
            for name in args.reference_names:
                old, old_mm = find(ref, scene, f"{seg}/{name}"), find(ref, scene, "baseline-minmax")
                if old_mm is not None:
                    same = sorted(old_mm["iou"]) == sorted(mm["iou"]) and abs(old_mm["miou"] - mm["miou"]) < 1e-6
                else:  # a file of variant records only: the labels' pixel shares identify the scene
                    same = old is not None and rec.get("share") is not None and old.get("share") == rec["share"]
                if old is not None and same:
                    default = old
                    break

        def lost(r, mm=mm):
            return sum(1 for c, v in r["iou"].items() if v is not None and mm["iou"][c] >= 0.3 and v < 0.5)

        d = default["miou"] if default else float("nan")
        lost_d = lost(default) if default else "?"
        print(
            f"| {scene} | {raw['miou']:.3f} | {mm['miou']:.3f} | {s2['miou']:.3f} | {d:.3f} | {rec['miou']:.3f} | "
            f"{rec['miou'] - d:+.3f} | {rec['miou'] - mm['miou']:+.3f} | {lost_d} → {lost(rec)} |"
        )
        rows.append([raw["miou"], mm["miou"], s2["miou"], d, rec["miou"]])
        pairs.append((scene, default, rec))
    if rows:
        m = np.nanmean(np.array(rows, float), axis=0)
        print(
            f"| mean ({len(rows)}) | {m[0]:.3f} | {m[1]:.3f} | {m[2]:.3f} | {m[3]:.3f} | {m[4]:.3f} | "
            f"{m[4] - m[3]:+.3f} | {m[4] - m[1]:+.3f} | |"
        )
    if args.cost and pairs:
        print()
        print(cost_table(pairs))


COST_KEYS = ("recon_seconds", "semantic_fit_seconds", "seconds_per_iter")


def cost_table(pairs: list[tuple[str, dict | None, dict]]) -> str:
    """Markdown: each scene's reconstruction seconds, semantic-stage seconds and seconds per semantic step, the
    defaults' fit / the variant's, with the ratio of the means over the scenes where both are recorded."""

    def cell(r: dict | None, key: str) -> float:
        v = None if r is None else r.get(key)
        return float("nan") if v is None else float(v)

    lines = ["| scene | " + " | ".join(f"{k} (defaults / variant)" for k in COST_KEYS) + " |"]
    lines.append("|---" * (len(COST_KEYS) + 1) + "|")
    table = np.array([[[cell(d, k), cell(v, k)] for k in COST_KEYS] for _, d, v in pairs])  # [S, K, 2]
    for (scene, _, _), row in zip(pairs, table, strict=True):
        lines.append(f"| {scene} | " + " | ".join(f"{a:.4g} / {b:.4g}" for a, b in row) + " |")
    both = ~np.isnan(table).any(axis=2)  # [S, K]
    ratio = [
        np.mean(table[both[:, k], k, 1]) / np.mean(table[both[:, k], k, 0]) if both[:, k].any() else float("nan")
        for k in range(len(COST_KEYS))
    ]
    lines.append("| variant / defaults (means) | " + " | ".join(f"{r:.3f}" for r in ratio) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
