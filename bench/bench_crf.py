"""Cost of the read-out of a rendered view at the library's defaults: the dense CRF (``--semantic.crf-iters``) and
the fill of empty pixels before it (``--semantic.empty-fill-opacity``).

Times :func:`ovs3d.render.crf.dense_crf` on random label scores, colour and depth, and
:func:`ovs3d.render.crf.fill_from_nearest` with a share ``--empty`` of the pixels empty (the left part of each
row, as in a held-out view's unseen corner; scattered pixels cost about as much), at several view sizes and label
counts (median of ``--repeats`` runs, after one warm-up), on the CPU or a CUDA device. A view with no empty pixel
skips the fill.

Usage::

    python bench/bench_crf.py --threads 1
    python bench/bench_crf.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ovs3d.methods.threedovs.config import SemanticConfig
from ovs3d.render.crf import dense_crf, fill_from_nearest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", nargs="+", default=["50x37", "80x60", "252x189", "504x378"])
    ap.add_argument("--labels", type=int, nargs="+", default=[6, 12])
    ap.add_argument("--empty", type=float, default=0.2, help="share of the view's pixels the fill replaces")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg, dev = SemanticConfig(), torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    crf = f"dense CRF ({cfg.crf_iters} iterations, window {2 * cfg.crf_radius + 1}²)"
    print(f"| view | labels | {crf} | fill of empty pixels ({100 * args.empty:.0f} % empty) |")
    print("|---|---|---|---|")
    for size in args.sizes:
        w, h = (int(x) for x in size.split("x"))
        for n_labels in args.labels:
            logits = (torch.randn(h, w, n_labels, generator=g) * 3).to(dev)
            rgb, depth = torch.rand(h, w, 3, generator=g).to(dev), (0.5 + torch.rand(h, w, generator=g)).to(dev)

            def run(logits=logits, rgb=rgb, depth=depth) -> float:
                t0 = time.perf_counter()
                dense_crf(logits, rgb, depth, cfg.crf_weight, cfg.crf_radius, cfg.crf_sigma_rgb,
                          cfg.crf_sigma_depth, cfg.crf_iters).argmax(-1).cpu()  # fmt: skip
                return time.perf_counter() - t0

            keep = torch.ones(h, w, dtype=torch.bool, device=dev)
            keep[:, : round(args.empty * w)] = False

            def fill(logits=logits, keep=keep) -> float:
                t0 = time.perf_counter()
                fill_from_nearest(logits, keep).cpu()
                return time.perf_counter() - t0

            times = []
            for timed in (run, fill):
                timed()
                times.append(1000 * statistics.median(timed() for _ in range(args.repeats)))
            print(f"| {w}x{h} | {n_labels} | {times[0]:.1f} ms | {times[1]:.1f} ms |")


if __name__ == "__main__":
    main()
