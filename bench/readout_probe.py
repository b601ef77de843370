"""Issue 8 probe: would reading labels differently from a finished 3dovs run's rendered features help?

A run predicts the argmax of the raw cosines of its rendered CLIP feature with the labels. This script scores
the annotated views of finished runs with other read-outs, all fitted on the training views only (every second
one, rendered at the semantic resolution), nothing read from the annotated views:

- ``minmax``: each label's cosine min–max normalised over the training views' renders (Eq. 7 over the scene);
- ``p1p99``: the same between the 1st and 99th percentile; ``p50max``: between the median and the maximum;
- ``affine`` / ``affine_bal``: a per-label scale and bias fitted (cross-entropy at logit scale 100; plain or
  class-balanced) to the per-view min–max pseudo-labels the run trained with (argmax of the scale-averaged
  ``R̄``);
- ``bias`` / ``bias_bal``: the same with biases only;
- ``center``: each label's cosine minus its mean over the training renders (the rendered features centred);
- ``center_clip``: each label's cosine minus ``μ·t`` with ``μ`` the mean pixel CLIP feature of all training
  views and scales — what ``--semantic.label-centering`` predicts (round 7).

Prints one JSON line per run with the mIoU (3D-OVS protocol) of each read-out.

Usage::

    python bench/readout_probe.py RUN [RUN ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ovs3d import losses as L
from ovs3d.eval.metrics import aggregate, segmentation_view_metrics
from ovs3d.foundation.features import clip_features
from ovs3d.methods.reconstruction import CHECKPOINT_NAME, load_trained_field
from ovs3d.methods.registry import get_method
from ovs3d.methods.targets import normalized_clip_targets
from ovs3d.methods.threedovs.method import mean_feature
from ovs3d.run import _backends, _load_scene, fit_config_from_run

SCALE = 100.0  # CLIP's logit scale


def fit_readout(logits, labels, n_classes: int, balanced: bool, bias_only: bool, steps: int) -> tuple:
    """Per-label ``(log scale, bias)`` ``[C]`` each, fitted by Adam on the cross-entropy to ``labels``."""
    log_a = torch.zeros(n_classes, requires_grad=not bias_only)
    b = torch.zeros(n_classes, requires_grad=True)
    weight = None
    if balanced:
        inv = 1 / torch.bincount(labels, minlength=n_classes).float().clamp_min(1)
        weight = inv / inv.sum() * n_classes
    opt = torch.optim.Adam([b] if bias_only else [log_a, b], lr=0.05)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy((logits * log_a.exp() + b / SCALE) * SCALE, labels, weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return log_a.detach(), b.detach()


@torch.no_grad()
def probe(run: Path) -> dict[str, float]:
    cfg = fit_config_from_run(run)
    scene = _load_scene(cfg.scene, cfg.kind)
    trained = load_trained_field(run / "checkpoints" / CHECKPOINT_NAME, "cpu")
    method = get_method(cfg.method).load(trained, run, "cpu")
    clip = _backends(cfg, scene, "cpu", {"clip"})["clip"]
    ds, classes = cfg.features.semantic_downscale, list(scene.classes)
    n_c = len(classes)
    train = scene.train_views(cfg.holdout)[::2]
    cache = Path(cfg.cache_dir) if cfg.cache_dir else None
    feats = clip_features(scene, clip, train, cfg.features, cache)
    logits, pseudo = [], []
    for j, v in enumerate(feats.view_ids):
        logits.append(method.label_logits(method.render_view(scene, v, ds)).reshape(-1, n_c).float())
        t = normalized_clip_targets(feats[j]).float()
        rel = L.minmax_normalize(L.segmentation_logits(t, method.text)[None], dims=(1,))[0]  # [h*w, S, C]
        pseudo.append(rel.mean(1).argmax(-1))
    lt, pl = torch.cat(logits), torch.cat(pseudo)
    ranges = {
        "minmax": (lt.amin(0), lt.amax(0)),
        "p1p99": (torch.quantile(lt, 0.01, dim=0), torch.quantile(lt, 0.99, dim=0)),
        "p50max": (torch.quantile(lt, 0.5, dim=0), lt.amax(0)),
    }
    readouts = {
        name: (-(lo / (hi - lo).clamp_min(1e-6)), 1 / (hi - lo).clamp_min(1e-6)) for name, (lo, hi) in ranges.items()
    }
    # Centring (hubness reduction): subtract the scene's mean feature before the cosine, i.e. each label's mean
    # cosine over the training renders; ``center_clip`` takes the mean of the training views' 2D CLIP features
    # instead (all views and scales: the library's ``label_centering``).
    readouts["center"] = (-lt.mean(0), torch.ones(n_c))
    all_feats = clip_features(scene, clip, scene.train_views(cfg.holdout), cfg.features, cache)
    mu = mean_feature([normalized_clip_targets(all_feats[j]) for j in range(len(all_feats.view_ids))])
    readouts["center_clip"] = (-(method.text.float() @ mu), torch.ones(n_c))  # what label_centering predicts
    with torch.enable_grad():
        for name, balanced, bias_only, steps in [
            ("affine", False, False, 300),
            ("affine_bal", True, False, 300),
            ("bias", False, True, 500),
            ("bias_bal", True, True, 500),
        ]:
            log_a, b = fit_readout(lt, pl, n_c, balanced, bias_only, steps)
            readouts[name] = (b / SCALE, log_a.exp())
    views: dict[str, dict] = {k: {} for k in ["raw", *readouts]}
    for v in scene.annotated:
        lg = method.label_logits(method.render_view(scene, v, ds)).float()
        gt = scene.load_masks(v, ds)
        views["raw"][v] = segmentation_view_metrics(gt, lg.argmax(-1).numpy(), classes)
        for name, (offset, scale) in readouts.items():
            views[name][v] = segmentation_view_metrics(gt, (lg * scale + offset).argmax(-1).numpy(), classes)
    return {k: round(aggregate(vv, classes)["miou"], 4) for k, vv in views.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for run in args.runs:
        print(json.dumps({"run": str(run), **probe(run)}), flush=True)


if __name__ == "__main__":
    main()
