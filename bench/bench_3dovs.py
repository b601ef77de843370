"""Issue 4 benchmark: 3D-OVS on ``tabletop`` scenes, full method, ablations and the 2D baseline.

For each seed: the scene is generated, the 2D baseline is scored (raw and min-max normalised relevancy),
then for each protocol (3D-OVS: all views train, masks held out; novel-view: annotated views held out)
the full method is fitted and evaluated, and each requested ablation re-trains only the semantic stage
on the same reconstruction (copied checkpoint); a variant with ``recon.<field>=<value>`` parts (e.g.
``recon.background=random``) gets its own reconstruction, shared by the variants with the same parts.
Results accumulate in ``OUT/results.jsonl`` (one line per run; finished runs are skipped when the script is
re-run) and are summarised in ``OUT/summary.md``.

Scene sets (``--set``): ``tabletop`` (the default preset, seeds as given) and the small-object hard cases
of issue 8, ``hard-val`` (validation: used to choose settings, never reported as results) and ``hard-test``
(test: seeds and options fixed before any result was seen, only reported), and ``fresh`` (made after a
default was chosen and tested, to check it on scenes nothing was tried on). Their make-scene options are in
:data:`SCENE_SETS`. Every record holds the per-label IoU (mean over the annotated views) and each label's
share of the annotated views' pixels; the 2D baseline is scored raw, min-max normalised over the 3 scales
and min-max normalised per scale.

Usage::

    python bench/bench_3dovs.py --seeds 0 1 2 3 4 --protocols 3dovs holdout --ablations full
    python bench/bench_3dovs.py --set hard-test --protocols 3dovs holdout --ablations full
    python bench/bench_3dovs.py --seeds 0 1 --protocols 3dovs --ablations full no_rda no_fda no_rebalance \\
        single_scale half_views tenth_views
    python bench/bench_3dovs.py --set room --protocols holdout --ablations full ovnerf ovnerf+no_rsr \\
        ovnerf+no_cse ovnerf+cse_no_novel ovnerf+rsr_superpixel ovnerf+no_fda
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ovs3d.eval.baseline import run_baseline
from ovs3d.foundation.features import FeatureConfig
from ovs3d.methods.threedovs.ablations import ABLATIONS, with_ablation
from ovs3d.run import FitConfig, evaluate, fit
from ovs3d.scenegen import make_scene
from ovs3d.utils.console import set_quiet

SMALL = {"n_small": (2, 3), "small_touch_prob": 0.5, "small_confused": True}
SCENE_SETS: dict[str, dict[int, dict]] = {
    # validation: choose settings on these only
    "hard-val": {
        1000: {**SMALL},
        1001: {"width": 160, "height": 120, "n_small": (2, 2), "hub_labels": 2},
        1002: {
            "width": 240,
            "height": 180,
            "n_small": (3, 4),
            "small_touch_prob": 1.0,
            "small_confused": True,
            "hub_labels": 1,
        },
        # small images (added with the DINO grid floor, round 8): the floor acts below 240 px
        1003: {"width": 160, "height": 120},
        1004: {"width": 200, "height": 150, **SMALL},
        1005: {"width": 128, "height": 96, "n_objects": (3, 4), "hub_labels": 1},
        # made after round 8's test runs, with the options of test scenes 2005/2006 (whose mid-sized objects
        # were painted beyond their borders in 3D, which no validation scene showed) and two neighbours
        1006: {"width": 200, "height": 150, "n_objects": (4, 6), "hub_labels": 2},
        1007: {"width": 240, "height": 180, "n_small": (1, 2)},
        1008: {"width": 240, "height": 180, "n_objects": (5, 6), "hub_labels": 2},
        1009: {"width": 200, "height": 150, "n_small": (1, 2)},
        # made after round 9's test runs: test scene 2005's two labels below their 2D maps are objects coloured
        # like the wall behind them, which the reconstruction merges with it (bench/RESULTS.md §4, round 9)
        1010: {"width": 200, "height": 150, "n_objects": (4, 6), "camouflage": 2},
        1011: {"width": 240, "height": 180, "camouflage": 2, "hub_labels": 1},
        # made after the fresh runs of round 9, with fresh 3001's options (where the random background scattered
        # the depth into floaters, which no validation scene had shown)
        1012: {"width": 200, "height": 150, "n_small": (1, 2), "small_confused": True},
        1013: {"width": 200, "height": 150, "n_small": (1, 2), "small_confused": True},
        # made for round 10 (a screen of the random background by what 3D fusion keeps, bench/recon_screen.py):
        # fresh 3000-3003's options and the other sizes again, to find scenes where it scatters the geometry
        1014: {"width": 200, "height": 150, "n_small": (1, 2), "small_confused": True},
        1015: {"width": 200, "height": 150, "n_small": (1, 2), "small_confused": True},
        1016: {"width": 200, "height": 150, "n_small": (1, 2), "small_confused": True},
        1017: {"width": 200, "height": 150, "n_small": (1, 2), "small_confused": True},
        1018: {"n_objects": (6, 7), "hub_labels": 3},
        1019: {"n_objects": (6, 7), "hub_labels": 3},
        1020: {"n_small": (2, 3), "small_touch_prob": 0.8, "hub_labels": 2},
        1021: {"n_small": (2, 3), "small_touch_prob": 0.8, "hub_labels": 2},
        1022: {"n_objects": (3, 4)},
        1023: {"width": 240, "height": 180, "n_small": (1, 2)},
        1024: {"width": 160, "height": 120},
        1025: {"width": 200, "height": 150, "n_objects": (4, 6), "hub_labels": 2},
        # made for round 15: the labels of test scenes 2005/2006 that end below their 2D maps are objects partly
        # hidden behind another (a pink piggy bank behind an eggplant, a matcha tin behind a roll of tape)
        1030: {"width": 200, "height": 150, "n_objects": (4, 6), "occluded": 1},
        1031: {"width": 240, "height": 180, "n_objects": (5, 7), "occluded": 2},
        1032: {"width": 200, "height": 150, "n_objects": (4, 6), "occluded": 1, "camouflage": 1},
        1033: {"width": 160, "height": 120, "n_objects": (4, 6), "occluded": 2, "hub_labels": 2},
    },
    # test: fixed before any result was seen; only reported
    "hard-test": {
        2000: {**SMALL},
        2001: {"width": 160, "height": 120, "n_small": (2, 3), "hub_labels": 2, "small_touch_prob": 0.3},
        2002: {
            "width": 240,
            "height": 180,
            "n_small": (3, 4),
            "small_confused": True,
            "hub_labels": 3,
            "small_touch_prob": 1.0,
        },
        2003: {"n_objects": (4, 5), "n_small": (1, 2), "small_confused": True},
        # small images (fixed with the DINO grid floor of round 8, before its test runs)
        2004: {"width": 160, "height": 120, **SMALL},
        2005: {"width": 200, "height": 150, "n_objects": (4, 6), "hub_labels": 2},
        2006: {"width": 240, "height": 180, "n_small": (1, 2)},
    },
    # fresh: made after round 7's default was chosen and tested, to check it on scenes nothing was tried on
    "fresh": {
        3000: {"n_objects": (6, 7), "hub_labels": 3},
        3001: {"width": 200, "height": 150, "n_small": (1, 2), "small_confused": True},
        3002: {"n_small": (3, 4), "small_touch_prob": 0.8, "hub_labels": 2},
        3003: {"n_objects": (3, 4)},
    },
    # fresh2: made in round 19 (2026-12-07), options written before any of them was generated or fitted, to
    # check the defaults of round 18 on scenes nothing was tried on: every size of the other sets and each
    # hard case (small, confusable, touching, camouflaged, partly hidden, hub labels); only reported
    "fresh2": {
        3004: {**SMALL},
        3005: {"width": 160, "height": 120, "n_objects": (4, 6), "occluded": 1, "hub_labels": 2},
        3006: {"width": 240, "height": 180, "n_small": (2, 3), "small_confused": True, "small_touch_prob": 0.5},
        3007: {"width": 200, "height": 150, "n_objects": (5, 6), "camouflage": 1},
        3008: {"width": 128, "height": 96, "n_objects": (3, 4), "hub_labels": 1},
        3009: {"n_objects": (6, 7), "occluded": 2},
    },
}
"""Seeds and make-scene options of the hard-case scene sets (issue 8)."""


def scene_dir_for(out: Path, scene_set: str, seed: int) -> Path:
    """Generate (once) and return the scene of ``seed`` in ``scene_set`` (``room``: the room preset)."""
    opts = {} if scene_set in ("tabletop", "room") else SCENE_SETS[scene_set][seed]
    scene_dir = out / f"{scene_set}-{seed}"
    if not (scene_dir / "poses_bounds.npy").exists():
        make_scene("room" if scene_set == "room" else "tabletop", seed, scene_dir, **opts)
    return scene_dir


def recon_dir(protocol_dir: Path, variant: str) -> Path:
    """The shared reconstruction of a variant: ``recon`` plus its ``recon.<field>=<value>`` parts, in order."""
    return protocol_dir / "+".join(["recon", *(p for p in variant.split("+") if p.startswith("recon."))])


def label_shares(scene_dir: Path) -> dict[str, float]:
    """Each label's share of the annotated views' pixels (mean over views)."""
    from ovs3d.io.loader import load_scene

    scene = load_scene(scene_dir)
    shares = np.mean([scene.load_masks(v).reshape(len(scene.classes), -1).mean(1) for v in scene.annotated], 0)
    return {c: round(float(x), 5) for c, x in zip(scene.classes, shares)}


def per_label_iou(metrics: dict) -> dict[str, float]:
    """Per-label IoU averaged over the annotated views where it is scored (OV-NeRF protocol: None = absent)."""
    views = list(metrics["per_view"].values())
    out = {}
    for c in metrics["classes"]:
        scores = [v["iou"][c] for v in views if v["iou"].get(c) is not None]
        out[c] = round(float(np.mean(scores)), 4) if scores else None
    return out


def ovnerf_scores(metrics: dict) -> dict:
    """The OV-NeRF protocol's scores (SPEC §5), keyed with an ``_ovnerf`` suffix."""
    keys = ("miou", "accuracy", "macc")
    return {f"{k}_ovnerf": metrics[k] for k in keys} | {"iou_ovnerf": per_label_iou(metrics)}


def _done(results: Path) -> dict[str, dict]:
    out = {}
    if results.exists():
        for line in results.read_text().splitlines():
            rec = json.loads(line)
            out[rec["name"]] = rec
    return out


def _log(results: Path, rec: dict) -> None:
    with open(results, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps({k: rec[k] for k in ("name", "miou", "accuracy") if k in rec}), flush=True)


def _semantic_stats(run: Path) -> dict:
    logs = [json.loads(x) for x in (run / "logs" / "semantic.jsonl").read_text().splitlines()]
    last = logs[-1]
    steps = last["step"]
    return {"semantic_seconds": last["seconds"], "seconds_per_iter": round(last["seconds"] / steps, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", dest="scene_set", default="tabletop", choices=["tabletop", "room", *SCENE_SETS])
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0-4 (tabletop) or the set's")
    ap.add_argument("--protocols", nargs="+", default=["3dovs", "holdout"], choices=["3dovs", "holdout"])
    ap.add_argument(
        "--ablations",
        nargs="+",
        default=["full"],
        help=f"variants (combine with +, e.g. code_rda_w5+no_fda): {', '.join(ABLATIONS)}",
    )
    ap.add_argument(
        "--features",
        nargs="+",
        default=[],
        metavar="FIELD=VALUE",
        help="feature settings for the 2D baselines and every run of this --out, e.g. semantic_downscale=2",
    )
    ap.add_argument("--out", type=Path, default=Path("bench/out/3dovs"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    set_quiet(True)
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    done = _done(results)
    default_seeds = {"tabletop": [0, 1, 2, 3, 4], "room": [0, 1, 2]}
    seeds = args.seeds or default_seeds.get(args.scene_set) or sorted(SCENE_SETS[args.scene_set])
    # tabletop records keep their earlier names ("seed0/...")
    prefix = "" if args.scene_set == "tabletop" else f"{args.scene_set}/"
    feature_settings = [f"features.{a}" for a in args.features]
    feat_cfg = FeatureConfig()
    for a in feature_settings:
        feat_cfg = with_ablation(FitConfig(scene=Path("."), out=Path("."), features=feat_cfg), a).features
    for seed in seeds:
        scene_dir = scene_dir_for(args.out, args.scene_set, seed)
        shares = label_shares(scene_dir)
        for normalize, scales in ((False, None), (True, None), (True, (0,)), (True, (1,)), (True, (2,))):
            tag = ("-minmax" if normalize else "") + (f"-scale{scales[0]}" if scales else "")
            name = f"{prefix}seed{seed}/baseline{tag}"
            if name not in done:
                kw = {"normalize": normalize, "scales": scales, "cfg": feat_cfg}
                m = run_baseline(scene_dir, args.out / name, **kw)
                mo = run_baseline(scene_dir, args.out / name, **kw, protocol="ovnerf")
                _log(
                    results,
                    {
                        "name": name,
                        "set": args.scene_set,
                        "seed": seed,
                        "method": "2d-baseline",
                        "normalize": normalize,
                        "features": args.features or None,
                        "scales": list(scales) if scales else None,
                        "protocol": "3dovs",
                        "miou": m["miou"],
                        "accuracy": m["accuracy"],
                        "macc": m["macc"],
                        "iou": per_label_iou(m),
                        "share": shares,
                        **ovnerf_scores(mo),
                    },
                )
        for protocol in args.protocols:
            holdout = protocol == "holdout"
            for abl in args.ablations:
                name = f"{prefix}seed{seed}/{protocol}/{abl}"
                if name in done:
                    continue
                run = args.out / f"{prefix}seed{seed}" / protocol / abl
                # "ovnerf", "ovnerf+no_rsr": OV-NeRF and its ablations; anything else is a 3D-OVS variant
                method, _, rest = abl.partition("+") if abl.startswith("ovnerf") else ("3dovs", "", abl)
                base = FitConfig(scene=scene_dir, out=run, holdout=holdout, method=method)
                cfg = with_ablation(base, "+".join([*feature_settings, rest or "full"]))
                # one reconstruction per seed, protocol and reconstruction setting ("recon.<field>=<value>"
                # parts), shared by the variants; fit resumes an interrupted one and returns at once for a
                # finished one
                run_recon = recon_dir(args.out / f"{prefix}seed{seed}" / protocol, rest)
                recon_cfg = FitConfig(scene=scene_dir, out=run_recon, holdout=holdout, method="rgb", recon=cfg.recon)
                fresh = not (run_recon / "checkpoints" / "reconstruction.pt").exists()
                t0 = time.perf_counter()
                fit(recon_cfg)
                recon_s = time.perf_counter() - t0 if fresh else 0.0
                cfg = replace(cfg, recon_from=run_recon)
                t0 = time.perf_counter()
                fit(cfg)
                fit_s = time.perf_counter() - t0
                mo = evaluate(run, protocol="ovnerf")
                m = evaluate(run)  # last: eval/metrics.json keeps the 3D-OVS protocol
                rec = {
                    "name": name,
                    "set": args.scene_set,
                    "seed": seed,
                    "protocol": protocol,
                    "ablation": abl,
                    "features": args.features or None,
                    "method": method,
                    "miou": m["miou"],
                    "accuracy": m["accuracy"],
                    "macc": m["macc"],
                    "psnr": m.get("psnr"),
                    "iou": per_label_iou(m),
                    "share": shares,
                    **ovnerf_scores(mo),
                    "recon_seconds": round(recon_s, 1) or None,
                    "semantic_fit_seconds": round(fit_s, 1),
                    **_semantic_stats(run),
                    "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                }
                _log(results, rec)
    summarise(results, args.out / "summary.md")


def summarise(results: Path, out: Path) -> None:
    """Mean (and per-seed) mIoU / accuracy per method and protocol as a markdown table."""
    recs = [json.loads(x) for x in results.read_text().splitlines()]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in recs:
        base = "2d-baseline" + ("-minmax" if r.get("normalize") else "")
        base += f"-scale{r['scales'][0]}" if r.get("scales") else ""
        key = (r.get("set", "tabletop") + " " + r["protocol"], r.get("ablation", base))
        groups.setdefault(key, []).append(r)
    lines = [
        "| protocol | method | seeds | mean mIoU | mean accuracy | mean mAcc | per-seed mIoU |",
        "|---|---|---|---|---|---|---|",
    ]
    for (protocol, method), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["seed"])
        per = " ".join(f"{r['seed']}:{r['miou']:.3f}" for r in rs)
        lines.append(
            f"| {protocol} | {method} | {len(rs)} | {np.mean([r['miou'] for r in rs]):.3f} | "
            f"{np.mean([r['accuracy'] for r in rs]):.3f} | {np.mean([r['macc'] for r in rs]):.3f} | {per} |"
        )
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
