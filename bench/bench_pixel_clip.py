"""Throughput of Alg. 1 (pixel CLIP features) against the bare CLIP image forward.

Model: the real open_clip ViT-B-16 architecture with random weights (no download), loaded the way a user
loads it: ``open_clip.create_model("ViT-B-16", pretrained=None)``, its state_dict saved to a temporary
file, and that file loaded with ``ovs3d.foundation.registry.build_clip("open_clip:ViT-B-16:<file>")``,
which gives an :class:`~ovs3d.foundation.openclip.OpenClipBackend`. The pipeline side goes through that
backend's ``encode_crops`` (crop, CLIP preprocessing with ``preprocess_crops``, ``encode_image``).

Image: 504x378 (the 1/8 feature resolution of a 4032x3024 3D-OVS photo); default Alg. 1 settings give
3 scales (patch 75/54/37 px, stride 18/13/9) and 3453 crops per image. A CPU does a few crops per
second, so the CLIP part is timed on a fixed subset: the first ``--crops-per-scale`` windows of each
scale, sent through the same batched stream as the real pipeline. Per-image times are extrapolated as
``crop count x measured seconds per crop + box generation + painting`` (box generation and painting are
measured at full size, on all 3453 boxes with 512-D embeddings). The bare forward is the backend's own
``model.encode_image`` on the very same crops, made beforehand (outside the timing) with the backend's
``preprocess_crops``, batch by batch, interleaved with the pipeline (ABBA order) so that load from other
processes hits both alike. The backend's preprocessing time inside ``encode_crops`` is measured by
wrapping its ``preprocess_crops`` with a timer (the instance attribute shadows the method).

A second, un-extrapolated check runs ``pixel_clip_features`` end to end on the full image with one
scale and non-overlapping windows (patch 75, stride 75: 42 crops).

Run: ``.venv/bin/python bench/bench_pixel_clip.py`` (about 2-3 minutes on 2 CPU cores; it writes a
~600 MB temporary weights file).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ovs3d.foundation.base import ViewImage
from ovs3d.foundation.pixel_clip import (
    PixelClipConfig,
    encode_box_stream,
    paint_mean,
    patch_sizes,
    pixel_clip_features,
    scale_boxes,
)
from ovs3d.foundation.registry import build_clip


def load_backend(arch: str, device: str, batch_size: int):
    """``OpenClipBackend`` built by ``build_clip`` from a temporary file of random ``arch`` weights."""
    import open_clip  # optional dependency: pip install 'ovs3d[clip]'

    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None)
    with tempfile.TemporaryDirectory(prefix="ovs3d_bench_") as d:
        path = Path(d) / f"{arch}-random.bin"
        torch.save(model.state_dict(), path)
        del model
        return build_clip(f"open_clip:{arch}:{path}", device=device, batch_size=batch_size)


def time_preprocessing(clip) -> dict:
    """Wrap ``clip.preprocess_crops`` with a timer; returns the accumulator (``{"s": seconds}``)."""
    acc = {"s": 0.0}
    inner = clip.preprocess_crops

    def timed(image, boxes):
        t0 = time.perf_counter()
        out = inner(image, boxes)
        if out.device.type == "cuda":
            torch.cuda.synchronize()
        acc["s"] += time.perf_counter() - t0
        return out

    clip.preprocess_crops = timed
    return acc


@torch.inference_mode()
def bare(clip, x: torch.Tensor) -> torch.Tensor:
    """The backend's own ``model.encode_image`` on an already preprocessed batch."""
    y = clip.model.encode_image(x.to(clip.device)).float()
    if clip.device.type == "cuda":
        torch.cuda.synchronize()
    return y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=504)
    ap.add_argument("--height", type=int, default=378)
    ap.add_argument("--crops-per-scale", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end one-scale check")
    ap.add_argument("--e2e-repeats", type=int, default=1, choices=(1, 2), help="2 = ABBA order, best of 2")
    args = ap.parse_args()

    t0 = time.perf_counter()
    clip = load_backend("ViT-B-16", args.device, args.batch_size)
    t_load = time.perf_counter() - t0
    pre_acc = time_preprocessing(clip)
    rng = np.random.default_rng(0)
    # smooth random image (a few blobs of colour), float32 [H, W, 3]
    small = rng.random((8, 8, 3), dtype=np.float32)
    rgb = (
        F.interpolate(torch.from_numpy(small).permute(2, 0, 1)[None], (args.height, args.width), mode="bilinear")[0]
        .permute(1, 2, 0)
        .numpy()
        .copy()
    )
    view = ViewImage(stem="bench", rgb=rgb)
    # the image as encode_crops sees it, for making the bare forward's input
    image = torch.as_tensor(rgb, dtype=torch.float32, device=clip.device).permute(2, 0, 1)
    cfg = PixelClipConfig(batch_size=args.batch_size)
    h, w = args.height, args.width

    # warm-up (first-call allocations)
    clip.encode_crops(view, np.array([[0, 0, 75, 75]] * 2))
    bare(clip, clip.preprocess_crops(image, np.array([[0, 0, 75, 75]] * 2)))

    # --- box generation, full size ---
    t0 = time.perf_counter()
    for _ in range(10):
        boxes = scale_boxes(h, w, cfg, view_seed=0)
    t_boxes = (time.perf_counter() - t0) / 10
    n_total = sum(len(b) for b in boxes)

    # --- painting, full size (all boxes, 512-D) ---
    t_paint = 0.0
    for b in boxes:
        e = torch.randn(len(b), clip.dim, device=args.device)
        t0 = time.perf_counter()
        paint_mean(b, e, h, w)
        t_paint += time.perf_counter() - t0

    # --- CLIP on the subset: pipeline stream vs bare forward, interleaved batch by batch ---
    subset = [b[: args.crops_per_scale] for b in boxes]
    stream = np.concatenate(subset)
    batches = [stream[i : i + args.batch_size] for i in range(0, len(stream), args.batch_size)]
    with torch.inference_mode():
        pre = [clip.preprocess_crops(image, b) for b in batches]  # the bare forward's input, outside timing
    t_pipe = t_bare = 0.0
    ratios = []
    pre_acc["s"] = 0.0
    for k, (b, x) in enumerate(zip(batches, pre)):
        order = ("pipe", "bare") if k % 2 == 0 else ("bare", "pipe")
        dt = {}
        for what in order:
            t0 = time.perf_counter()
            if what == "pipe":
                encode_box_stream(clip, view, [b], args.batch_size)
            else:
                bare(clip, x)
            dt[what] = time.perf_counter() - t0
        t_pipe += dt["pipe"]
        t_bare += dt["bare"]
        ratios.append(dt["pipe"] / dt["bare"])
    n_sub = len(stream)
    pipe_per_crop, bare_per_crop = t_pipe / n_sub, t_bare / n_sub
    img_pipe = t_boxes + n_total * pipe_per_crop + t_paint
    img_bare = n_total * bare_per_crop
    pre_per_crop = pre_acc["s"] / n_sub

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n## Alg. 1 pixel CLIP throughput ({w}x{h}, ViT-B-16 random weights, device {args.device})\n")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
        f"load avg {load:.2f}; torch {torch.__version__}"
    )
    print(f"backend: {type(clip).__name__} via build_clip, identity {clip.identity} (built in {t_load:.1f} s)")
    print(
        f"crops per image: {n_total} ({', '.join(str(len(b)) for b in boxes)}); timed subset: {n_sub} crops "
        f"(first {args.crops_per_scale} of each scale), batch {args.batch_size}\n"
    )
    print(f"| what | crops/s | s / image ({n_total} crops, extrapolated) |")
    print("|---|---|---|")
    print(f"| bare `encode_image` on preprocessed crops | {1 / bare_per_crop:.2f} | {img_bare:.1f} |")
    print(f"| Alg. 1 pipeline (boxes + preprocess + encode + paint) | {n_total / img_pipe:.2f} | {img_pipe:.1f} |")
    print(f"|   of which box generation | | {t_boxes * 1e3:.2f} ms |")
    print(f"|   of which crop preprocessing (`OpenClipBackend.preprocess_crops`) | | {n_total * pre_per_crop:.1f} |")
    print(f"|   of which painting (3 scales, 512-D, full size) | | {t_paint:.2f} |")
    overhead = img_pipe / img_bare - 1
    own = (t_boxes + t_paint) / img_bare
    print(
        f"\npipeline overhead vs bare forward: **{overhead * 100:.1f}%** "
        f"(median per-batch encode ratio {np.median(ratios):.3f}) "
        f"(Alg. 1 code alone, boxes + painting: {own * 100:.2f}%; "
        f"crop preprocessing: {n_total * pre_per_crop / img_bare * 100:.1f}%)"
    )

    if not args.no_e2e:
        cfg1 = PixelClipConfig(patch_divisors=(5,), stride_divisor=1, jitter=False, batch_size=args.batch_size)
        b1 = scale_boxes(h, w, cfg1, 0)
        p1 = patch_sizes(h, w, cfg1)[0][0]
        with torch.inference_mode():
            x1 = clip.preprocess_crops(image, b1[0])
        t_e2e, t_e2e_bare = [], []
        orders = [("bare", "pipe"), ("pipe", "bare")][: args.e2e_repeats]
        for order in orders:
            for what in order:
                t0 = time.perf_counter()
                if what == "pipe":
                    feats = pixel_clip_features(clip, view, cfg1, 0)
                    t_e2e.append(time.perf_counter() - t0)
                    shape = tuple(feats.shape)
                    del feats
                else:
                    for i in range(0, len(x1), args.batch_size):
                        bare(clip, x1[i : i + args.batch_size])
                    t_e2e_bare.append(time.perf_counter() - t0)
        t_e2e, t_e2e_bare = min(t_e2e), min(t_e2e_bare)
        print(
            f"\nend-to-end check, measured (not extrapolated): `pixel_clip_features` on {w}x{h}, one scale, "
            f"patch {p1} / stride {p1}, {len(b1[0])} crops -> {shape}; best of {len(orders)}\n"
        )
        print("| what | seconds | crops/s |")
        print("|---|---|---|")
        print(f"| bare `encode_image` | {t_e2e_bare:.2f} | {len(b1[0]) / t_e2e_bare:.2f} |")
        print(f"| `pixel_clip_features` | {t_e2e:.2f} | {len(b1[0]) / t_e2e:.2f} |")
        print(f"\noverhead: {(t_e2e / t_e2e_bare - 1) * 100:.1f}%")
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"load avg at the end: {load:.2f}")


if __name__ == "__main__":
    main()
