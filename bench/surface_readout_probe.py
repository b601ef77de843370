"""Issue 8 probe: does a pixel's label drawn from its blended feature paint a rim around objects that its
surface sample would not?

For each finished ``3dovs`` run, every annotated view's pixel rays (at the semantic resolution, their cached
heaviest samples as training uses them) are read out three ways and scored (argmax, no CRF):

- ``blend``: the compositing-weighted sum of the samples' CLIP features (the method's render, Eq. 1);
- ``surface``: the feature of the ray's heaviest sample alone;
- ``vote``: each sample's own label, weighted by its compositing weight.

Usage::

    python bench/surface_readout_probe.py RUN [RUN ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ovs3d.eval.metrics import aggregate, segmentation_view_metrics
from ovs3d.methods.reconstruction import CHECKPOINT_NAME, load_trained_field
from ovs3d.methods.registry import get_method
from ovs3d.render.cached import view_pixel_samples
from ovs3d.run import _load_scene, fit_config_from_run

READOUTS = ("blend", "surface", "vote")


@torch.no_grad()
def probe(run: Path) -> dict:
    cfg = fit_config_from_run(run)
    scene = _load_scene(cfg.scene, cfg.kind)
    trained = load_trained_field(run / "checkpoints" / CHECKPOINT_NAME, "cpu")
    method = get_method(cfg.method).load(trained, run, "cpu")
    method.heads.eval()
    ds, classes = cfg.features.semantic_downscale, list(scene.classes)
    w, h = scene.image_size(ds)
    views: dict[str, dict] = {k: {} for k in READOUTS}
    for v in scene.annotated:
        s = view_pixel_samples(trained, scene, [v], ds, method.cfg.samples_per_ray, desc="rendering")
        n_rays, k = s.weights.shape
        xyz = s.xyz.reshape(-1, 3)
        feats = method.heads.features(trained.field.app_features(xyz), xyz).reshape(n_rays, k, -1).float()  # [R, K, D]
        w8 = s.weights.float()  # [R, K]
        logits = {
            "blend": method.prediction_logits({"features": (w8[..., None] * feats).sum(1)}),
            "surface": method.prediction_logits({"features": feats[torch.arange(n_rays), w8.argmax(1)]}),
        }
        per_sample = method.prediction_logits({"features": feats.reshape(n_rays * k, -1)}).reshape(n_rays, k, -1)
        logits["vote"] = torch.zeros(n_rays, len(classes)).scatter_add_(1, per_sample.argmax(-1), w8)
        gt = scene.load_masks(v, ds)
        for name in READOUTS:
            pred = logits[name].argmax(-1).reshape(h, w).numpy().astype(np.int64)
            views[name][v] = segmentation_view_metrics(gt, pred, classes)
    out: dict = {"run": str(run)}
    for name in READOUTS:
        agg = aggregate(views[name], classes)
        out[name] = round(agg["miou"], 4)
        out[f"{name}_iou"] = {c: round(x, 3) for c, x in agg["class_iou"].items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for run in args.runs:
        print(json.dumps(probe(run)), flush=True)


if __name__ == "__main__":
    main()
