"""HTML run report (issue 11): size and build time of ``ovs3d.report.build_report`` on finished bench runs.

Only runs that already have ``eval/metrics.json`` are used (the report would otherwise evaluate them), and
each report is written to ``--out/<name>/index.html``, never into the run folder; the script checks that the
run folder's files are unchanged afterwards. Imports (torch, matplotlib) are done before the clock starts;
each run is built ``--repeat`` times and the fastest time is kept.

Prints a markdown table (run, method, bytes, seconds, images) and appends one JSON line per run to
``bench/results/issue11-report.jsonl``.

Usage::

    .venv/bin/python bench/bench_report.py [--runs RUN ...] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DEFAULT_RUNS = {
    "3dovs-tabletop0": ROOT / "out/3dovs/seed0/3dovs/full",
    "3dovs-room0-holdout": ROOT / "out/3dovs/room/seed0/holdout/full",
    "ovnerf-room0-holdout": ROOT / "out/3dovs/room/seed0/holdout/ovnerf",
    "lerf-room0-holdout": ROOT / "out/lerf/room-seed0/holdout/lerf",
    "lerf-tabletop5": ROOT / "out/lerf-val/tabletop-seed5/3dovs/lerf",
}
RESULTS = ROOT / "results" / "issue11-report.jsonl"


def _snapshot(run: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every file of a run folder."""
    return sorted(
        (str(p.relative_to(run)), p.stat().st_size, p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()
    )


def measure(name: str, run: Path, out_root: Path, repeat: int) -> dict | None:
    """Build the report of one run ``repeat`` times; its size, best time and image count, or None if skipped."""
    from ovs3d.report import build_report

    if not (run / "eval" / "metrics.json").is_file():
        print(f"skip {name}: {run} has no eval/metrics.json")
        return None
    before = _snapshot(run)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        path = build_report(run, out=out_root / name)
        times.append(time.perf_counter() - t0)
    if _snapshot(run) != before:
        raise RuntimeError(f"building the report changed files of {run}")
    page = path.read_text()
    text_only = re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", "", page)
    config = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    return {
        "name": name,
        "run": str(run.relative_to(ROOT.parent)) if run.is_relative_to(ROOT.parent) else str(run),
        "method": config["fit"].get("method"),
        "labels": len(config.get("classes", [])),
        "views": len(metrics.get("per_view", {})),
        "bytes": path.stat().st_size,
        "html_bytes_without_images": len(text_only.encode("utf-8")),
        "seconds": round(min(times), 3),
        "seconds_all": [round(t, 3) for t in times],
        "images": page.count("<img "),
        "report": str(path),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="*", type=Path, help="run folders (default: five finished bench runs)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "report-bench", help="where reports go")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = {p.name: p.resolve() for p in args.runs} if args.runs else DEFAULT_RUNS

    t0 = time.perf_counter()
    import matplotlib.backends.backend_agg  # noqa: F401 - import cost kept out of the per-run times

    import ovs3d.report  # noqa: F401
    import ovs3d.run  # noqa: F401

    import_seconds = time.perf_counter() - t0
    rows = [r for name, run in runs.items() if (r := measure(name, run, args.out, args.repeat))]
    print(f"imports (torch, ovs3d, matplotlib): {import_seconds:.2f} s, not counted below; best of {args.repeat}\n")
    print("| run | method | labels | views | bytes | without images | seconds | images |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['name']} | {r['method']} | {r['labels']} | {r['views']} | {r['bytes']:,} | "
            f"{r['html_bytes_without_images']:,} | {r['seconds']:.2f} | {r['images']} |"
        )
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    host = {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        for r in rows:
            f.write(json.dumps({"time": stamp, **r, "repeat": args.repeat, "import_seconds": import_seconds, **host}))
            f.write("\n")
    print(f"\nappended {len(rows)} lines to {RESULTS}")


if __name__ == "__main__":
    main()
