"""Probe for issue 8, round 5: which CLIP scale the agreement prior picks, per ground-truth label.

For a finished 3D-OVS run folder, the semantic stage's training data is prepared again (cached features,
cached ray samples), the agreement prior (``--semantic.selection-prior agreement``) is computed, and on the
annotated views (training views under the 3D-OVS protocol) each label's pixels are counted by the scale the
prior picks; beside it, the share of the label's pixels that each scale's normalised relevancy labels right,
and the share the prior's scale labels right. No training; about a minute per scene.

Usage::

    python bench/agreement_probe.py bench/out/val/seed7/3dovs/full [--threshold 0.5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ovs3d.methods.reconstruction import CHECKPOINT_NAME, load_trained_field
from ovs3d.methods.threedovs.method import prepare_data
from ovs3d.methods.threedovs.scale_prior import agreement_scales
from ovs3d.run import _backends, _load_scene, _used_backends, fit_config_from_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished 3dovs run folder")
    ap.add_argument("--threshold", type=float, default=0.5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = fit_config_from_run(args.run)
    scene = _load_scene(cfg.scene, cfg.kind)
    trained = load_trained_field(args.run / "checkpoints" / CHECKPOINT_NAME, "cpu")
    backends = _backends(cfg, scene, torch.device("cpu"), _used_backends(cfg))
    data = prepare_data(scene, trained, cfg, backends["clip"], backends.get("dino"), scene.train_views(cfg.holdout))
    rel = data.relevancy  # [R, S, C]
    n_scales = rel.shape[1]
    f = trained.field
    prior = agreement_scales(rel, data.pixels.xyz, data.pixels.weights, f.aabb.cpu(), f.grid_resolution, args.threshold)
    shares = (prior.bincount(minlength=n_scales) / len(prior)).tolist()
    print(f"{args.run}: share of all pixel rays per scale (largest window first) {[round(s, 3) for s in shares]}")
    w, h = data.view_size
    gts, picks, rels = [], [], []
    for v in scene.annotated:
        if v not in data.view_ids:
            continue  # held out
        j = data.view_ids.index(v)
        rows = slice(j * w * h, (j + 1) * w * h)
        masks = scene.load_masks(v, data.downscale)
        gts.append(torch.from_numpy(np.where(masks.any(0), masks.argmax(0), -1)).reshape(-1))
        picks.append(prior[rows])
        rels.append(rel[rows])
    if not gts:
        raise SystemExit("no annotated view trains this run (novel-view protocol): nothing to compare")
    gt, pick, r = torch.cat(gts), torch.cat(picks), torch.cat(rels)
    at_pick = r.gather(1, pick[:, None, None].expand(-1, 1, r.shape[-1]))[:, 0].argmax(-1)
    print("| label | pixels | prior's scale (shares) | right at each scale | right at the prior's |")
    print("|---|---|---|---|---|")
    for c, name in enumerate(scene.classes):
        m = gt == c
        if not m.any():
            continue
        share = (pick[m].bincount(minlength=n_scales) / m.sum()).tolist()
        right = [float((r[m][:, s].argmax(-1) == c).float().mean()) for s in range(n_scales)]
        print(
            f"| {name} | {int(m.sum())} | {' / '.join(f'{x:.2f}' for x in share)} | "
            f"{' / '.join(f'{x:.2f}' for x in right)} | {float((at_pick[m] == c).float().mean()):.2f} |"
        )


if __name__ == "__main__":
    main()
