"""Throughput of Alg. 1 (pixel CLIP features) against the bare CLIP image forward.

Model: the real open_clip ViT-B-16 architecture with random weights (no download), wrapped in a small
local ``encode_crops`` adapter (crop -> bicubic resize of the short side to 224 -> centre crop 224 ->
CLIP mean/std, as open_clip's preprocess) until ``ovs3d.foundation.openclip`` is used instead.

Image: 504x378 (the 1/8 feature resolution of a 4032x3024 3D-OVS photo); default Alg. 1 settings give
3 scales (patch 75/54/37 px, stride 18/13/9) and 3453 crops per image. A CPU does a few crops per
second, so the CLIP part is timed on a fixed subset: the first ``--crops-per-scale`` windows of each
scale, sent through the same batched stream as the real pipeline. Per-image times are extrapolated as
``crop count x measured seconds per crop + box generation + painting`` (box generation and painting are
measured at full size, on all 3453 boxes with 512-D embeddings). The bare forward is
``model.encode_image`` on the very same preprocessed crops, batch by batch, interleaved with the
pipeline (ABBA order) so that load from other processes hits both alike.

A second, un-extrapolated check runs ``pixel_clip_features`` end to end on the full image with one
scale and non-overlapping windows (patch 75, stride 75: 42 crops).

Run: ``.venv/bin/python bench/bench_pixel_clip.py`` (about 2 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

from ovs3d.foundation.base import ViewImage
from ovs3d.foundation.pixel_clip import (
    PixelClipConfig,
    encode_box_stream,
    paint_mean,
    pixel_clip_features,
    scale_boxes,
)

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


class OpenClipCrops:
    """Minimal ClipBackend over an open_clip model: ``encode_crops`` only."""

    def __init__(self, model: torch.nn.Module, device: str, size: int = 224) -> None:
        self.model = model
        self.device = device
        self.size = size
        self.identity = "open_clip:ViT-B-16:random"
        self.dim = 512
        self.preprocess_s = 0.0
        self.forward_s = 0.0

    def preprocess(self, view: ViewImage, boxes: np.ndarray) -> torch.Tensor:
        """``[N, 3, 224, 224]`` normalised crops (short side resized to 224, bicubic, centre crop)."""
        img = torch.from_numpy(np.ascontiguousarray(view.rgb)).permute(2, 0, 1)  # [3, H, W]
        out = torch.empty(len(boxes), 3, self.size, self.size)
        for k, (x0, y0, x1, y1) in enumerate(np.asarray(boxes).tolist()):
            crop = img[:, y0:y1, x0:x1][None]
            h, w = crop.shape[-2:]
            s = self.size / min(h, w)
            nh, nw = max(self.size, round(h * s)), max(self.size, round(w * s))
            crop = F.interpolate(crop, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
            top, left = (nh - self.size) // 2, (nw - self.size) // 2
            out[k] = crop[0, :, top : top + self.size, left : left + self.size]
        return (out.clamp_(0, 1) - MEAN) / STD

    @torch.inference_mode()
    def encode_crops(self, view: ViewImage, boxes: np.ndarray) -> torch.Tensor:
        t0 = time.perf_counter()
        x = self.preprocess(view, boxes).to(self.device)
        t1 = time.perf_counter()
        y = self.model.encode_image(x).float()
        if self.device != "cpu":
            torch.cuda.synchronize()
        self.preprocess_s += t1 - t0
        self.forward_s += time.perf_counter() - t1
        return y

    @torch.inference_mode()
    def bare(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model.encode_image(x.to(self.device)).float()
        if self.device != "cpu":
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

    import open_clip  # optional dependency: pip install 'ovs3d[clip]'

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval().to(args.device)
    clip = OpenClipCrops(model, args.device)
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
    cfg = PixelClipConfig(batch_size=args.batch_size)
    h, w = args.height, args.width

    # warm-up (first-call allocations)
    clip.encode_crops(view, np.array([[0, 0, 75, 75]] * 2))

    # --- box generation, full size ---
    t0 = time.perf_counter()
    for _ in range(10):
        boxes = scale_boxes(h, w, cfg, view_seed=0)
    t_boxes = (time.perf_counter() - t0) / 10
    n_total = sum(len(b) for b in boxes)

    # --- painting, full size (all boxes, 512-D) ---
    t_paint = 0.0
    for b in boxes:
        e = torch.randn(len(b), 512, device=args.device)
        t0 = time.perf_counter()
        paint_mean(b, e, h, w)
        t_paint += time.perf_counter() - t0

    # --- CLIP on the subset: pipeline stream vs bare forward, interleaved batch by batch ---
    subset = [b[: args.crops_per_scale] for b in boxes]
    stream = np.concatenate(subset)
    batches = [stream[i : i + args.batch_size] for i in range(0, len(stream), args.batch_size)]
    pre = [clip.preprocess(view, b) for b in batches]  # the bare forward's input, prepared outside timing
    t_pipe = t_bare = 0.0
    ratios = []
    clip.preprocess_s = clip.forward_s = 0.0
    for k, (b, x) in enumerate(zip(batches, pre)):
        order = ("pipe", "bare") if k % 2 == 0 else ("bare", "pipe")
        dt = {}
        for what in order:
            t0 = time.perf_counter()
            if what == "pipe":
                encode_box_stream(clip, view, [b], args.batch_size)
            else:
                clip.bare(x)
            dt[what] = time.perf_counter() - t0
        t_pipe += dt["pipe"]
        t_bare += dt["bare"]
        ratios.append(dt["pipe"] / dt["bare"])
    n_sub = len(stream)
    pipe_per_crop, bare_per_crop = t_pipe / n_sub, t_bare / n_sub
    img_pipe = t_boxes + n_total * pipe_per_crop + t_paint
    img_bare = n_total * bare_per_crop
    pre_per_crop = clip.preprocess_s / n_sub

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n## Alg. 1 pixel CLIP throughput ({w}x{h}, ViT-B-16 random weights, device {args.device})\n")
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"load avg {load:.2f}; torch {torch.__version__}"
    )
    print(
        f"crops per image: {n_total} ({', '.join(str(len(b)) for b in boxes)}); timed subset: {n_sub} crops "
        f"(first {args.crops_per_scale} of each scale), batch {args.batch_size}\n"
    )
    print(f"| what | crops/s | s / image ({n_total} crops, extrapolated) |")
    print("|---|---|---|")
    print(f"| bare `encode_image` on preprocessed crops | {1 / bare_per_crop:.2f} | {img_bare:.1f} |")
    print(f"| Alg. 1 pipeline (boxes + preprocess + encode + paint) | {n_total / img_pipe:.2f} | {img_pipe:.1f} |")
    print(f"|   of which box generation | | {t_boxes * 1e3:.2f} ms |")
    print(f"|   of which crop preprocessing (adapter) | | {n_total * pre_per_crop:.1f} |")
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
        x1 = clip.preprocess(view, b1[0])
        t_e2e, t_e2e_bare = [], []
        orders = [("bare", "pipe"), ("pipe", "bare")][: args.e2e_repeats]
        for order in orders:
            for what in order:
                t0 = time.perf_counter()
                if what == "pipe":
                    feats = pixel_clip_features(clip, view, cfg1, 0)
                    t_e2e.append(time.perf_counter() - t0)
                    del feats
                else:
                    for i in range(0, len(x1), args.batch_size):
                        clip.bare(x1[i : i + args.batch_size])
                    t_e2e_bare.append(time.perf_counter() - t0)
        t_e2e, t_e2e_bare = min(t_e2e), min(t_e2e_bare)
        shape = (1, h, w, 512)
        print(
            f"\nend-to-end check, measured (not extrapolated): `pixel_clip_features` on {w}x{h}, one scale, "
            f"patch 75 / stride 75, {len(b1[0])} crops -> {shape}; best of {len(orders)}\n"
        )
        print("| what | seconds | crops/s |")
        print("|---|---|---|")
        print(f"| bare `encode_image` | {t_e2e_bare:.2f} | {len(b1[0]) / t_e2e_bare:.2f} |")
        print(f"| `pixel_clip_features` | {t_e2e:.2f} | {len(b1[0]) / t_e2e:.2f} |")
        print(f"\noverhead: {(t_e2e / t_e2e_bare - 1) * 100:.1f}%")


if __name__ == "__main__":
    main()
