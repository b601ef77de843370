"""The 3D-OVS semantic stage (paper §3, App. A.3): distil CLIP (+ RDA) and DINO (FDA) into the field.

Schedule (App. A.3 and the official code): density is frozen throughout. Until ``joint_start`` the whole
RGB field is frozen and only the CLIP-feature head and the Selection Volume train; from ``joint_start``
the appearance grids, basis and RGB MLP join with their own learning rates (a fresh Adam, as the code
does) and the RGB loss is added. Learning rates decay exponentially to ``lr_decay_ratio``.

Per step: ``batch_size`` pixel rays of the CLIP views give the feature loss (Eq. 3) and RDA (Eq. 5–8);
``n_patches`` random patches of DINO cells give FDA (Eq. 9–14). Every ray was marched once through the
frozen density (:mod:`ovs3d.render.cached`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ovs3d import losses as L
from ovs3d.field.semantic import SemanticHeads
from ovs3d.field.trained import TrainedField
from ovs3d.foundation.features import clip_features, dino_features
from ovs3d.io.scene import Scene
from ovs3d.methods.base import SemanticMethod, as_view, semantic_checkpoint
from ovs3d.methods.loop import Callback
from ovs3d.methods.targets import edge_aware_targets, normalized_clip_targets, patch_indices, voxel_consensus
from ovs3d.methods.threedovs.config import LEGACY_SETTINGS, SemanticConfig
from ovs3d.render.cached import RaySamples, render_semantic_samples, top_samples, view_pixel_samples, view_token_samples
from ovs3d.utils.files import load_checkpoint

logger = logging.getLogger(__name__)


@dataclass
class SemanticData:
    """Everything a semantic training step reads.

    Attributes:
        pixels: samples of the CLIP views' pixel rays ``R_p``.
        clip_targets: ``[R_p, S, D]`` float16 per-scale normalised pixel CLIP features.
        relevancy: ``[R_p, S, C]`` per-scale relevancies, min–max normalised per view, scale and class.
        rgb: ``[R_p, 3]`` pixel colours (joint phase).
        cells: samples of the DINO-cell rays of all training views ``R_d``.
        dino: ``[R_d, Dd]`` DINO features of those cells.
        cell_grid: ``(n_views, h, w)`` of the DINO cells.
        text: ``[C, D]`` normalised class text features.
        scale_prior: ``[R_p]`` int64 preferred scale of each pixel ray (``selection_prior`` "dino" or
            "agreement"), else None.
        ray_weights: ``[R_p]`` sampling weights of the pixel rays (``ray_sampling="balanced"``), else None.
        view_ids: the views of the pixel rays, in order (``h * w`` rays each, row-major).
        view_size: ``(w, h)`` of those views at the semantic resolution.
        downscale: that resolution is ``1 / downscale`` of the images (None when not from a scene).
        raw_relevancy: ``[R_p, S, C]`` the cosines before any normalisation, when asked for, else None.
        clip_mean: ``[D]`` mean of the pixel CLIP features over all pixels and scales of the CLIP views (the
            centre of ``label_centering``), or None where centring does not run (:func:`centring_runs`).
    """

    pixels: RaySamples
    clip_targets: Tensor
    relevancy: Tensor
    rgb: Tensor
    cells: RaySamples
    dino: Tensor
    cell_grid: tuple[int, int, int]
    text: Tensor
    scale_prior: Tensor | None = None
    ray_weights: Tensor | None = None
    view_ids: tuple[int, ...] = ()
    view_size: tuple[int, int] = (0, 0)
    downscale: float | None = None
    raw_relevancy: Tensor | None = None
    clip_mean: Tensor | None = None


def pseudo_classes(relevancy: Tensor, scale_prior: Tensor | None = None) -> Tensor:
    """``[R]`` argmax class of each ray's normalised relevancy ``[R, S, C]``, at its preferred scale
    (``scale_prior`` ``[R]``) or averaged over the scales."""
    if scale_prior is not None:
        rel = relevancy.gather(1, scale_prior[:, None, None].expand(-1, 1, relevancy.shape[-1]))[:, 0]
    else:
        rel = relevancy.float().mean(1)
    return rel.argmax(-1)


def class_balanced_weights(classes: Tensor, n_classes: int, power: float = 1.0) -> Tensor:
    """``[R]`` float32 weights ``n^-power`` with ``n`` the number of rays of each ray's class ``[R]``
    (``power=1``: every class gets the same share of the draws; 0: uniform)."""
    counts = torch.bincount(classes, minlength=n_classes).float()
    return counts.clamp_min(1).pow(-power)[classes]


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
    return class_balanced_weights(pseudo_classes(relevancy, scale_prior), relevancy.shape[-1], power)


def label_border_rays(classes: Tensor, n_views: int, size: tuple[int, int]) -> Tensor:
    """``[R]`` bool: pixel rays on the border of their class region in their view, for regions with an interior.

    A ray is on the border when one of its 4-neighbours in its view has another class (the image's edge is not
    a border). A region (4-connected pixels of one class) whose pixels are all on its border (1–2 pixels thick)
    marks none of them, so that no region loses all of its rays.

    Args:
        classes: ``[R]`` int class per ray, ``R = n_views * h * w`` rays row-major per view.
        n_views: number of views.
        size: ``(w, h)`` of the views.
    """
    from scipy import ndimage

    w, h = size
    maps = classes.reshape(n_views, h, w).cpu().numpy()
    out = np.zeros(maps.shape, dtype=bool)
    for v, cls in enumerate(maps):
        border = np.zeros((h, w), dtype=bool)
        dy, dx = cls[1:] != cls[:-1], cls[:, 1:] != cls[:, :-1]
        border[1:] |= dy
        border[:-1] |= dy
        border[:, 1:] |= dx
        border[:, :-1] |= dx
        for c in np.unique(cls):
            regions, n = ndimage.label(cls == c)  # 4-connected, 0 = another class
            # whether each region has a pixel off the border; never label 0, which counts nothing here
            interior = np.bincount(regions[~border & (regions > 0)], minlength=n + 1) > 0  # [n + 1]
            out[v] |= border & interior[regions]
    return torch.from_numpy(out.reshape(-1))


def consensus_relevancy(pixels: RaySamples, relevancy: Tensor, trained: TrainedField) -> Tensor:
    """``[R, S, C]`` per-view relevancies ``[R, S, C]`` of the pixel rays pooled across views in the voxels of
    the reconstruction's grid (:func:`~ovs3d.methods.targets.voxel_consensus`)."""
    field = trained.field
    r, s, c = relevancy.shape
    pooled = voxel_consensus(
        pixels.xyz, pixels.weights, relevancy.reshape(r, s * c), field.aabb.cpu(), field.grid_resolution
    )
    return pooled.reshape(r, s, c)


def needs_dino(scfg) -> bool:
    """Whether the semantic stage reads DINO features (FDA, or the DINO scale prior of the selection)."""
    return scfg.use_fda or scfg.selection_prior == "dino"


def _dino_scale_prior(scene: Scene, fcfg, scfg, dfeats, dino, views: list[int], clip_views) -> Tensor:
    """``[R_p]`` preferred scale of every pixel ray of the CLIP views, from their DINO features."""
    from ovs3d.foundation.pixel_clip import patch_sizes
    from ovs3d.methods.threedovs.scale_prior import pixel_scale_prior

    w, h = scene.image_size(fcfg.semantic_downscale)
    patches = [p for p, _ in patch_sizes(h, w, fcfg.pixel_clip)]
    prior = torch.cat(
        [
            pixel_scale_prior(
                torch.from_numpy(np.array(dfeats[views.index(v)], dtype=np.float32)),
                (w, h),
                fcfg.semantic_downscale,
                dfeats.settings["downscale"],  # DINO's input, as the features were computed
                dino.stride,
                patches,
                scfg.fda_shift,
                scfg.selection_purity,
            )
            for v in clip_views
        ]
    )
    shares = prior.bincount(minlength=len(patches)) / len(prior)
    logger.info("DINO scale prior: share of pixels per scale (largest first) %s", shares.tolist())
    return prior


def _agreement_scale_prior(pixels: RaySamples, relevancy: Tensor, trained: TrainedField, threshold: float) -> Tensor:
    """``[R_p]`` preferred scale of every pixel ray: the finest window the other views confirm."""
    from ovs3d.methods.threedovs.scale_prior import agreement_scales

    field = trained.field
    prior = agreement_scales(relevancy, pixels.xyz, pixels.weights, field.aabb.cpu(), field.grid_resolution, threshold)
    shares = prior.bincount(minlength=relevancy.shape[1]) / len(prior)
    logger.info("agreement scale prior: share of pixels per scale (largest first) %s", shares.tolist())
    return prior


def prepare_data(
    scene: Scene, trained: TrainedField, cfg, clip, dino, views: list[int], keep_raw_relevancy: bool = False
) -> SemanticData:
    """Features (cached), text embeddings, relevancy targets and the marched samples of every training ray.

    Args:
        scene: the scene.
        trained: the reconstructed field (its frozen density places the samples).
        cfg: the run's fit config (``features``, ``semantic``, ``cache_dir``).
        clip: CLIP backend.
        dino: DINO backend (None when the config reads no DINO).
        views: training views.
        keep_raw_relevancy: also keep the cosines before the per-view normalisation (``raw_relevancy``).
    """
    fcfg, scfg = cfg.features, cfg.semantic
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else None
    feats = clip_features(scene, clip, views, fcfg, cache_root)
    text = F.normalize(clip.encode_text(list(scene.classes)).float(), dim=-1)  # [C, D]
    k = scfg.samples_per_ray
    pixels = view_pixel_samples(trained, scene, list(feats.view_ids), fcfg.semantic_downscale, k)
    w, h = scene.image_size(fcfg.semantic_downscale)
    targets, rels, raws, rgbs = [], [], [], []
    for j, v in enumerate(feats.view_ids):
        t = normalized_clip_targets(feats[j])  # [h*w, S, D] float16
        rgb = torch.from_numpy(scene.load_image(v, fcfg.semantic_downscale))  # [h, w, 3]
        if scfg.target_filter_radius > 0:
            depth = pixels.depth[j * h * w : (j + 1) * h * w].reshape(h, w)
            t = edge_aware_targets(
                t, rgb, depth, scfg.target_filter_radius, scfg.target_filter_sigma_rgb, scfg.target_filter_sigma_depth
            )
        rel = L.segmentation_logits(t.float(), text)  # [h*w, S, C]
        rels.append(L.minmax_normalize(rel[None], dims=(1,))[0])  # per view, scale, class
        if keep_raw_relevancy:
            raws.append(rel)
        targets.append(t)
        rgbs.append(rgb.reshape(-1, 3))
    dfeats = dino_features(scene, dino, views, fcfg, cache_root) if needs_dino(scfg) else None
    scale_prior = None
    if scfg.selection_prior == "dino":
        scale_prior = _dino_scale_prior(scene, fcfg, scfg, dfeats, dino, views, feats.view_ids)
    relevancy = torch.cat(rels)  # [R_p, S, C]
    if scfg.selection_prior == "agreement":
        scale_prior = _agreement_scale_prior(pixels, relevancy, trained, scfg.selection_agreement)
    consensus = None
    if "consensus" in (scfg.balance_classes, scfg.rda_targets):
        consensus = consensus_relevancy(pixels, relevancy, trained)
    ray_weights = None
    if scfg.ray_sampling == "balanced":
        balance_from = consensus if scfg.balance_classes == "consensus" else relevancy
        ray_weights = balanced_ray_weights(balance_from, scale_prior, scfg.ray_balance_power)
    if scfg.skip_label_borders:
        n_views = len(feats.view_ids)
        border = label_border_rays(pseudo_classes(relevancy, scale_prior), n_views, (w, h))
        ray_weights = torch.ones(len(border)) if ray_weights is None else ray_weights.clone()
        ray_weights[border] = 0.0
        logger.info("label borders: %.1f%% of the pixel rays not drawn", 100 * float(border.float().mean()))
    if scfg.rda_targets == "consensus":
        n_views = len(feats.view_ids)
        relevancy = L.minmax_normalize(consensus.reshape(n_views, -1, *consensus.shape[1:]), dims=(1,)).reshape(
            consensus.shape
        )
    if scfg.use_fda:
        dino_t = torch.cat(
            [
                torch.from_numpy(np.array(dfeats[j], dtype=np.float32)).reshape(-1, dfeats[j].shape[-1])
                for j in range(len(dfeats))
            ]
        ).to(torch.float16)
        gh, gw = dfeats[0].shape[:2]
        # one ray per DINO cell of the image DINO saw (enlarged on small images: FeatureConfig.dino_min_cells)
        cells = view_token_samples(trained, scene, views, dfeats.settings["downscale"], dino.stride, k)
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
        view_ids=tuple(int(v) for v in feats.view_ids),
        view_size=scene.image_size(fcfg.semantic_downscale),
        downscale=fcfg.semantic_downscale,
        raw_relevancy=torch.cat(raws) if keep_raw_relevancy else None,
        clip_mean=mean_feature(targets) if centring_runs(scfg, scene.kind) else None,
    )


def mean_feature(targets: list[Tensor]) -> Tensor:
    """``[D]`` float32 mean over every row and scale of per-view unit features ``[h*w, S, D]``."""
    total = sum(t.float().sum(dim=(0, 1)) for t in targets)
    count = sum(t.shape[0] * t.shape[1] for t in targets)
    return total / max(count, 1)


def centring_runs(cfg: SemanticConfig, kind: str) -> bool:
    """Whether labels are centred on a scene of ``kind`` (``label_centering`` and ``kind`` in
    ``label_centering_kinds``); where not, no centre is computed and the run keeps raw cosines."""
    if cfg.label_centering and kind not in cfg.label_centering_kinds:
        logger.info("label centring is off on %s scenes (--semantic.label-centering-kinds)", kind)
    return cfg.label_centering and kind in cfg.label_centering_kinds


def crf_runs(cfg: SemanticConfig, kind: str) -> bool:
    """Whether predictions of whole views go through the dense CRF on a scene of ``kind`` (``crf_iters`` and
    ``kind`` in ``crf_kinds``)."""
    return cfg.crf_iters > 0 and kind in cfg.crf_kinds


def settings_for_kind(cfg: SemanticConfig, kind: str) -> SemanticConfig:
    """The settings a method trains and predicts with on a scene of ``kind``: the dense CRF off where it does not
    run (``crf_kinds``), likewise the fill of empty pixels (``empty_fill_kinds``). Stored as such in the
    semantic checkpoint, so that a loaded run needs no scene kind."""
    if cfg.crf_iters and not crf_runs(cfg, kind):
        logger.info("the dense CRF is off on %s scenes (--semantic.crf-kinds)", kind)
        cfg = replace(cfg, crf_iters=0)
    if cfg.empty_fill_opacity > 0 and kind not in cfg.empty_fill_kinds:
        logger.info("the fill of empty pixels is off on %s scenes (--semantic.empty-fill-kinds)", kind)
        cfg = replace(cfg, empty_fill_opacity=0.0)
    return cfg


def build_heads(trained: TrainedField, cfg: SemanticConfig, feature_dim: int, n_scales: int) -> SemanticHeads:
    """Fresh semantic heads sized for ``trained``."""
    return SemanticHeads(
        trained.field.aabb.cpu(),
        trained.field.grid_resolution,
        trained.config.app_dim,
        feature_dim,
        n_scales,
        cfg.mlp_width,
        cfg.select_components,
        cfg.feature_activation,
        seed=cfg.seed,
        semantic_components=cfg.semantic_components,
    )


def set_trainable(trained: TrainedField, joint: bool) -> None:
    """Freeze the field; in the joint phase unfreeze its appearance grids, basis and RGB MLP."""
    f = trained.field
    for p in f.parameters():
        p.requires_grad_(False)
    if joint:
        for p in [*f.app_planes, *f.app_lines, *f.basis_mat.parameters(), *f.rgb_mlp.parameters()]:
            p.requires_grad_(True)


class ThreeDOVS(SemanticMethod):
    """3D-OVS: CLIP feature distillation with a Selection Volume, RDA and FDA (``--method 3dovs``).

    Args:
        trained: the reconstructed field.
        cfg: the stage's settings.
        text: ``[C, D]`` label text features.
        device: torch device.
        feature_dim: CLIP dimension ``D``.
        n_scales: CLIP scales ``S``.
        data: training targets (None when loaded for use only).
    """

    name = "3dovs"
    config_type = SemanticConfig
    legacy_settings = LEGACY_SETTINGS
    summary_settings = (
        "rda_mode",
        "use_fda",
        "use_rda",
        "fda_rebalance",
        "ray_sampling",
        "label_centering",
        "label_centering_kinds",
        "crf_iters",
    )

    def __init__(
        self,
        trained: TrainedField,
        cfg: SemanticConfig,
        text: Tensor,
        device,
        feature_dim: int,
        n_scales: int,
        data: SemanticData | None = None,
    ) -> None:
        super().__init__(trained, cfg, text, device)
        self.feature_dim, self.n_scales = feature_dim, n_scales
        self.heads = build_heads(trained, cfg, feature_dim, n_scales).to(device)
        self.data = data
        self.clip_mean = None if data is None or data.clip_mean is None else data.clip_mean.to(device)
        self.render_labels: Tensor | None = None  # [R_p] int64 (label_ce_targets="render", after label_ce_start)

    @classmethod
    def needs(cls, cfg: SemanticConfig) -> set[str]:
        return {"clip", "dino"} if needs_dino(cfg) else {"clip"}

    @classmethod
    def prepare(cls, scene, trained, fit_cfg, backends, device) -> ThreeDOVS:
        views = scene.train_views(fit_cfg.holdout)
        data = prepare_data(scene, trained, fit_cfg, backends["clip"], backends.get("dino"), views)
        return cls.from_data(trained, settings_for_kind(fit_cfg.semantic, scene.kind), data, device)

    @classmethod
    def from_data(cls, trained: TrainedField, cfg: SemanticConfig, data: SemanticData, device="cpu") -> ThreeDOVS:
        """A method ready to train on prepared ``data``."""
        n_scales, dim = data.clip_targets.shape[1], data.clip_targets.shape[2]
        return cls(trained, cfg, data.text, device, dim, n_scales, data)

    # -- the loop's Stage ------------------------------------------------------------------------------

    def phase(self, step: int) -> int:
        """0 until ``joint_start``, then 1 (appearance and RGB join)."""
        return int(step >= self.cfg.joint_start)

    def enter_phase(self, phase: int) -> list[dict[str, Any]]:
        cfg, f = self.cfg, self.trained.field
        set_trainable(self.trained, bool(phase))
        groups = [
            {"params": self.heads.grid_parameters(), "lr": cfg.lr_grid},
            {"params": self.heads.network_parameters(), "lr": cfg.lr_net},
        ]
        if phase:
            groups += [
                {"params": [*f.app_planes, *f.app_lines], "lr": cfg.lr_app_joint},
                {"params": [*f.basis_mat.parameters(), *f.rgb_mlp.parameters()], "lr": cfg.lr_rgb_joint},
            ]
        return groups

    def lr_factor(self, step: int) -> float:
        return self.cfg.lr_decay_ratio ** (step / self.cfg.n_iters)

    def draw_rays(self, generator: torch.Generator) -> Tensor:
        """``[B]`` indices of this step's pixel rays (balanced or uniform draws)."""
        data, cfg = self.data, self.cfg
        if data.ray_weights is not None:
            return torch.multinomial(data.ray_weights, cfg.batch_size, replacement=True, generator=generator)
        return torch.randint(0, len(data.pixels), (cfg.batch_size,), generator=generator)

    def selection(self, out: dict[str, Tensor], n_rays: int) -> Tensor:
        """``[R, S]`` scale weights of rendered rays: the Selection Volume's softmax, or uniform without it."""
        if not self.cfg.use_selection:
            return torch.full((n_rays, self.n_scales), 1.0 / self.n_scales, device=self.device)
        return L.selection_softmax(out["select_raw"], self.cfg.selection_temperature)

    def target_selection(self, selection: Tensor, idx: Tensor) -> Tensor:
        """``[B, S]`` scale weights the targets of rays ``idx`` ``[B]`` are read with: the Selection Volume's
        ``selection`` ``[B, S]``, or one-hot at the prior's scale (``prior_targets``)."""
        if self.cfg.prior_targets and self.data.scale_prior is not None and self.cfg.use_selection:
            preferred = self.data.scale_prior[idx].to(self.device)
            return F.one_hot(preferred, selection.shape[-1]).to(selection.dtype)
        return selection

    def method_losses(
        self, out: dict[str, Tensor], selection: Tensor, idx: Tensor, step: int, generator: torch.Generator
    ) -> dict[str, tuple[float, Tensor]]:
        """This method's terms on the pixel batch: name -> (weight, loss). 3D-OVS: the DINO scale prior
        (optional) and RDA (Eq. 5–8)."""
        cfg, data, terms = self.cfg, self.data, {}
        if data.scale_prior is not None and cfg.selection_prior_weight > 0 and cfg.use_selection:
            preferred = data.scale_prior[idx].to(self.device)
            loss_sel = -torch.log(selection.gather(1, preferred[:, None]).clamp_min(1e-12)).mean()
            terms["sel"] = (cfg.selection_prior_weight, loss_sel)
        if cfg.use_rda and cfg.rda_weight > 0:
            logits = L.segmentation_logits(out["features"], self.text, normalize=cfg.rda_mode == "paper")
            logits = self.centred_for_training(logits, out["features"], normalized=cfg.rda_mode == "paper")
            rda_selection = self.target_selection(selection.detach() if cfg.rda_detach_selection else selection, idx)
            rel = L.relevancy_targets(data.relevancy[idx].to(self.device), rda_selection)
            loss_rda = L.rda_loss(logits, rel, mode=cfg.rda_mode, temperature=cfg.rda_temperature)
            terms["rda"] = (cfg.rda_weight, loss_rda)
        if cfg.label_ce_weight > 0 and (cfg.label_ce_targets == "relevancy" or self.render_labels is not None):
            terms["ce"] = (cfg.label_ce_weight, self.pseudo_class_loss(out["features"], idx))
        return terms

    def pseudo_class_loss(self, features: Tensor, idx: Tensor) -> Tensor:
        """Cross-entropy of the prediction of rendered features ``[B, D]`` against the classes of pixel rays
        ``idx`` ``[B]`` (``label_ce_weight``): ``score_scale`` × the centred cosines, as predicted, against the
        rays' pseudo-classes (``label_ce_targets="relevancy"``) or the field's last read-out (``"render"``)."""
        data = self.data
        if self.cfg.label_ce_targets == "render":
            classes = self.render_labels[idx].to(self.device)
        else:
            prior = None if data.scale_prior is None else data.scale_prior[idx]
            classes = pseudo_classes(data.relevancy[idx].float(), prior).to(self.device)
        logits = self.centred_for_training(L.segmentation_logits(features, self.text), features, normalized=True)
        return F.cross_entropy(logits * self.score_scale, classes)

    def callbacks(self) -> list[Callback]:
        cfg = self.cfg
        if cfg.label_ce_weight > 0 and cfg.label_ce_targets == "render":
            return [Callback(cfg.label_ce_every, self.update_render_labels, start=cfg.label_ce_start)]
        return []

    @torch.no_grad()
    def render_cached(self, samples: RaySamples, with_rgb: bool, chunk: int = 8192) -> dict[str, Tensor]:
        """Rays rendered from their cached ``samples`` (``R`` rays), on the CPU: the prediction ``logits`` ``[R, C]``
        (:meth:`prediction_logits`; the features are not kept), ``rgb`` ``[R, 3]`` (``with_rgb``) and ``depth``
        ``[R]``; the heads' training mode is kept."""
        was_training = self.heads.training
        self.heads.eval()
        outs: dict[str, list[Tensor]] = {"logits": [], "rgb": []}
        for i in range(0, len(samples), chunk):
            s = samples.index(torch.arange(i, min(i + chunk, len(samples)))).to(self.device)
            o = render_semantic_samples(self.trained, self.heads, s, with_select=False, with_rgb=with_rgb)
            outs["logits"].append(self.prediction_logits(o).float().cpu())
            if with_rgb:
                outs["rgb"].append(o["rgb"].clamp(0, 1).cpu())
        self.heads.train(was_training)
        out = {k: torch.cat(v) for k, v in outs.items() if v}
        out["depth"] = samples.depth.cpu()
        return out

    def update_render_labels(self, step: int) -> None:
        """``label_ce_targets="render"``: every training view's labels as ``eval`` reads them from its render."""
        if step >= self.cfg.n_iters:
            return
        w, h = self.data.view_size
        render = self.render_cached(self.data.pixels, with_rgb=True)
        labels = []
        for j in range(len(self.data.view_ids)):
            rows = slice(j * h * w, (j + 1) * h * w)
            view = as_view({k: v[rows] for k, v in render.items()}, h, w)
            labels.append(self.labels_from_logits(view["logits"], view).reshape(-1).cpu())
        new = torch.cat(labels)
        changed = 1.0 if self.render_labels is None else float((new != self.render_labels).float().mean())
        self.render_labels = new
        logger.info("label read-out at %d: %.1f%% of the training rays changed", step, 100 * changed)

    def fda_loss(self, generator: torch.Generator) -> Tensor:
        """FDA (Eq. 9–14) on ``n_patches`` random patches of DINO cells."""
        cfg, data = self.cfg, self.data
        n_views, gh, gw = data.cell_grid
        pidx = patch_indices(n_views, gh, gw, cfg.patch_cells, cfg.n_patches, generator)  # [B_p, P]
        cells = data.cells.index(pidx.reshape(-1)).to(self.device)
        feats = render_semantic_samples(self.trained, self.heads, cells, with_select=False, with_rgb=False)["features"]
        logits = self.centred_for_training(L.segmentation_logits(feats, self.text), feats, normalized=True)
        logits = logits.reshape(pidx.shape[0], pidx.shape[1], -1)
        dino = data.dino[pidx.reshape(-1)].to(self.device).float().reshape(pidx.shape[0], pidx.shape[1], -1)
        loss = L.fda_loss(
            logits,
            dino,
            tau=cfg.fda_tau,
            shift=cfg.fda_shift,
            w_pos=cfg.fda_w_pos,
            w_neg=cfg.fda_w_neg,
            divergence=cfg.fda_divergence,
            rebalance=cfg.fda_rebalance,
        )
        # Without rebalancing (Table 2) the plain correlation loss of Eq. 12 has no weights of its own: it is
        # scaled by lambda_pos, so that both pair kinds weigh as the similar pairs do with rebalancing.
        return loss if cfg.fda_rebalance else cfg.fda_w_pos * loss

    def loss(self, step: int, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """One step's total loss and its parts: Eq. 3, this method's terms, Eq. 14, RGB in the joint phase."""
        cfg, data = self.cfg, self.data
        joint = step >= cfg.joint_start
        idx = self.draw_rays(generator)
        batch = data.pixels.index(idx).to(self.device)
        out = render_semantic_samples(self.trained, self.heads, batch, with_select=cfg.use_selection, with_rgb=joint)
        selection = self.selection(out, len(idx))  # [B, S]
        feature_selection = self.target_selection(
            selection.detach() if cfg.feature_detach_selection else selection, idx
        )
        target = L.selected_features(data.clip_targets[idx].to(self.device).float(), feature_selection)
        loss = L.feature_loss(out["features"], target)
        parts = {"feat": loss.detach()}
        for name, (weight, term) in self.method_losses(out, selection, idx, step, generator).items():
            loss = loss + weight * term
            parts[name] = term.detach()
        if cfg.use_fda:
            loss_fda = self.fda_loss(generator)
            loss = loss + loss_fda
            parts["fda"] = loss_fda.detach()
        if joint and cfg.rgb_weight > 0:
            loss_rgb = torch.mean((out["rgb"] - data.rgb[idx].to(self.device)) ** 2)
            loss = loss + cfg.rgb_weight * loss_rgb
            parts["rgb"] = loss_rgb.detach()
        return loss, parts

    def state_dict(self) -> dict[str, Any]:
        return {
            "heads": self.heads.state_dict(),
            "field": self.trained.field.state_dict(),
            "text": self.text.cpu(),
            "feature_dim": self.feature_dim,
            "n_scales": self.n_scales,
            **({} if self.clip_mean is None else {"clip_mean": self.clip_mean.cpu()}),
            **({} if self.render_labels is None else {"render_labels": self.render_labels.to(torch.int16)}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.heads.load_state_dict(state["heads"])
        self.trained.field.load_state_dict(state["field"])
        if "render_labels" in state:
            self.render_labels = state["render_labels"].long()

    def freeze(self) -> None:
        set_trainable(self.trained, False)
        for p in self.heads.parameters():
            p.requires_grad_(False)
        self.heads.eval()

    # -- use -------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, trained: TrainedField, run: Path, device) -> ThreeDOVS:
        payload = load_checkpoint(semantic_checkpoint(run), kind="semantic")
        cfg = cls.config_from_dict(payload["config"])
        state = payload["state"]
        # Checkpoints written before these keys existed: the text features have the CLIP dimension.
        n_scales = int(state.get("n_scales", state["heads"]["select_basis.weight"].shape[0]))
        dim = int(state.get("feature_dim", state["text"].shape[-1]))
        method = cls(trained, cfg, state["text"], device, dim, n_scales)
        if "clip_mean" in state:  # runs stored before label_centering have none (and read it as False)
            method.clip_mean = state["clip_mean"].to(device)
        method.heads.load_state_dict(state["heads"])
        trained.field.load_state_dict(state["field"])
        method.load_extra_state(state)
        method.freeze()
        return method

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Method-specific state of a loaded checkpoint (none for 3D-OVS)."""

    def label_bias(self) -> Tensor | None:
        """``[C]`` the offsets ``μ·t_c`` of ``label_centering`` (None when off or not known)."""
        if not self.cfg.label_centering or self.clip_mean is None:
            return None
        return self.text @ self.clip_mean.to(self.text.device)

    def centred_for_training(self, logits: Tensor, feats: Tensor, normalized: bool) -> Tensor:
        """``[R, C]`` training logits of features ``[R, D]``, centred with ``label_centering`` (cosine logits
        minus ``μ·t_c``; unnormalised ones minus ``|f| μ·t_c``), else unchanged."""
        bias = self.label_bias()
        if bias is None:
            return logits
        return logits - (bias if normalized else feats.norm(dim=-1, keepdim=True) * bias)

    def prediction_logits(self, render: dict[str, Tensor]) -> Tensor:
        """``[..., C]`` cosines with the labels, centred with ``label_centering``: ``cos(f, t_c) − μ·t_c``."""
        logits, bias = self.label_logits(render), self.label_bias()
        return logits if bias is None else logits - bias.to(logits.device, logits.dtype)

    def predict_labels(self, render: dict[str, Tensor]) -> Tensor:
        """``[...]`` label indices; a whole rendered view (``[H, W, ...]``) goes through the dense CRF
        (``crf_iters``) guided by its own ``rgb`` and ``depth``, any other render takes the argmax."""
        return self.labels_from_logits(self.prediction_logits(render), render)

    def labels_from_logits(self, logits: Tensor, render: dict[str, Tensor]) -> Tensor:
        """``[...]`` label indices of prediction logits ``[..., C]`` of ``render`` (:meth:`predict_labels`): a
        whole view's empty pixels filled from their nearest surface (``empty_fill_opacity``), then the CRF."""
        cfg = self.cfg
        if cfg.empty_fill_opacity > 0 and logits.dim() == 3 and "acc" in render:
            from ovs3d.render.crf import fill_from_nearest

            logits = fill_from_nearest(logits, render["acc"].to(logits.device) >= cfg.empty_fill_opacity)
        if cfg.crf_iters > 0 and logits.dim() == 3 and "rgb" in render and "depth" in render:
            from ovs3d.render.crf import dense_crf

            q = dense_crf(
                logits.float() * self.score_scale,
                render["rgb"].to(logits.device),
                render["depth"].to(logits.device),
                cfg.crf_weight,
                cfg.crf_radius,
                cfg.crf_sigma_rgb,
                cfg.crf_sigma_depth,
                cfg.crf_iters,
            )
            return q.argmax(-1)
        return logits.argmax(-1)

    @torch.no_grad()
    def render_rays(self, rays_o: Tensor, rays_d: Tensor, near: float, chunk: int = 4096) -> dict[str, Tensor]:
        """Features ``[R, D]``, selection ``[R, S]`` (softmaxed), colour ``[R, 3]``, depth ``[R]`` (expected ray
        parameter) and opacity ``[R]`` of rays, each ray marched once; on the CPU."""
        outs: dict[str, list] = {"features": [], "selection": [], "rgb": [], "depth": [], "acc": []}
        for i in range(0, rays_o.shape[0], chunk):
            s = top_samples(self.trained, rays_o[i : i + chunk], rays_d[i : i + chunk], near, self.cfg.samples_per_ray)
            s = s.to(self.trained.device)
            o = render_semantic_samples(self.trained, self.heads, s, with_select=self.cfg.use_selection, with_rgb=True)
            outs["features"].append(o["features"].cpu())
            outs["selection"].append(self.selection(o, len(s)).cpu())
            outs["rgb"].append(o["rgb"].clamp(0, 1).cpu())
            outs["depth"].append(s.depth.cpu())
            outs["acc"].append(s.weights.sum(1).cpu())
        return {k: torch.cat(v) for k, v in outs.items()}
