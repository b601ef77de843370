"""Training PSNR of reconstructions over their iterations, one panel per scene: where a fit sits on a plateau.

Reads each run's ``logs/reconstruction.jsonl`` (one record per ``log_every`` iterations; the PSNR is that
iteration's batch, so single points are noisy) and draws the curves of the runs given for each scene.

Usage::

    python bench/psnr_curves.py --panel "hard-val 1025" RUN_A RUN_B --panel "hard-val 1017" RUN_C RUN_D \\
        --names defaults "distortion from 1/3" --out bench/results/psnr.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_curve(run: Path) -> tuple[list[int], list[float]]:
    """``(steps, psnrs)`` of a run's reconstruction log."""
    log = Path(run) / "logs" / "reconstruction.jsonl"
    if not log.is_file():
        raise SystemExit(f"error: {log} not found; give a run folder that has trained a reconstruction")
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [int(r["step"]) for r in records], [float(r["psnr"]) for r in records]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--panel",
        nargs="+",
        action="append",
        required=True,
        metavar=("TITLE", "RUN"),
        help="a panel's title, then its runs (in the order of --names)",
    )
    ap.add_argument("--names", nargs="+", required=True, help="one legend entry per run of a panel")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    for title, *runs in args.panel:
        if len(runs) != len(args.names):
            raise SystemExit(f"error: panel {title!r} has {len(runs)} runs for {len(args.names)} --names")
    fig, axes = plt.subplots(1, len(args.panel), figsize=(4.2 * len(args.panel), 3.4), squeeze=False)
    for ax, (title, *runs) in zip(axes[0], args.panel):
        for name, run in zip(args.names, runs):
            steps, psnrs = read_curve(Path(run))
            ax.plot(steps, psnrs, marker="o", ms=3, label=name)
            print(f"{title} | {name} | " + " ".join(f"{p:.1f}" for p in psnrs))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel("training PSNR (dB)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
