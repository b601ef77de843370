"""Per-label diagnosis of a finished 3D-OVS run (issue 8): where does a label get lost?

For every annotated view that trained the field (3D-OVS protocol) it compares, per GT label:

- ``pred``: IoU of the run's prediction (argmax of cosine to the class texts of the rendered feature);
- ``target``: IoU of the argmax of the RDA target the field was trained towards, ``Σ_s S_s R̄_s`` with the
  *rendered* selection ``S`` (what the Selection Volume chose);
- ``target_s<i>``: the same with all weight on scale ``i`` (0 = largest patch);
- ``clip``: IoU of the argmax of cosine of the selection-mixed *CLIP feature* target (what the feature loss
  pulls towards, without RDA);
- ``sel``: the mean rendered selection weights on the label's GT pixels.

If ``target`` finds a label and ``pred`` does not, the field failed to fit its target; if ``target`` misses it
while ``target_s2`` finds it, the selection chose the wrong scale.

Usage::

    python bench/diagnose_labels.py RUN [RUN ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ovs3d import losses as L
from ovs3d.eval.metrics import masks_to_labels
from ovs3d.foundation.features import clip_features
from ovs3d.methods.reconstruction import CHECKPOINT_NAME, load_trained_field
from ovs3d.methods.registry import get_method
from ovs3d.methods.targets import normalized_clip_targets
from ovs3d.run import _backends, _load_scene, fit_config_from_run


def _iou(gt: np.ndarray, pred: np.ndarray, c: int) -> float:
    g, p = gt == c, pred == c
    union = (g | p).sum()
    return float((g & p).sum() / union) if union else 0.0


@torch.no_grad()
def diagnose(run: Path) -> dict:
    cfg = fit_config_from_run(run)
    scene = _load_scene(cfg.scene, cfg.kind)
    trained = load_trained_field(run / "checkpoints" / CHECKPOINT_NAME, "cpu")
    method = get_method(cfg.method).load(trained, run, "cpu")
    text = method.text
    clip = _backends(cfg, scene, "cpu", {"clip"})["clip"]
    views = [v for v in scene.annotated if v in scene.train_views(cfg.holdout)]
    ds = cfg.features.semantic_downscale
    feats = clip_features(scene, clip, views, cfg.features, Path(cfg.cache_dir) if cfg.cache_dir else None)
    classes = list(scene.classes)
    acc: dict[str, dict[str, list]] = {c: {} for c in classes}
    for j, v in enumerate(feats.view_ids):
        out = method.render_view(scene, v, ds)
        h, w = out["features"].shape[:2]
        gt = masks_to_labels(scene.load_masks(v, ds))  # [H, W], -1 = none
        t = normalized_clip_targets(feats[j]).float()  # [h*w, S, D]
        rel = L.minmax_normalize(L.segmentation_logits(t, text)[None], dims=(1,))[0]  # [h*w, S, C]
        sel = out["selection"].reshape(-1, rel.shape[1])  # [h*w, S]
        maps = {
            "pred": method.predict_labels(out).numpy(),
            "target": L.relevancy_targets(rel, sel).argmax(-1).reshape(h, w).numpy(),
            "clip": L.segmentation_logits(L.selected_features(t, sel), text).argmax(-1).reshape(h, w).numpy(),
        }
        for s in range(rel.shape[1]):
            maps[f"target_s{s}"] = rel[:, s].argmax(-1).reshape(h, w).numpy()
        for c, name in enumerate(classes):
            for key, m in maps.items():
                acc[name].setdefault(key, []).append(_iou(gt, m, c))
            on = torch.from_numpy((gt == c).reshape(-1))
            if on.any():
                acc[name].setdefault("sel", []).append(sel[on].mean(0).numpy())
            acc[name].setdefault("share", []).append(float((gt == c).mean()))
    rows = {}
    for name, d in acc.items():
        rows[name] = {
            k: (np.mean(v, 0).round(3).tolist() if k == "sel" else round(float(np.mean(v)), 3)) for k, v in d.items()
        }
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for run in args.runs:
        rows = diagnose(run)
        print(f"\n## {run}")
        keys = [k for k in next(iter(rows.values())) if k not in ("sel", "share")]
        print("| label | share | " + " | ".join(keys) + " | selection (large..small) |")
        for name, r in sorted(rows.items(), key=lambda x: x[1]["share"]):
            vals = " | ".join(f"{r[k]:.2f}" for k in keys)
            print(f"| {name} | {100 * r['share']:.2f}% | {vals} | {r.get('sel')} |")
        (run / "eval" / "diagnosis.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
