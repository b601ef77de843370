"""Feature cache: size on disk and load time of a scene's pixel CLIP features.

A 30-view scene at the default semantic resolution (80x60: a 320x240 image at 1/4), 3 scales x 512-D,
random features (the point is I/O). For each storage dtype the entry is written through
``FeatureCache.get_or_compute``, evicted from the OS page cache (``posix_fadvise(DONTNEED)``, works
without root for clean pages) and opened again from a fresh ``FeatureCache``:

- *open*: ``get_or_compute`` hit (meta.json parse, size check of every file);
- *verify*: sha256 of every file from a cold page cache (in real use this happens lazily, on the first
  access of each view, or at open with ``verify=True``);
- *cold read*: after another eviction, ``np.array(features[i])`` for every view = every page into RAM
  in the stored dtype (int8: dequantised to float16);
- *warm read*: the same again (pages cached).

Every read timing is the best of 3 runs (evicting before each cold one).

For comparison, the reference format (``torch.save`` of a float32 ``[3, 512, H, W]`` tensor per view,
``torch.load`` back) is timed the same way.

Run: ``.venv/bin/python bench/bench_cache.py`` (about 20 s; writes ~1.5 GB to a temp dir, then removes it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ovs3d.foundation.cache import FeatureCache
from ovs3d.utils.console import set_quiet

REFERENCE_BPP = 3 * 512 * 4  # bytes per pixel of the reference's fp32 features
REPEATS = 3  # every read timing is the best of 3 (the machine is shared)


def evict(paths: list[Path]) -> None:
    """Drop the files' pages from the OS page cache (no-op where unsupported)."""
    if not hasattr(os, "posix_fadvise"):
        return
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_all(entry, torch_load: bool = False) -> float:
    """Seconds to copy every view into RAM, one at a time."""
    t0 = time.perf_counter()
    for i in range(len(entry)):
        x = torch.load(entry[i], weights_only=True) if torch_load else np.array(entry[i])
        del x
    return time.perf_counter() - t0


def bench_dtype(work: Path, views: list, compute, dtype: str, size: list[int]) -> dict:
    cache = FeatureCache(work / "cache")
    t0 = time.perf_counter()
    entry = cache.get_or_compute("pixel_clip", "bench", {"size": size}, views, compute, dtype=dtype)
    t_write = time.perf_counter() - t0
    files = sorted(entry.path.glob("*.npy"))
    evict(files)
    t0 = time.perf_counter()
    entry = FeatureCache(work / "cache").get_or_compute(
        "pixel_clip", "bench", {"size": size}, views, compute, dtype=dtype
    )
    t_open = time.perf_counter() - t0
    t_verify = t_cold = t_warm = float("inf")
    for _ in range(REPEATS):
        evict(files)
        t0 = time.perf_counter()
        entry.verify(hash_files=True)  # sha256 of every file, read from disk
        t_verify = min(t_verify, time.perf_counter() - t0)
        evict(files)
        t_cold = min(t_cold, read_all(entry))
        t_warm = min(t_warm, read_all(entry))
    return {
        "name": dtype,
        "size": entry.nbytes,
        "write": t_write,
        "open": t_open,
        "verify": t_verify,
        "cold": t_cold,
        "warm": t_warm,
    }


def bench_reference(work: Path, n: int, compute) -> dict:
    ref = work / "reference"
    ref.mkdir()
    t0 = time.perf_counter()
    for i in range(n):
        torch.save(torch.from_numpy(compute(i)).permute(0, 3, 1, 2).contiguous(), ref / f"{i:02d}.pth")
    t_write = time.perf_counter() - t0
    files = sorted(ref.glob("*.pth"))
    t_cold = t_warm = float("inf")
    for _ in range(REPEATS):
        evict(files)
        t_cold = min(t_cold, read_all(files, torch_load=True))
        t_warm = min(t_warm, read_all(files, torch_load=True))
    size = sum(f.stat().st_size for f in files)
    return {"name": "reference fp32 .pth", "size": size, "write": t_write, "cold": t_cold, "warm": t_warm}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--views", type=int, default=30)
    ap.add_argument("--width", type=int, default=80)
    ap.add_argument("--height", type=int, default=60)
    ap.add_argument("--dir", type=Path, default=None, help="parent of the work folder (default: system temp)")
    args = ap.parse_args()
    set_quiet(True)
    n, h, w = args.views, args.height, args.width
    shape = (3, h, w, 512)
    work = Path(tempfile.mkdtemp(prefix="ovs3d_bench_cache_", dir=args.dir))
    try:
        images = work / "images"
        images.mkdir()
        views = []
        for i in range(n):
            p = images / f"{i:02d}.png"
            p.write_bytes(b"x" * (1000 + i))
            views.append((p.stem, p))
        base = np.random.default_rng(0).normal(size=shape).astype(np.float32)

        def compute(i: int) -> np.ndarray:
            return base + np.float32(i)  # distinct per view, no RNG cost in the timing

        rows = [bench_dtype(work, views, compute, dt, [w, h]) for dt in ("float16", "int8")]
        rows.append(bench_reference(work, n, compute))

        pixels = n * h * w
        print(f"\n## Feature cache: {n} views at {w}x{h}, 3 scales x 512-D ({pixels} pixels)\n")
        print("| storage | on disk | B/pixel | vs ref. | write s | open | verify s | cold read s | warm read s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            bpp = r["size"] / pixels
            opened = f"{r['open'] * 1e3:.1f} ms" if "open" in r else "-"
            verified = f"{r['verify']:.2f}" if "verify" in r else "-"
            print(
                f"| {r['name']} | {r['size'] / 2**20:.1f} MiB | {bpp:.0f} | {bpp / REFERENCE_BPP:.2f}x | "
                f"{r['write']:.2f} | {opened} | {verified} | {r['cold']:.2f} | {r['warm']:.2f} |"
            )
        print(
            "\nopen = cache hit (meta.json + size checks); verify = sha256 of every file from a cold page "
            "cache (lazy on first access in real use); cold/warm read = every view copied into RAM in the "
            "stored dtype (int8: dequantised to float16), torch.load for the reference; best of 3"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
