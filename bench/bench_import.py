"""``ovs3d import`` (COLMAP via pycolmap) against generated scenes with known cameras (issue 12).

Each generated scene (default settings of its preset) is written to ``bench/out/import/<preset><seed>/truth``
(kept and reused); only its ``images/`` go to :func:`ovs3d.io.colmap.import_scene`, which writes
``bench/out/import/<preset><seed>/<matcher>``. The recovered cameras are compared with the generator's
(:func:`ovs3d.io.colmap.compare_poses`):

* ``registered``: share of the photos COLMAP registered (the bench imports with ``min_registered_fraction=0``
  so a poor registration is measured rather than refused);
* rotation error (degrees), median and max, after the Umeyama similarity fitted on the camera centres
  (``rot_*``), after the rotation that best aligns the orientations (``rot_aligned_*``), and alignment-free
  over every pair of views (``rel_rot_median``). Target: median <= 0.5 deg;
* camera-centre error after the Umeyama similarity, median and max, as a percentage of two lengths: the
  *scene extent* (the diagonal of the box around every true camera's frustum between its true near and far
  bounds: the region the capture covers; target median <= 1 %) and, stricter, the *camera extent* (the
  largest distance between two true camera centres);
* ``near_ratio`` / ``far_ratio``: median LLFF bounds from the sparse points (in the truth's units after the
  similarity) over the generator's (percentiles of dense depth);
* seconds per stage (read, extract, match, map, undistort, write) and in total, points, image size.

Each scene and matcher is imported ``--repeats`` times (COLMAP's results vary with its threads). Results are
appended to ``bench/results/issue12-import.jsonl`` and printed as markdown tables (every run, then a summary).

Usage::

    python bench/bench_import.py           # tabletop0, room0, orbit0 and orbit0 at 320x240 (if the preset exists)
    python bench/bench_import.py --scenes room:0 --matchers sequential exhaustive --threads 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from ovs3d.errors import OVS3DError
from ovs3d.io.colmap import compare_poses, import_scene
from ovs3d.io.loader import read_poses_bounds
from ovs3d.scenegen.presets import PRESETS, make_scene
from ovs3d.utils.console import set_quiet

ROOT = Path(__file__).parent
OUT = ROOT / "out" / "import"
RESULTS = ROOT / "results" / "issue12-import.jsonl"
STAGES = ("read", "extract", "match", "map", "undistort", "write")
DEFAULT_MATCHERS = {"tabletop": ["exhaustive"], "room": ["sequential", "exhaustive"], "orbit": ["exhaustive"]}


def frustum_extent(c2w: np.ndarray, hwf: np.ndarray, near_far: np.ndarray) -> float:
    """Diagonal of the box around every camera's frustum between its near and far bound.

    Args:
        c2w: ``[N, 3, 4]`` OpenCV camera-to-world.
        hwf: ``[N, 3]`` height, width, focal.
        near_far: ``[N, 2]``.
    """
    pts = [c2w[:, :, 3]]
    for u in (-0.5, 0.5):
        for v in (-0.5, 0.5):
            ray = np.stack([u * hwf[:, 1] / hwf[:, 2], v * hwf[:, 0] / hwf[:, 2], np.ones(len(hwf))], -1)
            world = np.einsum("nij,nj->ni", c2w[:, :, :3], ray)
            for k in (0, 1):
                pts.append(c2w[:, :, 3] + world * near_far[:, k : k + 1])
    allp = np.concatenate(pts)
    return float(np.linalg.norm(allp.max(0) - allp.min(0)))


def camera_extent(c2w: np.ndarray) -> float:
    c = c2w[:, :, 3]
    return float(np.linalg.norm(c[:, None] - c[None], axis=-1).max())


def scene_name(preset: str, seed: int, size: tuple[int, int] | None) -> str:
    return f"{preset}{seed}" + (f"-{size[0]}x{size[1]}" if size else "")


def generate(preset: str, seed: int, size: tuple[int, int] | None) -> tuple[Path, float]:
    truth = OUT / scene_name(preset, seed, size) / "truth"
    if (truth / "poses_bounds.npy").is_file():
        return truth, 0.0
    t0 = time.perf_counter()
    make_scene(preset, seed, truth, **({"width": size[0], "height": size[1]} if size else {}))
    return truth, time.perf_counter() - t0


def bench_one(preset: str, seed: int, size: tuple[int, int] | None, matcher: str, threads: int) -> dict:
    import pycolmap

    truth, t_gen = generate(preset, seed, size)
    c2w_t, hwf_t, nf_t = read_poses_bounds(truth / "poses_bounds.npy")
    names = sorted(p.name for p in (truth / "images").iterdir())
    out = OUT / scene_name(preset, seed, size) / matcher
    shutil.rmtree(out, ignore_errors=True)
    row: dict = {
        "bench": "import",
        "scene": scene_name(preset, seed, size),
        "preset": preset,
        "seed": seed,
        "matcher": matcher,
        "n_views": len(names),
        "size": [int(hwf_t[0, 1]), int(hwf_t[0, 0])],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {threads} COLMAP threads",
        "pycolmap": pycolmap.__version__,
        "generate_s": round(t_gen, 2),
    }
    t0 = time.perf_counter()
    try:
        import_scene(truth / "images", out, matcher=matcher, num_threads=threads, min_registered_fraction=0.0)
    except OVS3DError as e:
        row.update(error=str(e), total_s=round(time.perf_counter() - t0, 2), registered=0.0)
        return row
    row["total_s"] = round(time.perf_counter() - t0, 2)
    report = json.loads((out / "colmap" / "import.json").read_text())
    c2w_e, hwf_e, nf_e = read_poses_bounds(out / "poses_bounds.npy")
    idx = [names.index(n) for n in report["registered"]]
    err = compare_poses(c2w_e, c2w_t[idx])
    scene_ext = frustum_extent(c2w_t, hwf_t, nf_t)
    cam_ext = camera_extent(c2w_t)
    ratio = np.median(nf_e * err["scale"], axis=0) / np.median(nf_t[idx], axis=0)
    row.update(
        registered=len(idx) / len(names),
        n_registered=len(idx),
        dropped=report["dropped"],
        rot_median=float(np.median(err["rot_err_deg"])),
        rot_max=float(err["rot_err_deg"].max()),
        rot_aligned_median=float(np.median(err["rot_err_deg_aligned"])),
        rot_aligned_max=float(err["rot_err_deg_aligned"].max()),
        rel_rot_median=float(np.median(err["rel_rot_err_deg"])),
        center_pct_scene_median=float(100 * np.median(err["center_err"]) / scene_ext),
        center_pct_scene_max=float(100 * err["center_err"].max() / scene_ext),
        center_pct_cameras_median=float(100 * np.median(err["center_err"]) / cam_ext),
        scene_extent=scene_ext,
        camera_extent=cam_ext,
        near_ratio=float(ratio[0]),
        far_ratio=float(ratio[1]),
        focal_ratio=float(np.median(hwf_e[:, 2] / hwf_e[:, 1]) / np.median(hwf_t[:, 2] / hwf_t[:, 1])),
        points3D=report["points3D"],
        out_size=[report["width"], report["height"]],
        timings_s={k: round(v, 2) for k, v in report["timings_s"].items()},
    )
    return row


def table(rows: list[dict]) -> str:
    head = (
        "| scene | views | matcher | registered | rot med / max (°) | rot aligned med / max (°) | rel rot med (°) "
        "| centre med / max (% scene) | centre med (% cameras) | near / far ratio | points | "
        + " | ".join(STAGES)
        + " | total (s) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['scene']} | {r['n_views']} | {r['matcher']} | failed: {r['error']} |")
            continue
        t = r["timings_s"]
        cells = [
            r["scene"],
            str(r["n_views"]),
            r["matcher"],
            f"{r['n_registered']}/{r['n_views']}",
            f"{r['rot_median']:.2f} / {r['rot_max']:.2f}",
            f"{r['rot_aligned_median']:.2f} / {r['rot_aligned_max']:.2f}",
            f"{r['rel_rot_median']:.2f}",
            f"{r['center_pct_scene_median']:.2f} / {r['center_pct_scene_max']:.2f}",
            f"{r['center_pct_cameras_median']:.2f}",
            f"{r['near_ratio']:.2f} / {r['far_ratio']:.2f}",
            str(r["points3D"]),
            *(f"{t.get(k, 0):.1f}" for k in STAGES),
            f"{r['total_s']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """Per scene and matcher, over the repeats: registered range and the medians of the per-run medians."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["scene"], r["matcher"]), []).append(r)
    head = (
        "| scene | matcher | runs | registered (min-max) | rot med (°) | rot aligned med (°) | rel rot med (°) "
        "| centre med (% scene) | centre med (% cameras) | total (s) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (scene, matcher), rs in groups.items():
        ok = [r for r in rs if "error" not in r]
        regs = [r.get("n_registered", 0) for r in rs]
        n = rs[0]["n_views"]

        def med(key: str, ok: list[dict] = ok) -> str:
            return f"{np.median([r[key] for r in ok]):.2f}" if ok else "-"

        cells = [
            scene,
            matcher,
            f"{len(rs)} ({len(rs) - len(ok)} failed)" if len(ok) < len(rs) else str(len(rs)),
            f"{min(regs)}-{max(regs)} of {n}",
            med("rot_median"),
            med("rot_aligned_median"),
            med("rel_rot_median"),
            med("center_pct_scene_median"),
            med("center_pct_cameras_median"),
            f"{np.median([r['total_s'] for r in rs]):.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--scenes",
        nargs="+",
        default=["tabletop:0", "room:0", "orbit:0", "orbit:0:320x240"],
        help="preset:seed[:WxH] (default size of the preset unless WxH is given)",
    )
    ap.add_argument("--matchers", nargs="+", default=None, help="default: per preset (room: both)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="imports per scene and matcher (COLMAP varies with threads)")
    ap.add_argument("--no-save", action="store_true", help="do not append to the results file")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    set_quiet(True)
    rows = []
    for spec in args.scenes:
        parts = spec.split(":")
        preset, seed, size_s = parts[0], (parts[1:2] or ["0"])[0], (parts[2:3] or [""])[0]
        size = tuple(int(v) for v in size_s.split("x")) if size_s else None
        if preset not in PRESETS:
            print(f"skipping {spec}: preset {preset!r} does not exist here")
            continue
        for matcher in args.matchers or DEFAULT_MATCHERS.get(preset, ["exhaustive"]):
            for run in range(args.repeats):
                row = bench_one(preset, int(seed or 0), size, matcher, args.threads)
                row["run"] = run
                rows.append(row)
                keys = ("scene", "matcher", "run", "registered", "rot_median", "center_pct_scene_median", "total_s")
                print(json.dumps({k: row.get(k) for k in keys}), flush=True)
                if not args.no_save:
                    RESULTS.parent.mkdir(parents=True, exist_ok=True)
                    with RESULTS.open("a") as f:
                        f.write(json.dumps(row) + "\n")
    print()
    if rows:
        print(rows[0]["machine"] + f", pycolmap {rows[0]['pycolmap']}\n")
    print(table(rows))
    print()
    print(summary(rows))


if __name__ == "__main__":
    main()
