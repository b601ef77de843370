"""Markdown tables of ``bench/results/issue11-export.jsonl`` (the last row per run and setting).

Usage::

    python bench/export_table.py [--split test|validation]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "issue11-export.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=["test", "validation"], default="test")
    args = ap.parse_args()
    rows: dict[tuple, dict] = {}
    for line in RESULTS.read_text().splitlines():
        r = json.loads(line)
        if r["split"] == args.split:
            # rows from before the free-space filter and the voxel flag existed ran with 0 and 1.0
            rows[(r["name"], r.get("free_space_views", 0), r.get("voxel", 1.0))] = r
    print(
        "| run | method | kind | views fused | points | coverage | agreement with own 2D | accuracy 2D | "
        "accuracy 3D | Δ | mIoU 2D | mIoU 3D | export s | points.ply | meshes |"
    )
    print("|" + "---|" * 15)
    for (name, fs, vx), r in sorted(rows.items()):
        label = name + ("" if fs == 0 else f" (free-space {fs})") + ("" if vx == 1.0 else f" (voxel {vx})")
        print(
            f"| {label} | {r['method']} | {r['scene_kind']}{' holdout' if r['holdout'] else ''} | {r['views_fused']} "
            f"| {r['points']:,} | {r['coverage']:.3f} | {r['agreement']:.3f} | {r['accuracy_2d']:.3f} "
            f"| {r['accuracy_3d']:.3f} | {r['accuracy_3d'] - r['accuracy_2d']:+.3f} | {r['miou_2d']:.3f} "
            f"| {r['miou_3d']:.3f} | {r['seconds_export']:.0f} | {r['bytes_points'] / 2**20:.1f} MiB "
            f"| {r['meshes']} ({r['bytes_meshes'] / 2**20:.1f} MiB) |"
        )


if __name__ == "__main__":
    main()
