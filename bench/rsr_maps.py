"""Issue 9 validation: which 2D class maps should RSR start from? Scores 2D maps (no training) on scenes.

For every view of a scene (3D-OVS protocol: all views have features), the per-pixel class map is the argmax
over labels of the multi-scale CLIP relevancy, normalised one of three ways, scales averaged:

* ``raw``: the cosines themselves (OV-NeRF's "2D CLIP" map read literally);
* ``view``: min-max per view, scale and label (3D-OVS Eq. 7; it assumes every label is in every view);
* ``scene``: min-max per scale and label over all the scene's views (assumes only that every label is
  somewhere in the scene, which holds: the labels are the scene's prompts).

Each map is scored raw and after RSR with the scene's mask proposals (``--masks``), on the annotated views,
under both protocols of SPEC §5. Nothing here trains; it chose OV-NeRF's ``rsr_relevancy`` default. A last
row per scene, ``crop``, is OV-NeRF's ``rsr_class="crop"``: every region of the masks' panoptic partition
takes the class of its own CLIP crop (scene-normalised per label), pixels in no region keep their ``scene``
class (``rsr_uncovered="keep"``, as the other RSR rows).

Usage::

    python bench/rsr_maps.py --scenes bench/out/3dovs/tabletop-5 bench/out/rooms/room-10 --out bench/out/rsr_maps.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ovs3d import losses as L
from ovs3d.eval.metrics import aggregate, ovnerf_aggregate, ovnerf_view_metrics, segmentation_view_metrics
from ovs3d.foundation.features import FeatureConfig, clip_features, mask_proposals
from ovs3d.foundation.pyramid import PyramidConfig, segment_tiles
from ovs3d.foundation.registry import build_backends
from ovs3d.io.loader import load_scene
from ovs3d.methods.ovnerf.rsr import region_crop_classes, region_vote
from ovs3d.methods.targets import normalized_clip_targets


def score(scene_dir: Path, masks_spec: str) -> list[dict]:
    scene = load_scene(scene_dir)
    cfg = FeatureConfig()
    backends = build_backends({"clip", "masks"}, {"clip": "auto", "masks": masks_spec}, scene.root, scene.has_sim)
    views = scene.train_views(False)
    feats = clip_features(scene, backends["clip"], views, cfg)
    props = mask_proposals(scene, backends["masks"], list(feats.view_ids), cfg)
    text = torch.nn.functional.normalize(backends["clip"].encode_text(list(scene.classes)).float(), dim=-1)
    raw = torch.stack(
        [L.segmentation_logits(normalized_clip_targets(feats[j]).float(), text) for j in range(len(feats))]
    )
    maps = {  # [V, h*w, S, C]
        "raw": raw,
        "view": L.minmax_normalize(raw, dims=(1,)),
        "scene": L.minmax_normalize(raw, dims=(0, 1)),
    }
    w, h = scene.image_size(cfg.semantic_downscale)
    ids = list(feats.view_ids)
    seg = segment_tiles(
        scene, backends["clip"], backends["masks"], ids, PyramidConfig(downscale=cfg.semantic_downscale)
    )
    cosines = [
        L.segmentation_logits(torch.from_numpy(np.asarray(seg.embeddings[j], np.float32)), text)
        for j in range(len(ids))
    ]
    scene_classes = maps["scene"].mean(2).argmax(-1).reshape(-1, h, w)  # [V, h, w]
    crop = region_crop_classes([seg.partition(j) for j in range(len(ids))], cosines, scene_classes)
    out = []
    for name, rel in (*maps.items(), ("crop", None)):
        classes = crop.reshape(len(ids), -1) if rel is None else rel.mean(2).argmax(-1)  # [V, h*w]
        for rsr in (False,) if rel is None else (False, True):
            per3, pero = {}, {}
            for v in scene.annotated:
                j = ids.index(v)
                cm = classes[j].reshape(h, w)
                if rsr:
                    cm = region_vote(cm, props[j], "keep")
                gt = scene.load_masks(v, cfg.semantic_downscale)
                per3[v] = segmentation_view_metrics(gt, cm.numpy(), scene.classes)
                pero[v] = ovnerf_view_metrics(gt, cm.numpy(), scene.classes)
            a3, ao = aggregate(per3, scene.classes), ovnerf_aggregate(pero, scene.classes)
            out.append(
                {
                    "scene": scene_dir.name,
                    "relevancy": name,
                    "rsr": rsr,
                    "miou_3dovs": a3["miou"],
                    "miou_ovnerf": ao["miou"],
                }
            )
            print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=Path, nargs="+", required=True)
    ap.add_argument("--masks", default="sim")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [r for s in args.scenes for r in score(s, args.masks)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for key in ("miou_3dovs", "miou_ovnerf"):
        print(f"\nmean {key} over {len(args.scenes)} scenes")
        for name in ("raw", "view", "scene", "crop"):
            for rsr in (False,) if name == "crop" else (False, True):
                vals = [r[key] for r in rows if r["relevancy"] == name and r["rsr"] == rsr]
                print(f"  {name:6s} rsr={rsr!s:5s} {np.mean(vals):.3f}  ({' '.join(f'{x:.3f}' for x in vals)})")


if __name__ == "__main__":
    main()
