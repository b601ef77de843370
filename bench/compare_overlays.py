"""Put the evaluation overlays of several runs side by side (one row per view), with titles.

Usage::

    python bench/compare_overlays.py --runs A B --titles 3dovs ovnerf --views 05 25 --out compare.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import imageio.v3 as iio  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True)
    ap.add_argument("--titles", nargs="+", required=True)
    ap.add_argument("--views", nargs="+", required=True, help="view keys as in RUN/eval/overlays (e.g. 05)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    # overlays are wide (RGB | truth | prediction | legend): one row per (view, run)
    pairs = [(view, run, title) for view in args.views for run, title in zip(args.runs, args.titles, strict=True)]
    first = iio.imread(args.runs[0] / "eval" / "overlays" / f"{args.views[0]}.png")
    width = 12.0
    fig, axes = plt.subplots(
        len(pairs), 1, figsize=(width, width * first.shape[0] / first.shape[1] * len(pairs) * 1.12)
    )
    for ax, (view, run, title) in zip(list(axes) if len(pairs) > 1 else [axes], pairs, strict=True):
        ax.imshow(iio.imread(run / "eval" / "overlays" / f"{view}.png"))
        ax.set_title(f"{title} — view {view}", fontsize=10, loc="left")
        ax.axis("off")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
