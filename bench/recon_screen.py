"""Screen reconstruction settings by what 3D fusion keeps of each label, without a semantic stage.

For every scene and reconstruction variant: reconstruct (``ovs3d fit --method rgb``, resumable; an existing
reconstruction of the same scene, protocol and settings under the bench's folder is reused), then pool every
training view's ground-truth labels through the reconstruction's voxels the way the agreement prior pools CLIP's
votes (``bench/fusion_ceiling.py``). A label whose pooled share of its own pixels (``own``) falls is one the
geometry no longer separates from its surroundings: in issue 8 this share fell exactly for the labels that ended
below their 2D maps (round 9: a black pawn left empty, 0.35; fresh 3001's floaters: its cardboard box 0.91 →
0.81). It costs a reconstruction (minutes) instead of a full fit, so many scenes can be screened.

Records go to ``OUT/recon_screen.jsonl`` (one per scene and variant, skipped on re-runs); the table printed at the
end compares every variant with the first one.

Usage::

    python bench/recon_screen.py --set hard-val --seeds 1100 1101 --out bench/out/val \\
        --variants recon.background=black recon.background=random
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from bench_3dovs import recon_dir, scene_dir_for  # bench/ is the script's folder
from fusion_ceiling import pooled_shares
from ovs3d.methods.threedovs.ablations import with_ablation
from ovs3d.run import FitConfig, _recon_differences, fit
from ovs3d.utils.console import set_quiet


def _recon_cfg(scene_dir: Path, run: Path, variant: str, holdout: bool) -> FitConfig:
    parts = [p for p in variant.split("+") if p and p != "defaults"]
    if any(not p.startswith("recon.") for p in parts):
        raise SystemExit(f"error: variant {variant!r}: only recon.<field>=<value> parts, joined with +")
    base = FitConfig(scene=scene_dir, out=run, holdout=holdout, method="3dovs")
    recon = with_ablation(base, "+".join(parts or ["full"])).recon
    return FitConfig(scene=scene_dir, out=run, holdout=holdout, method="rgb", recon=recon)


def _existing(run: Path, cfg: FitConfig) -> Path | None:
    """``run`` or the bench's plain ``recon`` beside it, when finished with ``cfg``'s settings. (Only these
    two: a prototype's run may lack a setting it changed, and would read as made with the default.)"""
    for d in (run, run.parent / "recon"):
        conf, ckpt = d / "config.json", d / "checkpoints" / "reconstruction.pt"
        if conf.exists() and ckpt.exists() and not _recon_differences(json.loads(conf.read_text()), cfg.recon):
            return d
    return None


def _train_psnr(run: Path) -> float | None:
    log = run / "logs" / "reconstruction.jsonl"
    if not log.exists():
        return None
    psnrs = [json.loads(x).get("psnr") for x in log.read_text().splitlines()[-3:]]
    psnrs = [p for p in psnrs if p is not None]
    return round(float(np.mean(psnrs)), 2) if psnrs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", dest="scene_set", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--variants", nargs="+", required=True, help="recon.<field>=<value> joined with +, or defaults")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--protocol", default="3dovs", choices=["3dovs", "holdout"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table-only", action="store_true", help="print the table of the records, run nothing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    set_quiet(True)
    args.out.mkdir(parents=True, exist_ok=True)
    records = args.out / "recon_screen.jsonl"
    done = {}
    if records.exists():
        for line in records.read_text().splitlines():
            r = json.loads(line)
            done[(r["set"], r["seed"], r["protocol"], r["variant"])] = r
    prefix = "" if args.scene_set == "tabletop" else f"{args.scene_set}/"
    for seed in [] if args.table_only else args.seeds:
        scene_dir = scene_dir_for(args.out, args.scene_set, seed)
        seed_dir = args.out / f"{prefix}seed{seed}" / args.protocol
        for variant in args.variants:
            key = (args.scene_set, seed, args.protocol, variant)
            if key in done:
                continue
            run = recon_dir(seed_dir, variant)  # the same folder bench_3dovs.py gives this reconstruction
            cfg = _recon_cfg(scene_dir, run, variant, args.protocol == "holdout")
            found = _existing(run, cfg)
            if found is None:
                fit(cfg)
                found = run
            labels = pooled_shares(found)
            own = [r["own"] for r in labels]
            rec = {
                "set": args.scene_set,
                "seed": seed,
                "protocol": args.protocol,
                "variant": variant,
                "run": str(found),
                "mean_own": round(float(np.mean(own)), 4),
                "min_own": round(float(np.min(own)), 4),
                "train_psnr": _train_psnr(found),
                "labels": labels,
            }
            with open(records, "a") as f:
                f.write(json.dumps(rec) + "\n")
            done[key] = rec
            print(json.dumps({k: rec[k] for k in ("seed", "variant", "mean_own", "min_own", "train_psnr")}), flush=True)
    table(done, args.scene_set, args.seeds, args.protocol, args.variants)


def table(done: dict, scene_set: str, seeds: list[int], protocol: str, variants: list[str]) -> None:
    """Per scene: mean / min pooled own share of each variant, and the label that changed most vs the first."""
    ref = variants[0]
    print(f"\n{scene_set}, {protocol}: mean own share over labels / lowest label (Δ vs {ref}); largest label drop\n")
    print("| scene | " + " | ".join(variants) + " | largest label drop |")
    print("|---|" + "---|" * (len(variants) + 1))
    sums = {v: [] for v in variants}
    for seed in seeds:
        base = done.get((scene_set, seed, protocol, ref))
        cells, drop = [], ""
        for v in variants:
            r = done.get((scene_set, seed, protocol, v))
            if r is None:
                cells.append("—")
                continue
            cell = f"{r['mean_own']:.3f} / {r['min_own']:.2f}"
            if base is not None and v != ref:
                cell += f" ({r['mean_own'] - base['mean_own']:+.3f})"
                theirs = {x["label"]: x["own"] for x in base["labels"]}
                worst = min(r["labels"], key=lambda x: x["own"] - theirs.get(x["label"], x["own"]))
                d = worst["own"] - theirs.get(worst["label"], worst["own"])
                if d < -0.02:
                    drop += f"{v}: {worst['label']} {theirs[worst['label']]:.2f}→{worst['own']:.2f} "
            if base is not None:
                sums[v].append(r["mean_own"] - base["mean_own"])
            cells.append(cell)
        print(f"| {scene_set} {seed} | " + " | ".join(cells) + f" | {drop.strip()} |")
    print("| mean Δ | " + " | ".join(f"{np.mean(s):+.4f} ({len(s)})" if s else "—" for s in sums.values()) + " | |")


if __name__ == "__main__":
    main()
