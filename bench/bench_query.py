"""Query latency on a trained semantic run: relevancy of a text on one view from a stored render (issue 10).

A view is rendered once at the evaluation (semantic) resolution — for ``lerf`` its unit features at each of the
30 query scales, stored as bfloat16 ``[H, W, S, D]``; for ``3dovs``/``ovnerf`` its one rendered CLIP feature —
and then each query is only :meth:`~ovs3d.methods.base.SemanticMethod.relevancy` on that stored render: the
cosines with the text and the four negatives at every scale, the best scale per text, its map. Reported (median
of ``--repeat`` warm runs): milliseconds per text per view with the text embedding given (``encode excluded``),
and with the text encoded first (``encode included``) by the run's own backend and by the real open_clip
ViT-B-16 text tower (random weights, loaded from a file through ``build_clip``, as a user loads it).

Usage::

    python bench/bench_query.py --run bench/out/lerf/tabletop-seed0/3dovs/lerf --threads 2
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def _median_ms(fn, repeat: int) -> float:
    fn()  # warm
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, nargs="+", required=True)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--real-text", action="store_true", help="also time the open_clip ViT-B-16 text tower")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from ovs3d.utils.console import set_quiet

    set_quiet(True)
    real = None
    if args.real_text:
        from bench_pixel_clip import load_backend

        real = load_backend("ViT-B-16", "cpu", 32)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads")
    print(
        "| run | method | view (W x H) | scales | stored render | render once | 1 text, encode excluded | "
        "5 texts, per text | 1 text, run's encoder included | 1 text, ViT-B-16 text tower included |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in args.run:
        print(measure(run, args.repeat, real))


def measure(run: Path, repeat: int, real) -> str:
    """One markdown row of latencies for ``run`` (its first annotated view)."""
    import torch.nn.functional as F

    from ovs3d.query import load_run

    loaded = load_run(run)
    scene, method = loaded.scene, loaded.method
    view = list(scene.annotated)[0]
    ds = loaded.cfg.features.semantic_downscale
    t0 = time.perf_counter()
    render = method.render_view(scene, view, ds)
    render_s = time.perf_counter() - t0
    stored = sum(t.numel() * t.element_size() for t in render.values())
    n_scales = method.language_features(render).shape[-2]
    texts = ["a red mug", "a blue bowl", "the handle", "a plant", "a wall"]
    q1, q5, neg = loaded.encode(texts[:1]), loaded.encode(texts), loaded.negatives
    one = _median_ms(lambda: method.relevancy(render, q1, neg), repeat)
    five = _median_ms(lambda: method.relevancy(render, q5, neg), repeat) / 5
    own = _median_ms(lambda: method.relevancy(render, loaded.encode(texts[:1]), neg), repeat)
    vit = "—"
    if real is not None and real.dim == q1.shape[-1]:

        def with_vit():
            q = F.normalize(real.encode_text(texts[:1]).float(), dim=-1)
            return method.relevancy(render, q, neg)

        vit = f"{_median_ms(with_vit, repeat):.1f} ms"
    w, h = scene.image_size(ds)
    return (
        f"| {run} | {loaded.cfg.method} | {view} ({w} x {h}) | {n_scales} | {stored / 2**20:.1f} MiB | "
        f"{render_s:.2f} s | {one:.1f} ms | {five:.1f} ms | {own:.1f} ms | {vit} |"
    )


if __name__ == "__main__":
    main()
