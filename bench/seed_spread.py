"""How far one scene's score moves with the seeds: the defaults' run and the same fit with other seeds, per scene.

Each row is one scene: its min–max 2D map, the defaults' run (``--reference-names``, the first found; with
``--probe``, the defaults' runs read out by ``bench/refine_probe.py`` as ``<run>+crf``, as in
``bench/variant_vs_defaults.py``), one column per seed variant (``--variants``, records of ``bench_3dovs.py``
named ``<scene>/<protocol>/<variant>``), the spread (largest minus smallest of the row's runs) and the smallest
and largest margin over the min–max 2D map (issue 8's "+0.10 over min–max 2D on every scene"). Scenes with no
variant run are left out.

Usage::

    python bench/seed_spread.py --results bench/out/test/results.jsonl \\
        --probe bench/results/issue8-round13-crf-test.jsonl --reference-names "recon.distortion_from=0.333+crf" \\
        --variants "recon.distortion_from=0.333+recon.seed=7" "recon.distortion_from=0.333+recon.seed=8"
"""

from __future__ import annotations

import argparse
from pathlib import Path

from label_table import probe_runs  # bench/ is the script's folder
from method_table import records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, nargs="+", required=True)
    ap.add_argument("--variants", nargs="+", required=True, help="the seed variants' run names")
    ap.add_argument("--reference-names", nargs="+", default=["full+crf", "full"], help="the defaults' run names")
    ap.add_argument("--probe", type=Path, nargs="*", default=[], help="bench/refine_probe.py records: '<run>+crf'")
    ap.add_argument("--protocol", default="3dovs", help="3dovs or holdout (the records' name segment)")
    args = ap.parse_args()

    recs = [r for f in args.results for r in records(f)]
    recs += probe_runs(args.probe, recs)
    by_name = {r["name"]: r for r in recs}  # the latest record of a name wins
    seg = args.protocol
    scenes = sorted(
        {r["name"][: -len(f"/{seg}/{v}")] for r in recs for v in args.variants if r["name"].endswith(f"/{seg}/{v}")}
    )
    head = ["scene", "2D min–max", "defaults", *(f"`{v}`" for v in args.variants)]
    print("| " + " | ".join([*head, "spread", "over 2D: least", "over 2D: most"]) + " |")
    print("|---" * (len(head) + 3) + "|")
    for scene in scenes:
        mm = by_name[f"{scene}/baseline-minmax"]["miou"]
        default = next((by_name[n] for x in args.reference_names if (n := f"{scene}/{seg}/{x}") in by_name), None)
        runs = [default, *(by_name.get(f"{scene}/{seg}/{v}") for v in args.variants)]
        vals = [r["miou"] for r in runs if r is not None]
        cells = ["—" if r is None else f"{r['miou']:.3f}" for r in runs]
        print(
            f"| {scene} | {mm:.3f} | "
            + " | ".join(cells)
            + f" | {max(vals) - min(vals):.3f} | {min(vals) - mm:+.3f} | {max(vals) - mm:+.3f} |"
        )


if __name__ == "__main__":
    main()
