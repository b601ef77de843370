"""Cost of LERF's CLIP pyramid (``ovs3d.foundation.pyramid``): build time per image and memory.

(a) **Build time.** Model: the real open_clip ViT-B-16 architecture with random weights (no download),
loaded the way a user loads it: ``open_clip.create_model("ViT-B-16", pretrained=None)``, its state_dict
saved to a temporary file, and that file loaded with ``build_clip("open_clip:ViT-B-16:<file>")`` (an
:class:`~ovs3d.foundation.openclip.OpenClipBackend`). Image: random RGB of 504x378 (W x H); LERF's 7 tile
ratios give 1237 tiles = 1237 CLIP forwards per image. The pyramid is built with ``encode_pyramid`` (box
generation, one stream of ``encode_crops`` batches over all levels, normalisation, duplicated last
row/column), with 1 and 2 torch threads. With ``--crops N`` only ``N`` tiles evenly spaced over the
stream (so every level is represented) are encoded (through the same ``encode_box_stream`` path) and the
per-image time is extrapolated as ``tiles x measured seconds per tile``; the default encodes the whole
image. The segment tiles of the panoptic prior cost one more forward per segment (not timed here: the
same forward).

(b) **Memory per image** of the stored pyramid (float16, last row and column duplicated, as
``pyramid_features`` caches it and :class:`~ovs3d.foundation.pyramid.ClipPyramid` holds it), at 504x378 and
994x738, from the formulas, checked against the bytes of a real cache entry (``.npy`` header included;
written with a fast fake 512-D backend), against LERF's storage of the same grids (fp16
``[n_img, rows + 1, cols + 1, 512]`` per level) and 3D-OVS's pixel features (3 scales x H x W x 512 x 2 B).

Run: ``.venv/bin/python bench/bench_pyramid.py`` (writes a ~600 MB temporary weights file; ~2-4 minutes on
2 CPU cores for the full image at both thread counts), or ``--crops 256`` to extrapolate from fewer tiles.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ovs3d.foundation.base import ViewImage
from ovs3d.foundation.pixel_clip import encode_box_stream
from ovs3d.foundation.pyramid import LERF_TILE_RATIOS, PyramidConfig, encode_pyramid, pyramid_features, pyramid_levels
from ovs3d.io.scene import Scene
from ovs3d.utils.console import set_quiet

sys.path.insert(0, str(Path(__file__).parent))
from bench_pixel_clip import load_backend  # noqa: E402  (random-weight open_clip through build_clip)

D = 512


def time_build(clip, view: ViewImage, threads: int, crops: int, batch_size: int) -> dict:
    """Seconds per image of ``encode_pyramid`` with ``threads`` torch threads (extrapolated if ``crops``)."""
    torch.set_num_threads(threads)
    w, h = view.size
    levels = pyramid_levels(h, w)
    n_tiles = sum(lv.rows * lv.cols for lv in levels)
    warm = levels[0].boxes(h, w)[:4]
    clip.encode_crops(view, warm)  # warm-up (allocations, kernels)
    if crops and crops < n_tiles:
        stream = np.concatenate([lv.boxes(h, w) for lv in levels])
        stream = stream[np.linspace(0, len(stream) - 1, crops).round().astype(np.int64)]  # every level sampled
        t0 = time.perf_counter()
        encode_box_stream(clip, view, [stream], batch_size)
        dt = time.perf_counter() - t0
        per_tile = dt / crops
        return {
            "threads": threads,
            "tiles": n_tiles,
            "timed": crops,
            "s_per_tile": per_tile,
            "s_image": per_tile * n_tiles,
        }
    t0 = time.perf_counter()
    grids = encode_pyramid(clip, view, levels, batch_size)
    dt = time.perf_counter() - t0
    assert len(grids) == len(levels)
    return {"threads": threads, "tiles": n_tiles, "timed": n_tiles, "s_per_tile": dt / n_tiles, "s_image": dt}


class FakeClip512:
    """Fast stand-in for the memory check: any 512-D vectors do."""

    identity = "bench-fake-512"
    dim = D

    def encode_text(self, texts):
        raise NotImplementedError

    def encode_crops(self, view, boxes, *, content=None):
        b = torch.as_tensor(np.asarray(boxes), dtype=torch.float32)
        return torch.cat([b, torch.ones(len(b), D - 4)], dim=1)


def measured_cache_bytes(width: int, height: int) -> int:
    """Bytes of one view's file in a real ``clip_pyramid`` cache entry (header included)."""
    with tempfile.TemporaryDirectory(prefix="ovs3d_bench_pyr_") as d:
        root = Path(d)
        (root / "images").mkdir()
        img = root / "images" / "v0.png"
        Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(img)
        scene = Scene(
            root=root,
            image_paths=[img],
            width=width,
            height=height,
            c2w=np.zeros((1, 3, 4), np.float32),
            intrinsics=np.zeros((1, 4), np.float32),
            near_far=np.ones((1, 2), np.float32),
            kind="forward",
            aabb=np.zeros((2, 3), np.float32),
            classes=["a"],
            annotated=[0],
        )
        feats = pyramid_features(scene, FakeClip512(), [0], PyramidConfig(), root / "cache")
        return feats.nbytes


def memory_rows() -> list[dict]:
    rows = []
    for w, h in ((504, 378), (994, 738)):
        levels = pyramid_levels(h, w, LERF_TILE_RATIOS)
        stored = sum(lv.n_stored for lv in levels)
        ours = stored * D * 2
        lerf = sum((lv.rows + 1) * (lv.cols + 1) for lv in levels) * D * 2  # fp16 [rows+1, cols+1, 512] per level
        ovs = 3 * h * w * D * 2
        rows.append(
            {
                "size": f"{w}x{h}",
                "tiles": sum(lv.rows * lv.cols for lv in levels),
                "stored": stored,
                "ours": ours,
                "disk": measured_cache_bytes(w, h),
                "lerf": lerf,
                "ovs": ovs,
            }
        )
    return rows


def mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="ViT-B-16")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--crops", type=int, default=0, help="encode only this many tiles and extrapolate (0: all)")
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    set_quiet(True)

    print(f"# CLIP pyramid benchmark ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)\n")
    cmd = "python bench/bench_pyramid.py" + (f" --crops {args.crops}" if args.crops else "")
    print(f"Command: `.venv/bin/{cmd}` (torch {torch.__version__})\n")

    clip = load_backend(args.arch, "cpu", args.batch_size)
    rng = np.random.default_rng(0)
    view = ViewImage(None, rng.random((378, 504, 3)).astype(np.float32))
    results = [time_build(clip, view, int(t), args.crops, args.batch_size) for t in args.threads.split(",")]
    print(
        f"## (a) Build time per 504x378 image, open_clip {args.arch} (random weights), CPU, batch {args.batch_size}\n"
    )
    print("| torch threads | tiles = CLIP forwards / image | tiles timed | s / tile | s / image |")
    print("|---:|---:|---:|---:|---:|")
    for r in results:
        extra = " (extrapolated)" if r["timed"] < r["tiles"] else ""
        print(f"| {r['threads']} | {r['tiles']} | {r['timed']} | {r['s_per_tile']:.4f} | {r['s_image']:.1f}{extra} |")
    print()
    print("## (b) Memory per image (D = 512)\n")
    print(
        "| image (WxH) | tiles | stored vectors (dup. row/col) | ours, fp16 bytes | ours on disk (.npy) "
        "| LERF fp16 grids | 3D-OVS pixel features (3 x H x W x 512 x 2 B) | 3D-OVS / ours |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in memory_rows():
        print(
            f"| {r['size']} | {r['tiles']} | {r['stored']} | {r['ours']:,} ({mib(r['ours'])}) | {r['disk']:,} B "
            f"| {mib(r['lerf'])} "
            f"| {mib(r['ovs'])} | {r['ovs'] / r['ours']:.0f}x |"
        )


if __name__ == "__main__":
    main()
