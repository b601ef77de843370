"""How an edge-aware filter of the CLIP targets changes the 2D evidence the semantic stage trains on.

For finished ``3dovs`` runs of scenes made by ``ovs3d make-scene``: the run's semantic targets are prepared as
``fit`` prepares them (same reconstruction, features, settings), once per ``--radius`` of
``--semantic.target-filter-radius`` (0 = unfiltered), and each training view's pseudo-classes (the argmax of its
normalised relevancy at the ray's preferred scale, what the balanced draws read) are scored against the
scene's GT instance maps: mIoU over the training views' semantic pixels, and per label. No training.

Usage::

    python bench/target_filter_probe.py RUN [RUN ...] --radius 0 1 2 3 [--out F.jsonl]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fusion_ceiling import gt_labels  # bench/ is the script's folder
from ovs3d.eval.metrics import segmentation_view_metrics
from ovs3d.methods.reconstruction import CHECKPOINT_NAME, load_trained_field
from ovs3d.methods.threedovs.method import prepare_data, pseudo_classes
from ovs3d.run import _backends, _load_scene, fit_config_from_run


def miou(pred: np.ndarray, gt: np.ndarray, classes: list[str]) -> tuple[float, dict[str, float]]:
    """mIoU over the labels present in ``gt`` (−1 ignored) and the IoU per label, the training views' pixels
    pooled (``[N]`` each)."""
    keep = gt >= 0
    masks = gt[keep][None, None, :] == np.arange(len(classes))[:, None, None]  # [C, 1, N]
    m = segmentation_view_metrics(masks, pred[keep][None, :], classes)
    per = {c: round(m["iou"][c], 4) for c in classes if m["gt_pixels"][c] > 0}
    return float(np.mean(list(per.values()))), per


@torch.no_grad()
def probe(run: Path, radius: int) -> dict:
    cfg = fit_config_from_run(run)
    # FDA is not read here: no DINO features
    cfg = replace(cfg, semantic=replace(cfg.semantic, target_filter_radius=radius, use_fda=False))
    scene = _load_scene(cfg.scene, cfg.kind)
    trained = load_trained_field(run / "checkpoints" / CHECKPOINT_NAME, "cpu")
    backends = _backends(cfg, scene, "cpu", {"clip", "dino"} if cfg.semantic.selection_prior == "dino" else {"clip"})
    data = prepare_data(scene, trained, cfg, backends["clip"], backends.get("dino"), scene.train_views(cfg.holdout))
    gt = gt_labels(scene, Path(cfg.scene), data.view_ids, data.view_size)
    pred = pseudo_classes(data.relevancy, data.scale_prior).numpy()
    score, per = miou(pred, gt, list(scene.classes))
    return {"run": str(run), "radius": radius, "miou_2d": round(score, 4), "per_label": per}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--radius", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for run in args.runs:
        for radius in args.radius:
            rec = probe(run, radius)
            line = json.dumps(rec)
            print(line, flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
