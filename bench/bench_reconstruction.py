"""Issue 2 benchmark: held-out PSNR vs iterations and wall time, samples per ray, peak memory.

Scene: ``tabletop`` (seed given) at the default size, novel-view protocol (the 5 annotated views are
held out of training and scored). Wall time counts training only (evaluation pauses the clock).
Samples per ray are compared with the reference's dense marching: 482 samples per ray, about half of
them outside the box (3D-OVS/TensoRF LLFF settings, ``nSamples`` from the 128^3 initial grid).

Usage::

    python bench/bench_reconstruction.py --seed 0 --iters 600 --out bench/out/recon
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from ovs3d.eval.metrics import psnr
from ovs3d.io.loader import load_scene
from ovs3d.methods.reconstruction import ReconstructionConfig, train_reconstruction
from ovs3d.render.marching import march, render_rgb
from ovs3d.render.scene_rays import ray_near, view_rays
from ovs3d.scenegen import make_scene
from ovs3d.utils.console import set_quiet

REFERENCE_SAMPLES = 482


@torch.no_grad()
def heldout_stats(trained, scene, views, ds, occupancy="trained"):
    """Mean PSNR over views and density/appearance evaluations per ray (deterministic marching)."""
    ps, nd, na, nr = [], 0, 0, 0
    occ = trained.occupancy if occupancy == "trained" else None
    for v in views:
        o, d = view_rays(scene, v, ds)
        rgbs = []
        for i in range(0, o.shape[0], 8192):
            m = march(trained.field, occ, o[i : i + 8192], d[i : i + 8192], trained.config.march, near=ray_near(scene))
            out = render_rgb(trained.field, m, d[i : i + 8192], trained.config.march)
            rgbs.append(out["rgb"])
            nd += int(out["n_density"])
            na += int(out["n_app"])
            nr += o[i : i + 8192].shape[0]
        gt = scene.load_image(v, ds)
        ps.append(psnr(torch.cat(rgbs).clamp(0, 1).reshape(gt.shape).numpy(), gt))
    return float(np.mean(ps)), nd / nr, na / nr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iters", type=int, default=None, help="override n_iters (default: the library default)")
    ap.add_argument("--every", type=int, default=50, help="evaluate held-out PSNR every N iterations")
    ap.add_argument("--out", type=Path, default=Path("bench/out/recon"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    set_quiet(True)
    args.out.mkdir(parents=True, exist_ok=True)
    scene_dir = args.out / f"tabletop-{args.seed}"
    if not scene_dir.exists():
        make_scene("tabletop", args.seed, scene_dir)
    scene = load_scene(scene_dir)
    cfg = ReconstructionConfig()
    if args.iters:
        cfg = replace(cfg, n_iters=args.iters)
    run = args.out / f"run-{args.seed}"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    views = scene.train_views(holdout=True)
    held = list(scene.annotated)
    curve = []
    paused = [0.0]
    t0 = time.perf_counter()

    def callback(step, trained):
        t = time.perf_counter()
        train_s = t - t0 - paused[0]
        p, nd, na = heldout_stats(trained, scene, held, cfg.rgb_downscale)
        curve.append(
            {
                "step": step,
                "train_seconds": round(train_s, 1),
                "heldout_psnr": round(p, 2),
                "density_evals_per_ray": round(nd, 1),
                "app_evals_per_ray": round(na, 1),
            }
        )
        print(json.dumps(curve[-1]), flush=True)
        paused[0] += time.perf_counter() - t

    trained = train_reconstruction(scene, run, cfg, views, callback=callback, callback_every=args.every)
    total_train = time.perf_counter() - t0 - paused[0]
    p_occ, nd, na = heldout_stats(trained, scene, held, cfg.rgb_downscale)
    p_dense, nd_dense, na_dense = heldout_stats(trained, scene, held, cfg.rgb_downscale, occupancy=None)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    first25 = next((c for c in curve if c["heldout_psnr"] >= 25.0), None)
    result = {
        "scene": f"tabletop seed {args.seed}, {scene.width}x{scene.height}, {scene.n_views} views, "
        f"{len(held)} held out, RGB at 1/{cfg.rgb_downscale:g}",
        "machine": f"2-core CPU (no GPU), torch threads = {args.threads}",
        "config": asdict(cfg),
        "train_seconds": round(total_train, 1),
        "heldout_psnr": round(p_occ, 2),
        "first_25db": first25,
        "samples": {
            "reference_dense_per_ray": REFERENCE_SAMPLES,
            "density_evals_per_ray": round(nd, 1),
            "app_evals_per_ray": round(na, 1),
            "reduction_vs_reference_density": round(REFERENCE_SAMPLES / nd, 2),
            "without_occupancy": {
                "heldout_psnr": round(p_dense, 2),
                "density_evals_per_ray": round(nd_dense, 1),
                "app_evals_per_ray": round(na_dense, 1),
            },
        },
        "peak_rss_mib": round(peak_mib, 1),
        "curve": curve,
    }
    (args.out / f"result-{args.seed}.json").write_text(json.dumps(result, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
        ax[0].plot([c["step"] for c in curve], [c["heldout_psnr"] for c in curve], "o-")
        ax[0].set_xlabel("iteration")
        ax[0].set_ylabel("held-out PSNR (dB)")
        ax[1].plot([c["train_seconds"] for c in curve], [c["heldout_psnr"] for c in curve], "o-")
        ax[1].axhline(25, color="grey", ls="--")
        ax[1].axvline(180, color="grey", ls=":")
        ax[1].set_xlabel("training wall time (s), 2-core CPU")
        for a in ax:
            a.grid(alpha=0.3)
        fig.suptitle(f"TensoRF reconstruction, tabletop seed {args.seed}")
        fig.tight_layout()
        fig.savefig(args.out / f"psnr-{args.seed}.png", dpi=110)
    except ImportError:
        pass
    print(json.dumps({k: v for k, v in result.items() if k not in ("config", "curve")}, indent=2))


if __name__ == "__main__":
    main()
