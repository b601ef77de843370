"""Issue 10 benchmark: language queries — LERF, LERF + panoptic prior, and the 3D-OVS / OV-NeRF fields queried
the same way, on ``tabletop`` seeds (3D-OVS protocol) and ``room`` seeds (novel-view protocol).

Every scene reuses the reconstruction of ``bench/bench_3dovs.py`` (``bench/out/3dovs/<set>seed<N>/<protocol>/
recon``, made there if missing). LERF variants are fitted as new semantic runs on it; the ``3dovs`` (``full``)
and ``ovnerf`` runs of that benchmark are only re-evaluated (``ovs3d eval`` now adds the relevancy block to
every semantic run). Each record (``OUT/results.jsonl``, one line per run; finished names are skipped when the
script runs again) holds mIoU under both scoring protocols, D_relevancy, recall and localisation (SPEC §5) and
their per-label values.

Usage::

    python bench/bench_lerf.py --set tabletop --seeds 0 1 2 3 4 --variants lerf lerf+semantic.prior=none 3dovs ovnerf
    python bench/bench_lerf.py --set room --seeds 0 1 2 --variants lerf lerf+semantic.prior=none 3dovs ovnerf
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_3dovs import _done, _semantic_stats, label_shares, ovnerf_scores, per_label_iou, scene_dir_for  # noqa: E402
from ovs3d.methods.threedovs.ablations import with_ablation  # noqa: E402
from ovs3d.run import FitConfig, evaluate, fit  # noqa: E402
from ovs3d.utils.console import set_quiet  # noqa: E402

EXISTING = {"3dovs": "full", "ovnerf": "ovnerf"}
"""Variants that are runs of ``bench_3dovs.py`` (re-evaluated, not refitted): name -> its run folder name."""


def relevancy_scores(metrics: dict) -> dict:
    """The relevancy block's means and per-label values of a metrics dict."""
    r = metrics["relevancy"]
    per = {c: {k: v[k] for k in ("d_relevancy", "recall", "localization")} for c, v in r["per_label"].items()}
    return {k: r[k] for k in ("d_relevancy", "recall", "localization", "n_pairs")} | {"relevancy_per_label": per}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", dest="scene_set", default="tabletop", choices=["tabletop", "room"])
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0-4 (tabletop), 0-2 (room)")
    ap.add_argument("--variants", nargs="+", default=["lerf", "lerf+semantic.prior=none", "3dovs", "ovnerf"])
    ap.add_argument("--runs", type=Path, default=Path("bench/out/3dovs"), help="bench_3dovs.py's output folder")
    ap.add_argument("--out", type=Path, default=Path("bench/out/lerf"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    set_quiet(True)
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    done = _done(results)
    seeds = args.seeds or ([0, 1, 2, 3, 4] if args.scene_set == "tabletop" else [0, 1, 2])
    protocol = "3dovs" if args.scene_set == "tabletop" else "holdout"
    prefix = "" if args.scene_set == "tabletop" else f"{args.scene_set}/"
    for seed in seeds:
        scene_dir = scene_dir_for(args.runs, args.scene_set, seed)
        recon_run = args.runs / f"{prefix}seed{seed}" / protocol / "recon"
        fit(FitConfig(scene=scene_dir, out=recon_run, holdout=protocol == "holdout", method="rgb"))
        for variant in args.variants:
            name = f"{args.scene_set}/seed{seed}/{protocol}/{variant}"
            if name in done:
                continue
            fit_s = None
            if variant in EXISTING:
                run = args.runs / f"{prefix}seed{seed}" / protocol / EXISTING[variant]
                if not (run / "checkpoints" / "semantic.pt").exists():
                    print(f"skip {name}: no {run}", flush=True)
                    continue
                method = variant
            else:
                method, _, rest = variant.partition("+")
                run = args.out / f"{args.scene_set}-seed{seed}" / protocol / variant
                base = FitConfig(scene=scene_dir, out=run, holdout=protocol == "holdout", method=method)
                cfg = replace(with_ablation(base, rest or "full"), recon_from=recon_run)
                t0 = time.perf_counter()
                fit(cfg)
                fit_s = round(time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            mo = evaluate(run, protocol="ovnerf")
            m = evaluate(run)  # last: eval/metrics.json keeps the 3D-OVS scoring
            rec = {
                "name": name,
                "set": args.scene_set,
                "seed": seed,
                "protocol": protocol,
                "variant": variant,
                "method": method,
                "run": str(run),
                "miou": m["miou"],
                "accuracy": m["accuracy"],
                "psnr": m.get("psnr"),
                "iou": per_label_iou(m),
                "share": label_shares(scene_dir),
                **ovnerf_scores(mo),
                **relevancy_scores(m),
                "semantic_fit_seconds": fit_s,
                "eval_seconds": round((time.perf_counter() - t0) / 2, 1),
                **_semantic_stats(run),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
            with open(results, "a") as f:
                f.write(json.dumps(rec) + "\n")
            keys = ("name", "miou", "d_relevancy", "recall", "localization")
            print(json.dumps({k: rec[k] for k in keys}), flush=True)


if __name__ == "__main__":
    main()
