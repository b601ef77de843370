"""3D-OVS end to end on a run folder: features -> cached samples -> semantic training -> evaluation."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ovs3d.foundation.features import clip_features, dino_features
from ovs3d.io.scene import Scene
from ovs3d.methods.reconstruction import CHECKPOINT_NAME as RECON_CKPT
from ovs3d.methods.reconstruction import TrainedField, load_trained_field
from ovs3d.methods.scene_rays import ray_near, view_rays
from ovs3d.methods.threedovs import losses as L
from ovs3d.methods.threedovs.data import (
    normalized_clip_targets,
    pixel_scale_prior,
    top_samples,
    view_pixel_samples,
    view_token_samples,
)
from ovs3d.methods.threedovs.model import SemanticHeads
from ovs3d.methods.threedovs.trainer import SemanticData, load_semantic, train_semantic
from ovs3d.utils.console import progress

logger = logging.getLogger(__name__)


def build_backends(cfg, scene: Scene, device, need_dino: bool = True):
    """CLIP and DINO backends named by the run's flags (``auto``: simulated on synthetic scenes)."""
    from ovs3d.foundation.registry import build_clip, build_dino

    clip_spec = resolve_spec(cfg.clip, scene, "clip")
    clip = build_clip(clip_spec, scene.root, device=str(device), allow_download=cfg.allow_download)
    dino = None
    if need_dino:
        dino_spec = resolve_spec(cfg.dino, scene, "dino")
        dino = build_dino(dino_spec, scene.root, device=str(device), allow_download=cfg.allow_download)
    return clip, dino


DEFAULT_REAL = {
    "clip": "open_clip:ViT-B-16:openai",
    "dino": "timm:vit_base_patch8_224.dino",
    "masks": "superpixel",
}


def resolve_spec(spec: str, scene: Scene, family: str) -> str:
    """``auto`` -> ``sim`` for scenes with ``sim/`` (synthetic), else the papers' real model."""
    if spec != "auto":
        return spec
    return "sim" if scene.has_sim else DEFAULT_REAL[family]


def balanced_ray_weights(
    relevancy: torch.Tensor, scale_prior: torch.Tensor | None = None, power: float = 1.0
) -> torch.Tensor:
    """Sampling weights that rebalance the pixel rays by pseudo-class.

    A ray's pseudo-class is the argmax of its view's normalised relevancy ``R̄_s`` at its preferred scale
    (``scale_prior``), or averaged over the scales without one; its weight is ``n^-power`` with ``n`` the
    number of rays of that pseudo-class (``power=1``: every pseudo-class gets the same share).

    Args:
        relevancy: ``[R, S, C]`` per-scale normalised relevancies.
        scale_prior: ``[R]`` preferred scale of each ray, or None.
        power: the exponent (0 = uniform).

    Returns:
        ``[R]`` float32 weights (any scale; for :func:`torch.multinomial`).
    """
    if scale_prior is not None:
        rel = relevancy.gather(1, scale_prior[:, None, None].expand(-1, 1, relevancy.shape[-1]))[:, 0]
    else:
        rel = relevancy.float().mean(1)
    pseudo = rel.argmax(-1)  # [R]
    counts = torch.bincount(pseudo, minlength=relevancy.shape[-1]).float()
    return counts.clamp_min(1).pow(-power)[pseudo]


def needs_dino(scfg) -> bool:
    """Whether the semantic stage reads DINO features (FDA, or the DINO scale prior of the selection)."""
    return scfg.use_fda or scfg.selection_prior == "dino"


def prepare_data(scene: Scene, trained: TrainedField, cfg, clip, dino, views: list[int]) -> SemanticData:
    """Features (cached), text embeddings, relevancy targets and the marched samples of every training ray."""
    fcfg = cfg.features
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else None
    feats = clip_features(scene, clip, views, fcfg, cache_root)
    text = F.normalize(clip.encode_text(list(scene.classes)).float(), dim=-1)  # [C, D]
    targets, rels, rgbs = [], [], []
    for j, v in enumerate(feats.view_ids):
        t = normalized_clip_targets(feats[j])  # [h*w, S, D] float16
        rel = L.segmentation_logits(t.float(), text)  # [h*w, S, C]
        rels.append(L.minmax_normalize(rel[None], dims=(1,))[0])  # per view, scale, class
        targets.append(t)
        rgbs.append(torch.from_numpy(scene.load_image(v, fcfg.semantic_downscale)).reshape(-1, 3))
    k = cfg.semantic.samples_per_ray
    pixels = view_pixel_samples(trained, scene, list(feats.view_ids), fcfg.semantic_downscale, k)
    dfeats = dino_features(scene, dino, views, fcfg, cache_root) if needs_dino(cfg.semantic) else None
    scale_prior = None
    if cfg.semantic.selection_prior == "dino":
        from ovs3d.foundation.pixel_clip import patch_sizes

        w, h = scene.image_size(fcfg.semantic_downscale)
        patches = [p for p, _ in patch_sizes(h, w, fcfg.pixel_clip)]
        scale_prior = torch.cat(
            [
                pixel_scale_prior(
                    torch.from_numpy(np.array(dfeats[views.index(v)], dtype=np.float32)),
                    (w, h),
                    fcfg.semantic_downscale,
                    fcfg.dino_downscale,
                    dino.stride,
                    patches,
                    cfg.semantic.fda_shift,
                    cfg.semantic.selection_purity,
                )
                for v in feats.view_ids
            ]
        )
        shares = scale_prior.bincount(minlength=len(patches)) / len(scale_prior)
        logger.info("DINO scale prior: share of pixels per scale (largest first) %s", shares.tolist())
    relevancy = torch.cat(rels)  # [R_p, S, C]
    ray_weights = None
    if cfg.semantic.ray_sampling == "balanced":
        ray_weights = balanced_ray_weights(relevancy, scale_prior, cfg.semantic.ray_balance_power)
    if cfg.semantic.use_fda:
        dino_t = torch.cat(
            [
                torch.from_numpy(np.array(dfeats[j], dtype=np.float32)).reshape(-1, dfeats[j].shape[-1])
                for j in range(len(dfeats))
            ]
        ).to(torch.float16)
        gh, gw = dfeats[0].shape[:2]
        cells = view_token_samples(trained, scene, views, fcfg.dino_downscale, dino.stride, k)
        assert len(cells) == dino_t.shape[0], (len(cells), dino_t.shape)
        cell_grid = (len(views), gh, gw)
    else:
        empty = pixels.index(torch.zeros(0, dtype=torch.long))
        cells, dino_t, cell_grid = empty, torch.zeros(0, 1), (0, 0, 0)
    captured = float(pixels.captured.mean())
    logger.info("kept %d samples per ray, %.1f%% of the compositing weight", k, 100 * captured)
    return SemanticData(
        pixels=pixels,
        clip_targets=torch.cat(targets),
        relevancy=relevancy,
        rgb=torch.cat(rgbs),
        cells=cells,
        dino=dino_t,
        cell_grid=cell_grid,
        text=text,
        scale_prior=scale_prior,
        ray_weights=ray_weights,
    )


def fit_semantic(scene: Scene, run: Path, cfg, device, backends=None) -> SemanticHeads:
    """The semantic stage of ``ovs3d fit --method 3dovs`` on a run whose reconstruction is done.

    ``backends`` is ``(clip, dino)`` when already built (else built from the flags in ``cfg``).
    """
    if not scene.classes:
        from ovs3d.errors import OVS3DError

        raise OVS3DError(f"{scene.root} has no segmentations/classes.txt: 3D-OVS needs the label prompts")
    trained = load_trained_field(Path(run) / "checkpoints" / RECON_CKPT, device)
    from ovs3d.methods.threedovs.trainer import CHECKPOINT_NAME

    ckpt = Path(run) / "checkpoints" / CHECKPOINT_NAME
    if ckpt.exists():
        from ovs3d.utils.files import load_checkpoint

        if load_checkpoint(ckpt, kind="semantic")["step"] >= cfg.semantic.n_iters:
            heads, _, _ = load_semantic(trained, run, device)
            return heads
    clip, dino = backends or build_backends(cfg, scene, device, need_dino=needs_dino(cfg.semantic))
    data = prepare_data(scene, trained, cfg, clip, dino, scene.train_views(cfg.holdout))
    return train_semantic(trained, data, run, cfg.semantic, device)


@torch.no_grad()
def render_semantic_rays(
    trained: TrainedField, heads: SemanticHeads, rays_o, rays_d, near: float, k: int, chunk: int = 4096
) -> dict[str, torch.Tensor]:
    """Features ``[R, D]``, selection ``[R, S]`` (softmaxed), colour ``[R, 3]``, depth ``[R]`` (expected ray
    parameter) of rays, each ray marched once."""
    from ovs3d.methods.threedovs.trainer import render_samples

    outs: dict[str, list] = {"features": [], "selection": [], "rgb": [], "depth": []}
    for i in range(0, rays_o.shape[0], chunk):
        s = top_samples(trained, rays_o[i : i + chunk], rays_d[i : i + chunk], near, k)
        s = s.to(trained.field.aabb.device)
        o = render_samples(trained, heads, s, with_select=True, with_rgb=True)
        outs["features"].append(o["features"].cpu())
        outs["selection"].append(L.selection_softmax(o["select_raw"]).cpu())
        outs["rgb"].append(o["rgb"].clamp(0, 1).cpu())
        outs["depth"].append(s.depth.cpu())
    return {k_: torch.cat(v) for k_, v in outs.items()}


def render_semantic_view(trained, heads, scene: Scene, view: int, downscale: float, k: int):
    """Render a view at ``1/downscale``: ``features [H, W, D]``, ``selection [H, W, S]``, ``rgb [H, W, 3]``,
    ``depth [H, W, 1]``."""
    w, h = scene.image_size(downscale)
    o, d = view_rays(scene, view, downscale)
    out = render_semantic_rays(trained, heads, o, d, ray_near(scene), k)
    return {key: v.reshape(h, w, -1) for key, v in out.items()}


def predict_labels(features: torch.Tensor, text: torch.Tensor) -> np.ndarray:
    """Closed-set prediction (§8 of the reference): argmax over classes of cos(feature, text), ``[H, W]`` int."""
    return L.segmentation_logits(features, text).argmax(-1).numpy().astype(np.int64)


def evaluate_semantic(
    scene: Scene,
    run: Path,
    cfg,
    trained: TrainedField,
    heads: SemanticHeads,
    scfg,
    text: torch.Tensor,
    protocol: str,
    extra: dict[str, Any],
) -> dict:
    """Render every annotated view at the semantic resolution, score it (SPEC §5) and write ``RUN/eval``.

    ``trained``, ``heads``, ``scfg`` (the semantic config) and ``text`` ``[C, D]`` are the run as the caller
    loaded it (:func:`~ovs3d.methods.threedovs.trainer.load_semantic`), so the field is loaded once.
    """
    from ovs3d.eval.report import write_segmentation_eval

    ds = cfg.features.semantic_downscale
    preds, gts, rgbs = {}, {}, {}
    for v in progress(list(scene.annotated), desc="evaluating views"):
        out = render_semantic_view(trained, heads, scene, v, ds, scfg.samples_per_ray)
        preds[v] = predict_labels(out["features"], text.cpu())
        gts[v] = scene.load_masks(v, ds)
        rgbs[v] = scene.load_image(v, ds)
    w, h = scene.image_size(ds)
    extra = dict(extra)
    extra.update(
        {
            "resolution": [w, h],
            "semantic": {
                "rda_mode": scfg.rda_mode,
                "fda": scfg.use_fda,
                "rda": scfg.use_rda,
                "rebalance": scfg.fda_rebalance,
            },
        }
    )
    return write_segmentation_eval(Path(run) / "eval", list(scene.classes), preds, gts, rgbs, protocol, extra)


def with_ablation(cfg, name: str):
    """A copy of a fit config with one of the paper's Table 2 ablations (or another variant) applied.

    Table 2: ``full`` (the library defaults), ``no_rda``, ``no_fda``, ``no_rebalance``, ``single_scale``
    (the s/7 patch only), ``half_views`` (CLIP features on 50% of the views), ``tenth_views`` (10%).
    ``previous``: the library defaults before issue 8 (settings added since are off).
    Readings: ``paper`` (the paper's cosine RDA at weight 1 and λ_pos 200, uniform ray draws),
    ``reference`` (the official code's: unnormalised-feature RDA at weight 1, pairwise KL in FDA, λ_pos 200,
    uniform draws), ``code_rda`` / ``code_rda_w5`` / ``rda_w5`` (RDA reading and weight alone), ``kl_fda``
    (pairwise KL in FDA). Any single setting: ``"semantic.<field>=<value>"`` or
    ``"features.<field>=<value>"``. Combine with ``+``, applied left to right: ``"paper+no_fda"``.
    """
    if "+" in name:  # combinations, applied left to right: "code_rda_w5+no_fda"
        for part in name.split("+"):
            cfg = with_ablation(cfg, part)
        return cfg
    sem, feat = cfg.semantic, cfg.features
    if "=" in name:  # a single setting: "semantic.rda_weight=5", "features.dino_downscale=0.5"
        return _with_setting(cfg, name)
    if name == "full":
        return cfg
    if name == "previous":  # the defaults before the small-object work (issue 8): settings added since, off
        from ovs3d.methods.threedovs.trainer import LEGACY_SETTINGS

        return replace(cfg, semantic=replace(sem, **LEGACY_SETTINGS))
    if name == "paper":  # the paper's readings and values (Eq. 4-5 cosine RDA, weight 1; lambda_pos 200)
        return replace(
            cfg, semantic=replace(sem, rda_mode="paper", rda_weight=1.0, fda_w_pos=200.0, ray_sampling="uniform")
        )
    if name == "reference":  # the official code's readings and values (unnormalised RDA, KL in FDA)
        return replace(
            cfg,
            semantic=replace(
                sem, rda_mode="code", rda_weight=1.0, fda_divergence="kl", fda_w_pos=200.0, ray_sampling="uniform"
            ),
        )
    if name == "no_rda":
        return replace(cfg, semantic=replace(sem, use_rda=False))
    if name == "no_fda":
        return replace(cfg, semantic=replace(sem, use_fda=False))
    if name == "no_rebalance":
        return replace(cfg, semantic=replace(sem, fda_rebalance=False))
    if name == "single_scale":
        return replace(cfg, features=replace(feat, pixel_clip=replace(feat.pixel_clip, patch_divisors=(7,))))
    if name == "half_views":
        return replace(cfg, features=replace(feat, views_fraction=0.5))
    if name == "tenth_views":
        return replace(cfg, features=replace(feat, views_fraction=0.1))
    if name == "code_rda":
        return replace(cfg, semantic=replace(sem, rda_mode="code"))
    if name == "rda_w5":
        return replace(cfg, semantic=replace(sem, rda_weight=5.0))
    if name == "code_rda_w5":
        return replace(cfg, semantic=replace(sem, rda_mode="code", rda_weight=5.0))
    if name == "kl_fda":
        return replace(cfg, semantic=replace(sem, fda_divergence="kl"))
    raise ValueError(f"unknown ablation {name!r}")


def _with_setting(cfg, assignment: str):
    """Apply ``"<section>.<field>=<value>"`` (section ``semantic`` or ``features``) to a fit config."""
    import ast
    from dataclasses import fields

    key, _, raw = assignment.partition("=")
    section, _, field = key.partition(".")
    if section not in ("semantic", "features"):
        raise ValueError(f"setting {assignment!r}: section must be 'semantic' or 'features'")
    sub = getattr(cfg, section)
    if field not in {f.name for f in fields(sub)}:
        raise ValueError(f"setting {assignment!r}: {type(sub).__name__} has no field {field!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # a bare string such as code
    return replace(cfg, **{section: replace(sub, **{field: value})})


ABLATIONS = (
    "full",
    "previous",
    "paper",
    "reference",
    "no_rda",
    "no_fda",
    "no_rebalance",
    "single_scale",
    "half_views",
    "tenth_views",
    "rda_w5",
    "code_rda",
    "code_rda_w5",
    "kl_fda",
)
