"""Issue 9: which room labels does the 2D evidence itself never find, and what do they cost the 3D result?

For each room (scene folder + a finished ``ovnerf`` run on it, novel-view protocol), per label:

- ``2d``: IoU (OV-NeRF protocol, mean over the annotated views where the label is present) of the 2D class map
  OV-NeRF starts from — argmax of the pixel CLIP relevancy min–max normalised per scale and label over the
  scene, scales averaged — and ``2d_rsr`` of the same after RSR with the scene's mask proposals (no training);
- ``3d``: the run's IoU;
- ``never_found``: the labels whose 2D IoU is below 0.1 with and without RSR.

It also scores the run with those labels left out of every view's mean (``miou_without_never_found``): what
the 3D stage reaches on the labels its evidence holds. Nothing is chosen from it; it is a diagnosis.

Usage::

    python bench/room_evidence.py SCENE:RUN [SCENE:RUN ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ovs3d import losses as L
from ovs3d.eval.metrics import ovnerf_aggregate, ovnerf_view_metrics
from ovs3d.foundation.features import FeatureConfig, clip_features, mask_proposals
from ovs3d.foundation.registry import build_backends
from ovs3d.io.loader import load_scene
from ovs3d.methods.ovnerf.rsr import region_vote
from ovs3d.methods.reconstruction import CHECKPOINT_NAME, load_trained_field
from ovs3d.methods.registry import get_method
from ovs3d.methods.targets import normalized_clip_targets
from ovs3d.run import fit_config_from_run

NEVER = 0.1


def two_d_maps(scene, cfg: FeatureConfig) -> dict[str, dict[int, np.ndarray]]:
    """Annotated view -> ``[h, w]`` 2D class map, scene-normalised (``2d``) and after RSR (``2d_rsr``)."""
    backends = build_backends({"clip", "masks"}, {"clip": "auto", "masks": "auto"}, scene.root, scene.has_sim)
    feats = clip_features(scene, backends["clip"], scene.train_views(False), cfg)
    ids = list(feats.view_ids)
    text = torch.nn.functional.normalize(backends["clip"].encode_text(list(scene.classes)).float(), dim=-1)
    raw = torch.stack([L.segmentation_logits(normalized_clip_targets(feats[j]).float(), text) for j in range(len(ids))])
    labels = L.minmax_normalize(raw, dims=(0, 1)).mean(2).argmax(-1)  # [V, h*w]
    props = mask_proposals(scene, backends["masks"], ids, cfg)
    w, h = scene.image_size(cfg.semantic_downscale)
    out: dict[str, dict[int, np.ndarray]] = {"2d": {}, "2d_rsr": {}}
    for v in scene.annotated:
        j = ids.index(v)
        cm = labels[j].reshape(h, w)
        out["2d"][v] = cm.numpy()
        out["2d_rsr"][v] = region_vote(cm, props[j], "keep").numpy()
    return out


def without(views: dict[int, dict], drop: set[str]) -> float:
    """OV-NeRF mIoU with the labels ``drop`` left out of every view's mean."""
    means = []
    for m in views.values():
        kept = [x for c, x in m["iou"].items() if x is not None and c not in drop]
        if kept:
            means.append(float(np.mean(kept)))
    return float(np.mean(means)) if means else 0.0


@torch.no_grad()
def diagnose(scene_dir: Path, run: Path) -> dict:
    scene = load_scene(scene_dir)
    run_cfg = fit_config_from_run(run)
    classes = list(scene.classes)
    maps = two_d_maps(scene, run_cfg.features)
    method = get_method(run_cfg.method).load(
        load_trained_field(run / "checkpoints" / CHECKPOINT_NAME, "cpu"), run, "cpu"
    )
    ds = run_cfg.features.semantic_downscale
    maps["3d"] = {v: method.predict_labels(method.render_view(scene, v, ds)).numpy() for v in scene.annotated}
    views = {
        k: {v: ovnerf_view_metrics(scene.load_masks(v, ds), m[v], classes) for v in scene.annotated}
        for k, m in maps.items()
    }
    agg = {k: ovnerf_aggregate(vv, classes) for k, vv in views.items()}
    never = {
        c
        for c in classes
        if agg["2d"]["class_iou"][c] is not None
        and agg["2d"]["class_iou"][c] < NEVER
        and (agg["2d_rsr"]["class_iou"][c] or 0.0) < NEVER
    }
    return {
        "scene": scene_dir.name,
        "run": str(run),
        "miou": {k: round(a["miou"], 4) for k, a in agg.items()},
        "never_found": sorted(never),
        "miou_without_never_found": {k: round(without(vv, never), 4) for k, vv in views.items()},
        "class_iou": {
            c: {k: (None if a["class_iou"][c] is None else round(a["class_iou"][c], 3)) for k, a in agg.items()}
            for c in classes
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", help="SCENE:RUN")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for pair in args.pairs:
        scene, _, run = pair.partition(":")
        print(json.dumps(diagnose(Path(scene), Path(run))), flush=True)


if __name__ == "__main__":
    main()
