"""The 2D baseline (SPEC §3): per annotated view, argmax of that view's own pixel CLIP relevancy.

No 3D and no other view: the multi-scale pixel CLIP features of the view (Alg. 1) are compared with the
label texts, averaged over the scales, and every pixel takes the label with the highest relevancy.
With ``normalize`` each label's relevancy is first min–max normalised over the view (3D-OVS Eq. 7), which
removes most of CLIP's absolute-relevancy ambiguity; without it this is the raw CLIP relevancy.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ovs3d.foundation.features import FeatureConfig, clip_features
from ovs3d.utils.console import Work, progress
from ovs3d.utils.device import resolve_device


def baseline_labels(
    features: np.ndarray, text: torch.Tensor, normalize: bool, scales: tuple[int, ...] | None = None
) -> np.ndarray:
    """Per-pixel labels from one view's features.

    Args:
        features: ``[S, H, W, D]`` pixel CLIP features of the view.
        text: ``[C, D]`` normalised label embeddings.
        normalize: min–max normalise each label's relevancy over the view first (after the scale average).
        scales: indices of the scales to average (default: all).

    Returns:
        ``[H, W]`` int64 labels.
    """
    f = np.asarray(features, dtype=np.float32)
    if scales is not None:
        f = f[list(scales)]
    f = F.normalize(torch.from_numpy(f), dim=-1)  # [S, H, W, D]
    rel = (f @ text.T).mean(0)  # [H, W, C]
    if normalize:
        lo = rel.amin(dim=(0, 1), keepdim=True)
        hi = rel.amax(dim=(0, 1), keepdim=True)
        rel = (rel - lo) / (hi - lo).clamp_min(1e-6)
    return rel.argmax(-1).numpy().astype(np.int64)


def run_baseline(
    scene_dir: Path,
    out: Path,
    clip_spec: str = "auto",
    cfg: FeatureConfig | None = None,
    normalize: bool = False,
    cache_dir: Path | None = None,
    device: str = "auto",
    allow_download: bool = False,
    scales: tuple[int, ...] | None = None,
    protocol: str = "3dovs",
) -> dict:
    """Score the 2D baseline on every annotated view; writes the same files as ``ovs3d eval`` into ``out``.

    ``scales`` picks the Alg. 1 scales (indices into ``patch_divisors``, largest patch first) whose relevancy
    is averaged; default all.
    """
    from ovs3d.errors import OVS3DError
    from ovs3d.eval.report import write_segmentation_eval
    from ovs3d.foundation.registry import build_clip, resolve_spec
    from ovs3d.io.loader import load_scene

    scene = load_scene(scene_dir)
    if not scene.annotated:
        raise OVS3DError(f"{scene_dir} has no annotated views (segmentations/<NN>/) to score")
    cfg = replace(cfg or FeatureConfig(), views_fraction=1.0)
    clip = build_clip(
        resolve_spec(clip_spec, scene.has_sim, "clip"),
        scene.root,
        device=str(resolve_device(device)),
        allow_download=allow_download,
    )
    text = F.normalize(clip.encode_text(list(scene.classes)).float().cpu(), dim=-1)
    feats = clip_features(scene, clip, list(scene.annotated), cfg, cache_dir)
    preds, gts, rgbs = {}, {}, {}
    for j, v in enumerate(progress(feats.view_ids, desc="2D baseline", work=Work("views"))):
        if scales is not None and not all(0 <= i < feats[j].shape[0] for i in scales):
            raise OVS3DError(f"scales {list(scales)} out of range: the features have {feats[j].shape[0]} scales")
        preds[v] = baseline_labels(feats[j], text, normalize, scales)
        gts[v] = scene.load_masks(v, cfg.semantic_downscale)
        rgbs[v] = scene.load_image(v, cfg.semantic_downscale)
    w, h = scene.image_size(cfg.semantic_downscale)
    extra = {
        "method": "2d-baseline" + ("-minmax" if normalize else ""),
        "clip": clip.identity,
        "resolution": [w, h],
        "scales": list(scales) if scales is not None else None,
    }
    return write_segmentation_eval(Path(out), list(scene.classes), preds, gts, rgbs, "3dovs", extra, metric=protocol)
