"""Tables of ``bench/bench_lerf.py`` records: per scene and variant mIoU, D_relevancy, recall, localisation.

Usage::

    python bench/lerf_table.py bench/out/lerf/results.jsonl --set tabletop
    python bench/lerf_table.py bench/out/lerf/results.jsonl --set room --miou ovnerf
    python bench/lerf_table.py bench/out/lerf/results.jsonl --prior-effect
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--set", dest="scene_set", default="tabletop")
    ap.add_argument("--miou", choices=["3dovs", "ovnerf"], default="3dovs", help="the scoring protocol of mIoU")
    ap.add_argument("--variants", nargs="+", default=None)
    ap.add_argument("--prior-effect", action="store_true", help="per scene: the prior against no prior")
    args = ap.parse_args()
    if args.prior_effect:
        prior_effect(args.results)
        return
    recs = [json.loads(x) for x in args.results.read_text().splitlines()]
    recs = [r for r in recs if r["set"] == args.scene_set]
    variants = args.variants or list(dict.fromkeys(r["variant"] for r in recs))
    seeds = sorted({r["seed"] for r in recs})
    key = "miou" if args.miou == "3dovs" else "miou_ovnerf"
    by = {(r["variant"], r["seed"]): r for r in recs}
    head = f"| variant | scenes | mIoU ({args.miou} scoring) | D_relevancy ↓ | recall | localisation |"
    print(head + " per scene D_rel / recall |")
    print("|---|---|---|---|---|---|---|")
    for v in variants:
        rs = [by[(v, s)] for s in seeds if (v, s) in by]
        if not rs:
            continue
        per = " ".join(f"{r['seed']}: {r['d_relevancy']:.3f} / {r['recall']:.2f}" for r in rs)
        means = [np.mean([r[k] for r in rs]) for k in (key, "d_relevancy", "recall", "localization")]
        print(f"| {v} | {len(rs)} | " + " | ".join(f"{m:.3f}" for m in means) + f" | {per} |")


def prior_effect(results: Path) -> None:
    """Per scene: D_relevancy and recall of ``lerf`` (panoptic prior) against ``lerf+semantic.prior=none``."""
    recs = [json.loads(x) for x in results.read_text().splitlines()]
    by = {(r["set"], r["seed"], r["variant"]): r for r in recs}
    print("| scene | D_rel no prior → prior | recall no prior → prior | localisation no prior → prior | target met |")
    print("|---|---|---|---|---|")
    for (scene_set, seed, variant), r in sorted(by.items()):
        if variant != "lerf" or (scene_set, seed, "lerf+semantic.prior=none") not in by:
            continue
        n = by[(scene_set, seed, "lerf+semantic.prior=none")]
        met = r["d_relevancy"] < n["d_relevancy"] and r["recall"] > n["recall"]
        print(
            f"| {scene_set} {seed} | {n['d_relevancy']:.3f} → {r['d_relevancy']:.3f} | {n['recall']:.3f} → "
            f"{r['recall']:.3f} | {n['localization']:.3f} → {r['localization']:.3f} | {'yes' if met else 'no'} |"
        )


if __name__ == "__main__":
    main()
