"""2D probe for issue 8: which per-pixel rule for choosing a CLIP scale recovers the smallest window's gain.

On the annotated views of each scene, from the cached multi-scale pixel CLIP features, each label's relevancy is
min–max normalised per view *and per scale*, and every pixel takes its label from:

* ``avg``: the scales averaged (close to ``baseline --normalize``, which normalises after averaging);
* ``s<i>``: scale ``i`` alone (0 = largest window);
* ``margin``: the scale whose normalised relevancy separates its best label most from its second
  (top-1 minus top-2) — a rule that reads only the evidence, not the backend: a small window that shows
  only part of something ambiguous has a low margin and loses to a larger one;
* ``top1``: the scale with the highest normalised relevancy for any label.

mIoU per SPEC §5 (3D-OVS protocol). No training; seconds per scene once the features are cached.

Usage::

    python bench/scale_choice_probe.py bench/out/val/hard-val-1000 bench/out/val/tabletop-5 ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ovs3d.eval.metrics import aggregate, segmentation_view_metrics
from ovs3d.foundation.features import FeatureConfig, clip_features
from ovs3d.foundation.registry import build_clip, resolve_spec
from ovs3d.io.loader import load_scene
from ovs3d.losses import minmax_normalize


def scale_relevancy(features: np.ndarray, text: torch.Tensor) -> torch.Tensor:
    """``[S, H, W, C]`` relevancy of each scale, min–max normalised over the view per scale and label (Eq. 7)."""
    f = F.normalize(torch.from_numpy(np.asarray(features, dtype=np.float32)), dim=-1)  # [S, H, W, D]
    return minmax_normalize(f @ text.T, dims=(1, 2))


def choose(rel: torch.Tensor, rule: str) -> np.ndarray:
    """``[H, W]`` labels from ``[S, H, W, C]`` normalised relevancy under ``rule``."""
    if rule == "avg":
        return rel.mean(0).argmax(-1).numpy()
    if rule.startswith("s"):
        return rel[int(rule[1:])].argmax(-1).numpy()
    top2 = rel.topk(2, dim=-1).values  # [S, H, W, 2]
    score = top2[..., 0] - top2[..., 1] if rule == "margin" else top2[..., 0]
    pick = score.argmax(0)  # [H, W]
    labels = rel.argmax(-1)  # [S, H, W]
    return labels.gather(0, pick[None])[0].numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenes", type=Path, nargs="+")
    ap.add_argument("--rules", nargs="+", default=["avg", "s0", "s1", "s2", "margin", "top1"])
    args = ap.parse_args()
    cfg = FeatureConfig()
    means = {r: [] for r in args.rules}
    for scene_dir in args.scenes:
        scene = load_scene(scene_dir)
        clip = build_clip(resolve_spec("auto", scene.has_sim, "clip"), scene.root, device="cpu")
        text = F.normalize(clip.encode_text(list(scene.classes)).float().cpu(), dim=-1)
        feats = clip_features(scene, clip, list(scene.annotated), cfg)
        row = {"scene": str(scene_dir)}
        for rule in args.rules:
            views = {}
            for j, v in enumerate(feats.view_ids):
                gt = scene.load_masks(v, cfg.semantic_downscale)
                pred = choose(scale_relevancy(feats[j], text), rule)
                views[v] = segmentation_view_metrics(gt, pred, scene.classes)
            row[rule] = round(aggregate(views, scene.classes)["miou"], 4)
            means[rule].append(row[rule])
        print(json.dumps(row), flush=True)
    print(json.dumps({"mean": {r: round(float(np.mean(v)), 4) for r, v in means.items()}}))


if __name__ == "__main__":
    main()
