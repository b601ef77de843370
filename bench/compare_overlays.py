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
    rows, cols = len(args.views), len(args.runs)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for i, view in enumerate(args.views):
        for j, (run, title) in enumerate(zip(args.runs, args.titles, strict=True)):
            ax = axes[i][j]
            ax.imshow(iio.imread(run / "eval" / "overlays" / f"{view}.png"))
            ax.set_title(f"{title} — view {view}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
