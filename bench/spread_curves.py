"""When two reconstructions of one scene part: PSNR and depth spread of their annotated views over the iterations.

Fits the RGB reconstruction of a scene once per ``--seeds`` entry (the library's defaults, or ``--variant``'s
``recon.<field>=<value>`` settings, otherwise; 3D-OVS protocol: every view trains) and, every ``--every``
iterations, renders the annotated views at ``--downscale`` and records their PSNR and mean depth spread
(:func:`ovs3d.render.volume.depth_spread`, the standard deviation of the ray parameter under a ray's weights:
the fog that round 17 found on the seeds whose fits score lower). Writes one JSON line per seed and a
two-panel plot; ``--curves`` draws stored ones together.

Usage::

    python bench/spread_curves.py --scene bench/out/val/hard-val-1007 --seeds 20211202 7 \\
        --out bench/out/spread-1007 --plot bench/results/spread-curves-1007.png
    python bench/spread_curves.py --scene bench/out/val/hard-val-1007 --seeds 20211202 7 \\
        --variant recon.distortion_ramp=0.333 --out bench/out/spread-1007-ramp --plot spread-ramp.png
    python bench/spread_curves.py --curves bench/out/spread-1007/curves.jsonl bench/out/spread-1007-ramp/curves.jsonl \\
        --plot bench/results/spread-curves.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from method_table import records  # noqa: E402 (bench/ is the script's folder)
from ovs3d.eval.metrics import psnr as image_psnr  # noqa: E402
from ovs3d.io.loader import load_scene  # noqa: E402
from ovs3d.methods.reconstruction import render_view, train_reconstruction  # noqa: E402
from ovs3d.methods.threedovs.ablations import with_ablation  # noqa: E402
from ovs3d.run import FitConfig  # noqa: E402
from ovs3d.utils.console import set_quiet  # noqa: E402


def fit_curves(args) -> list[dict]:
    """Fit the reconstruction once per seed and measure it every ``args.every`` iterations; one record per seed."""
    scene = load_scene(args.scene)
    views = list(scene.annotated)
    photos = {v: scene.load_image(v, args.downscale) for v in views}
    out = []
    for seed in args.seeds:
        base = FitConfig(scene=args.scene, out=args.out, method="rgb")
        cfg = dataclasses.replace(with_ablation(base, args.variant).recon, seed=seed)
        rows: list[dict] = []

        def measure(step: int, trained, rows=rows, seed=seed) -> None:
            psnr, spread = [], []
            for v in views:
                render = render_view(trained, scene, v, args.downscale, spread=True)
                psnr.append(image_psnr(render["rgb"], photos[v]))
                spread.append(float(render["depth_spread"].mean()))
            rows.append({"step": step, "psnr": float(np.mean(psnr)), "depth_spread": float(np.mean(spread))})
            last = rows[-1]
            print(f"seed {seed} step {step}: PSNR {last['psnr']:.2f} dB, depth spread {last['depth_spread']:.4f}")

        run = args.out / f"seed{seed}"
        train_reconstruction(scene, run, cfg, scene.train_views(), callback=measure, callback_every=args.every)
        out.append({"scene": str(args.scene), "variant": args.variant, "seed": seed, "curve": rows})
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "curves.jsonl", "w") as f:
        for rec in out:
            f.write(json.dumps(rec) + "\n")
    print(f"written {args.out / 'curves.jsonl'}")
    return out


def plot(curves: list[dict], path: Path) -> None:
    """PSNR and depth spread against the iteration, one line per record."""
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for rec in curves:
        steps = [r["step"] for r in rec["curve"]]
        name = "defaults" if rec.get("variant", "full") == "full" else rec["variant"]
        label = f"{name}, seed {rec['seed']}"
        ax[0].plot(steps, [r["psnr"] for r in rec["curve"]], marker="o", ms=3, label=label)
        ax[1].plot(steps, [r["depth_spread"] for r in rec["curve"]], marker="o", ms=3, label=label)
    ax[0].set_ylabel("PSNR of the annotated views (dB)")
    ax[1].set_ylabel("mean depth spread (ray parameter)")
    for a in ax:
        a.set_xlabel("iteration")
        a.grid(alpha=0.3)
    ax[0].legend(fontsize=7)
    fig.suptitle(", ".join(sorted({Path(r["scene"]).name for r in curves})) + ": reconstructions measured", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"written {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", type=Path, help="the scene to fit (not with --curves)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[20211202], help="reconstruction seeds (recon.seed)")
    ap.add_argument("--variant", default="full", help="reconstruction settings, as bench_3dovs.py's ablations")
    ap.add_argument("--every", type=int, default=25, help="iterations between measurements")
    ap.add_argument("--downscale", type=float, default=4.0, help="of the measured renders (full size / this)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="folder of the runs and curves.jsonl (with --scene)")
    ap.add_argument("--curves", type=Path, nargs="+", help="curves.jsonl files to draw together instead of fitting")
    ap.add_argument("--plot", type=Path, required=True)
    args = ap.parse_args()
    if args.curves:
        plot([rec for f in args.curves for rec in records(f)], args.plot)
        return
    if args.scene is None or args.out is None:
        raise SystemExit("error: give --scene and --out to fit, or --curves to draw stored curves")
    torch.set_num_threads(args.threads)
    set_quiet(True)
    plot(fit_curves(args), args.plot)


if __name__ == "__main__":
    main()
