"""Markdown tables of the benchmark records: one row per scene, one column per method/variant.

Usage::

    python bench/method_table.py --set room --protocol holdout --metric miou_ovnerf \\
        --variants baseline baseline-minmax full ovnerf ovnerf+no_rsr
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("bench/out/3dovs/results.jsonl"))
    ap.add_argument("--set", dest="scene_set", default="tabletop")
    ap.add_argument("--protocol", default="3dovs", help="3dovs (all views train) or holdout")
    ap.add_argument("--metric", default="miou", help="miou, accuracy, macc, miou_ovnerf, accuracy_ovnerf, macc_ovnerf")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--variants", nargs="+", required=True, help="baseline[-minmax...] or a fit variant name")
    args = ap.parse_args()
    prefix = "" if args.scene_set == "tabletop" else f"{args.scene_set}/"
    by_name = {r["name"]: r for r in records(args.results)}
    seeds = args.seeds or sorted({r["seed"] for r in by_name.values() if r.get("set", "tabletop") == args.scene_set})
    print(f"| {args.scene_set} seed | " + " | ".join(args.variants) + " |")
    print("|---" * (len(args.variants) + 1) + "|")
    cols: dict[str, list[float]] = {v: [] for v in args.variants}
    for seed in seeds:
        cells = []
        for v in args.variants:
            name = f"{prefix}seed{seed}/{v}" if v.startswith("baseline") else f"{prefix}seed{seed}/{args.protocol}/{v}"
            r = by_name.get(name)
            x = None if r is None else r.get(args.metric)
            cells.append("—" if x is None else f"{x:.3f}")
            if x is not None:
                cols[v].append(x)
        print(f"| {seed} | " + " | ".join(cells) + " |")
    means = [f"**{np.mean(c):.3f}** ({len(c)})" if c else "—" for c in cols.values()]
    print("| mean (scenes) | " + " | ".join(means) + " |")


if __name__ == "__main__":
    main()
