"""Picture of one variant against the defaults, scene by scene: mIoU before → after, and the fit-time ratio.

One row of panels per protocol (``3dovs``, ``holdout``): each scene's defaults' mIoU (grey) and the variant's
(blue; red where lower), with the scene's "+0.10 over min–max 2D" mark (issue 8) as a tick; beside it the
variant's fit seconds (reconstruction + semantic stage) over the defaults' where both runs were timed. Records are
``bench/bench_3dovs.py``'s (``<scene>/<protocol>/<name>``); ``--probe`` replaces the defaults' mIoU by a
``bench/refine_probe.py`` read-out of the same run (``--probe-column``, e.g. ``fill0.5``: runs fitted before a
read-out default read out as a run fitted today is).

Usage::

    python bench/paired_plot.py --results bench/out/val/results.jsonl --protocols 3dovs \\
        --reference full recon.seed=7 --variant recon.n_iters=400 recon.n_iters=400+recon.seed=7 \\
        --out bench/results/issue8-round21-iters-val.png
    python bench/paired_plot.py --results bench/out/test/results.jsonl --variant recon.n_iters=400 \\
        --probe bench/results/issue8-round19-fill-test.jsonl bench/results/issue8-round20-fill-test.jsonl \\
        --probe-column fill0.5 --out bench/results/issue8-round21-iters-test.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from method_table import records  # bench/ is the script's folder


def _fit_seconds(r: dict) -> float | None:
    if r.get("recon_seconds") is None or r.get("semantic_fit_seconds") is None:
        return None  # a resumed or copied reconstruction was not timed
    return float(r["recon_seconds"]) + float(r["semantic_fit_seconds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, nargs="+", required=True)
    ap.add_argument("--variant", nargs="+", required=True, help="the variant's run name, e.g. recon.n_iters=400")
    ap.add_argument(
        "--reference", nargs="+", default=["full"], help="the defaults' run name, one per --variant (paired in order)"
    )
    ap.add_argument("--probe", type=Path, nargs="*", default=[], help="refine_probe.py records of the defaults")
    ap.add_argument("--probe-column", default="defaults")
    ap.add_argument("--protocols", nargs="+", default=["3dovs", "holdout"])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {r["name"]: r for f in args.results for r in records(f) if "name" in r}  # the latest of a name wins
    probe_lines = [p for f in args.probe for p in records(f)]

    def probed(name: str, miou: float) -> float:
        """A run's probe read-out (its line's run path ends with the record's name, as label_table matches)."""
        line = next((p for p in probe_lines if p["run"].rstrip("/").endswith("/" + name)), None)
        return miou if line is None else line[args.probe_column]

    fig, axes = plt.subplots(len(args.protocols), 2, figsize=(12, 3.2 * len(args.protocols)), squeeze=False)
    if len(args.reference) != len(args.variant):
        ap.error("give one --reference per --variant")
    several = len(args.variant) > 1
    for row, protocol in zip(axes, args.protocols):
        pairs = []
        for ref_name, var_name in zip(args.reference, args.variant):
            suffix = f"/{protocol}/{var_name}"
            for scene in sorted(n[: -len(suffix)] for n in by_name if n.endswith(suffix)):
                ref = by_name.get(f"{scene}/{protocol}/{ref_name}")
                if ref is None:
                    continue
                var = by_name[f"{scene}{suffix}"]
                ref_miou = probed(f"{scene}/{protocol}/{ref_name}", ref["miou"])
                minmax = by_name.get(f"{scene}/baseline-minmax", {}).get("miou")
                ref_s, var_s = _fit_seconds(ref), _fit_seconds(var)
                ratio = var_s / ref_s if ref_s and var_s else None
                name = f"{scene} ({ref_name})" if several else scene
                pairs.append((name, ref_miou, var["miou"], minmax, ratio))
        ax, ax_t = row
        y = np.arange(len(pairs))
        for i, (_, a, b, target, _) in enumerate(pairs):
            ax.plot([a, b], [i, i], color="0.7", lw=2, zorder=1)
            if target is not None:
                ax.plot([target + 0.10] * 2, [i - 0.3, i + 0.3], color="k", lw=1)
        ax.scatter([p[1] for p in pairs], y, color="0.5", label=" / ".join(args.reference), zorder=2)
        ax.scatter(
            [p[2] for p in pairs], y, c=["tab:red" if p[2] < p[1] else "tab:blue" for p in pairs], zorder=3,
            label=" / ".join(args.variant) + " (red: lower)",
        )  # fmt: skip
        if pairs:
            a, b = np.mean([p[1] for p in pairs]), np.mean([p[2] for p in pairs])
            ax.set_title(f"{protocol}: mean mIoU {a:.4f} → {b:.4f} (tick: min–max 2D + 0.10)", fontsize=9)
        ax.set_yticks(y, [p[0] for p in pairs], fontsize=7)
        ax.set_xlabel("mIoU")
        ax.legend(fontsize=7, loc="best")
        timed = [(i, p[4]) for i, p in enumerate(pairs) if p[4] is not None]
        ax_t.barh([i for i, _ in timed], [r for _, r in timed], color="tab:gray")
        ax_t.axvline(1.0, color="k", lw=1)
        ax_t.set_yticks(y, [p[0] for p in pairs], fontsize=7)
        ax_t.set_xlabel("fit seconds, variant / defaults")
        ax_t.set_title(f"{protocol}: fit-time ratio (runs timed beside other processes)", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
