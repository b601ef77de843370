"""Issue 8 probe: would an edge-aware read-out of a finished run's label scores, guided by its own rendered
colour and depth, fix the border pixels the semantic field blurs?

Renders every annotated view of each run at the semantic resolution once (features, colour, depth), then scores
the labels read out in several ways, printing one JSON line per run with the mIoU of each (SPEC §5 metrics):

- ``argmax``: the argmax of the method's prediction logits (no CRF, the paper's read-out);
- ``defaults``: ``method.predict_labels`` with the library's default CRF settings (``SemanticConfig``'s
  ``crf_*``, off on the scene kinds outside ``crf_kinds``, as ``eval``: rooms keep the argmax), whatever the run
  stored, and the run's own ``empty_fill_opacity`` (off in runs fitted before it
  became the default in round 20, which is what the ``defaults`` columns of rounds 19–20 read; ``fill0`` turns
  it off in any run);
- ``fill{τ}``: as ``defaults``, after the logits of pixels whose ray opacity is below ``τ`` were replaced by
  the nearest pixel's at or above it (``SemanticConfig.empty_fill_opacity``);
- ``crf_t{T}_w{w}_r{R}_c{σc}_d{σd}_i{N}``: :func:`ovs3d.render.crf.dense_crf` with unaries ``T`` × the
  prediction logits, pairwise weight ``w``, window half-size ``R``, bandwidths ``σc`` and ``σd``, ``N``
  mean-field iterations, then argmax;
- ``jbf_r{R}_c{σc}_d{σd}_i{N}``: the label probabilities (softmax of the method's logits at CLIP's scale)
  filtered N times by a joint bilateral filter over a (2R+1)² window, weights
  ``exp(-|Δp|²/2R² − |Δrgb|²/2σc² − (Δd/d)²/2σd²)``, then argmax.

Usage::

    python bench/refine_probe.py RUN [RUN ...] --variants r1_c0.1_d0.05_i1 crf_t100_w4_r2_c0.1_d0.05_i5
    python bench/refine_probe.py RUN [RUN ...] --variants defaults --per-label --out records.jsonl
    python bench/refine_probe.py ROOM_RUN --variants defaults fill0.5 --protocol ovnerf

Scores with the 3D-OVS protocol (``--protocol 3dovs``) or the OV-NeRF one (``ovnerf``, what rooms are scored with).
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ovs3d.eval.metrics import aggregate, ovnerf_aggregate, ovnerf_view_metrics, segmentation_view_metrics
from ovs3d.methods.reconstruction import CHECKPOINT_NAME, load_trained_field
from ovs3d.methods.registry import get_method
from ovs3d.methods.threedovs.config import SemanticConfig
from ovs3d.methods.threedovs.method import settings_for_kind
from ovs3d.render.crf import dense_crf, joint_bilateral
from ovs3d.run import _load_scene, fit_config_from_run

CRF_SETTINGS = ("crf_iters", "crf_weight", "crf_radius", "crf_sigma_rgb", "crf_sigma_depth")


def with_default_crf(cfg, kind: str):
    """A run's semantic settings with the library's default CRF read-out (``SemanticConfig``'s ``crf_*``),
    whatever the run stored (runs fitted before the CRF read as without it), on a scene of ``kind`` as ``eval``
    reads it (:func:`settings_for_kind`: no CRF in rooms)."""
    default = SemanticConfig()
    return settings_for_kind(replace(cfg, **{k: getattr(default, k) for k in CRF_SETTINGS}), kind)


def parse_crf(variant: str) -> dict | None:
    m = re.fullmatch(r"crf_t([\d.]+)_w([\d.]+)_r(\d+)_c([\d.]+|inf)_d([\d.]+|inf)_i(\d+)", variant)
    if not m:
        return None
    return {
        "scale": float(m[1]),
        "weight": float(m[2]),
        "radius": int(m[3]),
        "sigma_rgb": float(m[4]),
        "sigma_depth": float(m[5]),
        "iters": int(m[6]),
    }


def parse(variant: str) -> dict:
    m = re.fullmatch(r"r(\d+)_c([\d.]+|inf)_d([\d.]+|inf)_i(\d+)(_logit)?", variant)
    if not m:
        raise SystemExit(f"bad variant {variant!r}: expected e.g. r1_c0.1_d0.05_i1")
    return {
        "radius": int(m[1]),
        "sigma_rgb": float(m[2]),
        "sigma_depth": float(m[3]),
        "iters": int(m[4]),
        "logit": bool(m[5]),
    }


@torch.no_grad()
def probe(run: Path, variants: list[str], protocol: str = "3dovs") -> dict:
    cfg = fit_config_from_run(run)
    scene = _load_scene(cfg.scene, cfg.kind)
    trained = load_trained_field(run / "checkpoints" / CHECKPOINT_NAME, "cpu")
    method = get_method(cfg.method).load(trained, run, "cpu")
    ds, classes = cfg.features.semantic_downscale, list(scene.classes)
    renders = {v: method.render_view(scene, v, ds) for v in scene.annotated}
    gts = {v: scene.load_masks(v, ds) for v in scene.annotated}
    view_metrics, aggregate_views = (
        (segmentation_view_metrics, aggregate) if protocol == "3dovs" else (ovnerf_view_metrics, ovnerf_aggregate)
    )
    out = {"run": str(run)}
    per_label = {}
    for name in ["argmax", *variants]:
        views = {}
        for v, r in renders.items():
            logits = method.prediction_logits(r).float()  # [h, w, C]
            crf = parse_crf(name)
            if name == "defaults" or name.startswith("fill"):
                stored = method.cfg
                method.cfg = with_default_crf(stored, scene.kind)
                if name.startswith("fill"):  # fill{τ}: empty pixels filled from the nearest surface, then defaults
                    method.cfg = replace(method.cfg, empty_fill_opacity=float(name[4:]))
                labels = method.predict_labels(r)
                method.cfg = stored
                logits = torch.nn.functional.one_hot(labels, len(classes)).float()
            elif crf is not None:
                logits = dense_crf(
                    logits * crf["scale"],
                    r["rgb"].float(),
                    r["depth"].float(),
                    crf["weight"],
                    crf["radius"],
                    crf["sigma_rgb"],
                    crf["sigma_depth"],
                    crf["iters"],
                )
            elif name != "argmax":
                p = parse(name)
                x = logits if p["logit"] else torch.softmax(logits * method.score_scale, -1)
                for _ in range(p["iters"]):
                    x = joint_bilateral(
                        x, r["rgb"].float(), r["depth"].float(), p["radius"], p["sigma_rgb"], p["sigma_depth"]
                    )
                logits = x
            views[v] = view_metrics(gts[v], logits.argmax(-1).numpy().astype(np.int64), classes)
        agg = aggregate_views(views, classes)
        out[name] = round(agg["miou"], 4)
        per_label[name] = {c: None if x is None else round(x, 3) for c, x in agg["class_iou"].items()}
    out["per_label"] = per_label
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--variants", nargs="+", default=["r1_c0.1_d0.05_i1"])
    ap.add_argument("--per-label", action="store_true")
    ap.add_argument(
        "--protocol",
        choices=("3dovs", "ovnerf"),
        default="3dovs",
        help="scoring (SPEC §5): 3dovs (every label of every view) or ovnerf (rooms: absent labels skipped)",
    )
    ap.add_argument("--out", type=Path, default=None, help="also append each run's JSON line to this file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for run in args.runs:
        res = probe(run, args.variants, args.protocol)
        if not args.per_label:
            res.pop("per_label")
        print(json.dumps(res), flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
