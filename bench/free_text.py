"""Free-text queries that are not labels (issue 10): paraphrases and parts drawn from each scene's own labels,
asked of every semantic run of a scene through ``ovs3d query``'s functions; what comes back, with pictures.

For a scene with labels ``L``, five texts are made from its object labels (cycling through them, so different
objects are asked about): ``"a photo of <label>"`` (paraphrase), ``"<head noun>"`` (the label's last word),
``"the top of <label>"`` (part), ``"<label> on the table"`` (context), ``"part of <label>"`` (part). Each
text keeps its source label; per (text, view) we record the highest relevancy, whether the highest pixel lies
in the source label's mask (localisation), recall (SPEC §5, range reading) against that mask, and the same for
the source label asked by its own name. One picture per scene: rows = texts (and the source label), columns =
runs, each cell the heat map on one annotated view.

Usage::

    python bench/free_text.py --scene bench/out/3dovs/tabletop-0 --runs R1 R2 R3 --out bench/out/free_text/t0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

STOP = {"a", "an", "the", "of", "in", "on"}
TEMPLATES = ("a photo of {}", "{head}", "the top of {}", "{} on the table", "part of {}")


def texts_for(labels: list[str], objects: list[str]) -> list[tuple[str, str]]:
    """Five ``(text, source label)`` pairs from a scene's object labels."""
    out = []
    for i, template in enumerate(TEMPLATES):
        src = objects[i % len(objects)]
        head = [w for w in src.replace("'s", "").split() if w.lower() not in STOP][-1]
        out.append((template.format(src, head=head), src))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", type=Path, required=True)
    ap.add_argument("--runs", type=Path, nargs="+", required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    import torch

    from ovs3d.eval.metrics import localization, query_recall
    from ovs3d.eval.visualize import relevancy_heatmap
    from ovs3d.io.loader import load_scene
    from ovs3d.query import load_run, view_relevancy
    from ovs3d.utils.console import set_quiet
    from ovs3d.utils.files import atomic_write_json

    torch.set_num_threads(2)
    set_quiet(True)
    scene = load_scene(args.scene)
    labels = list(scene.classes)
    shares = {c: float(np.mean([scene.load_masks(v)[k].mean() for v in scene.annotated])) for k, c in enumerate(labels)}
    objects = sorted([c for c in labels if shares[c] < 0.15], key=lambda c: shares[c]) or labels
    pairs = texts_for(labels, objects)
    records, cells = [], {}
    view0 = list(scene.annotated)[0]
    for run in args.runs:
        loaded = load_run(run)
        ds = loaded.cfg.features.semantic_downscale
        texts = [t for t, _ in pairs] + sorted({s for _, s in pairs})
        queries = loaded.encode(texts)
        for v in scene.annotated:
            rel, rgb = view_relevancy(loaded, v, queries)
            gt = scene.load_masks(v, ds)
            for q, text in enumerate(texts):
                src = dict(pairs).get(text, text)
                mask = gt[labels.index(src)]
                cells[(str(run), text, v)] = relevancy_heatmap(rel[..., q], np.clip(rgb, 0, 1))
                if not mask.any():
                    continue
                records.append({
                    "run": str(run), "method": loaded.cfg.method, "view": v, "text": text, "source": src,
                    "is_label": text in labels, "max": float(rel[..., q].max()),
                    "localization": localization(rel[..., q], mask), "recall": query_recall(rel[..., q], mask),
                })  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "free_text.json", {"scene": str(args.scene), "pairs": pairs, "records": records})
    # picture: rows = texts then their source labels, columns = runs; each row on the first annotated view
    # that shows its source label
    rows = [t for t, _ in pairs] + sorted({s for _, s in pairs})
    shown = {}
    for t in rows:
        src = labels.index(dict(pairs).get(t, t))
        shown[t] = next((v for v in scene.annotated if scene.load_masks(v)[src].any()), view0)
    _figure(args.out / "free_text.png", rows, args.runs, lambda t, r: cells[(str(r), t, shown[t])], shown)
    # summary table
    print(f"scene {args.scene}; pictured views {shown}; columns: {', '.join(str(r) for r in args.runs)}")
    print("| text | source label | " + " | ".join(f"{Path(r).name} loc / recall / max" for r in args.runs) + " |")
    print("|---|---|" + "---|" * len(args.runs))
    for t in rows:
        src = dict(pairs).get(t, t)
        cols = []
        for r in args.runs:
            rs = [x for x in records if x["run"] == str(r) and x["text"] == t]
            loc = np.mean([x["localization"] for x in rs])
            rec = np.mean([x["recall"] for x in rs])
            mx = np.mean([x["max"] for x in rs])
            cols.append(f"{loc:.2f} / {rec:.2f} / {mx:.2f}")
        print(f"| {t} | {src} | " + " | ".join(cols) + " |")


def _figure(path: Path, rows: list[str], runs: list[Path], cell, shown: dict) -> None:
    """A labelled grid: one row per text (with its pictured view), one column per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = cell(rows[0], runs[0]).shape[:2]
    fig, axes = plt.subplots(len(rows), len(runs), figsize=(1.0 + 2.2 * len(runs), 0.3 + 2.2 * h / w * len(rows)))
    axes = np.atleast_2d(axes)
    for i, t in enumerate(rows):
        for j, r in enumerate(runs):
            ax = axes[i, j]
            ax.imshow(cell(t, r))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(Path(r).name.replace("+semantic.", " ").replace("full", "3dovs"), fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{t}\n(view {shown[t]})", fontsize=7)
    title = "relevancy (turbo: 0 blue .. 1 red) of texts that are not labels, then of their source labels"
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
