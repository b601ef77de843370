"""Per-label IoU tables from ``bench_3dovs.py`` records: one table per scene, one column per method/variant.

Usage::

    python bench/label_table.py bench/out/3dovs/results.jsonl --set hard-test --protocol 3dovs
    # several record files, and read-outs of the same runs from bench/refine_probe.py as their own column:
    python bench/label_table.py bench/out/test/results.jsonl --probe bench/results/issue8-round13-crf-test.jsonl \
        --probe-variant defaults --set hard-test --protocol holdout --per-label
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from method_table import records as read_records  # bench/ is the script's folder

RENAME: dict[str, str] = {}
"""Display names of methods (``--rename "OLD->NEW"``)."""


def _method(r: dict) -> str:
    if "ablation" in r:
        return RENAME.get(r["ablation"], r["ablation"])
    tag = "2D min-max" if r.get("normalize") else "2D raw"
    tag += f" s{r['scales'][0]}" if r.get("scales") else ""
    return RENAME.get(tag, tag)


def _selected(records: list[dict], scene_set: str, protocol: str) -> list[dict]:
    """The records of ``scene_set`` with per-label IoUs, of ``protocol`` (2D baselines belong to every protocol)."""
    return [
        r
        for r in records
        if r.get("set", "tabletop") == scene_set
        and "iou" in r
        and (r["protocol"] == protocol or r.get("method") == "2d-baseline")
    ]


def _by_scene(records: list[dict], scene_set: str, protocol: str) -> dict[int, dict[str, dict]]:
    """``{seed: {method: record}}`` of :func:`_selected`, in record order."""
    out: dict[int, dict[str, dict]] = {}
    for r in _selected(records, scene_set, protocol):
        out.setdefault(r["seed"], {})[_method(r)] = r
    return out


def _lost(ref: dict, rec: dict) -> list[str]:
    """Labels the 2D min-max map ``ref`` finds (IoU >= 0.3) that ``rec`` loses (IoU < 0.5)."""
    return [label for label in rec["iou"] if ref["iou"][label] >= 0.3 and rec["iou"][label] < 0.5]


def tables(records: list[dict], scene_set: str, protocol: str, methods: list[str] | None = None) -> str:
    """Markdown: per scene, rows = labels (smallest first, with their share), columns = methods."""
    out = []
    for seed, by in sorted(_by_scene(records, scene_set, protocol).items()):
        cols = [m for m in (methods or by) if m in by]
        if not cols:
            continue
        share = next(iter(by.values()))["share"]
        out.append(f"\n**{scene_set} seed {seed}, {protocol} protocol** (IoU per label, mean over annotated views)\n")
        out.append("| label | share | " + " | ".join(cols) + " |")
        out.append("|---|---|" + "---|" * len(cols))
        for label in sorted(share, key=share.get):
            vals = " | ".join(f"{by[m]['iou'][label]:.2f}" for m in cols)
            out.append(f"| {label} | {100 * share[label]:.2f}% | {vals} |")
        out.append("| **mIoU** | | " + " | ".join(f"**{by[m]['miou']:.3f}**" for m in cols) + " |")
    return "\n".join(out)


def probe_records(probe: list[dict], records: list[dict], variant: str, tag: str) -> list[dict]:
    """``bench/refine_probe.py`` read-outs as records: each probe line's run is matched to its fit's record
    (``name`` = the run's path below the output folder), whose IoUs and mIoU are replaced by the read-out's
    ``variant`` and whose ablation gets ``+<tag>``; accuracy is not in a probe line and becomes NaN."""
    by_name = {r["name"]: r for r in records if "name" in r and "ablation" in r}
    out = []
    for p in probe:
        run = p["run"].rstrip("/")
        rec = next((r for name, r in by_name.items() if run.endswith("/" + name)), None)
        if rec is None or variant not in p.get("per_label", {}):
            continue
        out.append(
            {
                **rec,
                "ablation": f"{rec['ablation']}+{tag}",
                "iou": p["per_label"][variant],
                "miou": p[variant],
                "accuracy": float("nan"),
            }
        )
    return out


def probe_runs(paths: list[Path], records: list[dict], variant: str = "defaults") -> list[dict]:
    """The ``variant`` read-outs in the ``bench/refine_probe.py`` files ``paths`` as records of their own, named
    ``<run>+crf`` (the defaults' runs read out as a run fitted today is), for name lookups."""
    probe = [p for f in paths for p in read_records(f)]
    return [{**r, "name": f"{r['name']}+crf"} for r in probe_records(probe, records, variant, "crf")]


def _fmt(x: float) -> str:
    return "—" if np.isnan(x) else f"{x:.3f}"


def summary(records: list[dict], scene_set: str, protocol: str, methods: list[str] | None = None) -> str:
    """Markdown: mean mIoU per method over the set's scenes, with per-seed values."""
    rows: dict[str, dict[int, dict]] = {}
    for r in _selected(records, scene_set, protocol):
        rows.setdefault(_method(r), {})[r["seed"]] = r
    lines = [
        "| method | scenes | mean mIoU | mean accuracy | per-scene mIoU (Δ vs 2D min-max) | lost labels |",
        "|---|---|---|---|---|---|",
    ]
    ref = rows.get(RENAME.get("2D min-max", "2D min-max"), {})
    for m in [m for m in (methods or rows) if m in rows]:
        rs = rows[m]
        per = " ".join(
            f"{s}: {rs[s]['miou']:.3f}" + (f" ({rs[s]['miou'] - ref[s]['miou']:+.2f})" if s in ref else "")
            for s in sorted(rs)
        )
        lost = [
            f"{s}/{label} {ref[s]['iou'][label]:.2f}→{rs[s]['iou'][label]:.2f}"
            for s in sorted(rs)
            if s in ref
            for label in _lost(ref[s], rs[s])
        ]
        lines.append(
            f"| {m} | {len(rs)} | {np.mean([r['miou'] for r in rs.values()]):.3f} | "
            f"{_fmt(np.mean([r['accuracy'] for r in rs.values()]))} | {per} | {len(lost)}: {', '.join(lost)} |"
        )
    return "\n".join(lines)


def scene_table(records: list[dict], scene_set: str, protocol: str, methods: list[str]) -> str:
    """Markdown: one row per scene of the set, the mIoU of each method, the last method's margin over the 2D
    min-max map and its labels lost (2D min-max IoU >= 0.3, below 0.5)."""
    rows = _by_scene(records, scene_set, protocol)
    ref_name, last = RENAME.get("2D min-max", "2D min-max"), methods[-1]
    lines = [
        f"| {scene_set} seed | " + " | ".join(methods) + f" | {last} over 2D min-max | labels lost |",
        "|---|" + "---|" * (len(methods) + 2),
    ]
    means: dict[str, list[float]] = {m: [] for m in methods}
    for seed in sorted(rows):
        by = rows[seed]
        vals = []
        for m in methods:
            vals.append(f"{by[m]['miou']:.3f}" if m in by else "—")
            if m in by:
                means[m].append(by[m]["miou"])
        ref, now = by.get(ref_name), by.get(last)
        margin = f"{now['miou'] - ref['miou']:+.3f}" if ref and now else "—"
        lost = len(_lost(ref, now)) if ref and now else "—"
        lines.append(f"| {seed} | " + " | ".join(vals) + f" | {margin} | {lost} |")
    lines.append(
        f"| mean ({len(rows)}) | "
        + " | ".join(
            f"{np.mean(v):.3f}" + ("" if len(v) == len(rows) else f" ({len(v)})") if v else "—" for v in means.values()
        )
        + " | | |"
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, nargs="+")
    ap.add_argument("--probe", type=Path, nargs="*", default=[], help="bench/refine_probe.py records of the same runs")
    ap.add_argument("--probe-variant", default="defaults", help="which of the probe's read-outs to show")
    ap.add_argument("--probe-tag", default="crf", help="appended to the run's ablation name for the read-out")
    ap.add_argument("--set", dest="scene_set", default="tabletop")
    ap.add_argument("--protocol", default="3dovs")
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--per-label", action="store_true")
    ap.add_argument("--scene-table", action="store_true", help="one row per scene instead of one per method")
    ap.add_argument("--seeds", type=int, nargs="*", default=None, help="only these seeds")
    ap.add_argument("--rename", nargs="*", default=[], help="OLD->NEW display names (methods are then named NEW)")
    args = ap.parse_args()
    RENAME.update(dict(x.split("->", 1) for x in args.rename))
    records = [r for f in args.results for r in read_records(f)]
    probe = [p for f in args.probe for p in read_records(f)]
    records += probe_records(probe, records, args.probe_variant, args.probe_tag)
    if args.seeds:
        records = [r for r in records if r.get("seed") in args.seeds]
    if args.scene_table:
        print(scene_table(records, args.scene_set, args.protocol, args.methods or []))
    else:
        print(summary(records, args.scene_set, args.protocol, args.methods))
    if args.per_label:
        print(tables(records, args.scene_set, args.protocol, args.methods))


if __name__ == "__main__":
    main()
