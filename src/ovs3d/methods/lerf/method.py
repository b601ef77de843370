"""``--method lerf``: LERF's scale-conditioned language field, with the panoptic prior of Ji et al.

Training (LERF's released code, facts B.2): for every step ``batch_size`` pixel rays of the training views
(at the semantic resolution, each marched once through the frozen density, its ``k`` heaviest samples kept,
:mod:`ovs3d.render.cached`); per ray a level bin ``b`` in ``0..L-2`` and ``u`` in [0, 1): the target is the
CLIP pyramid interpolated at the pixel on levels ``b`` and ``b+1`` and lerped by ``u``
(:class:`~ovs3d.foundation.pyramid.ClipPyramid`), and every sample of the ray is conditioned on the world
scale ``s = (b + u)/(L-1) · H/f_y · depth`` (the tile's size projected to the sample's camera depth). The
ray's feature is ``normalize(Σ w_i normalize(CLIP(x_i, s_i)))`` with the fixed compositing weights (density
is frozen: no language gradient reaches it). Loss: ``0.1 · Σ_dims Huber_1.25`` (release) or ``−0.01 · cos``
(paper), plus LERF's DINO regulariser.

Query (facts B.4): every sample is evaluated at each of ``query_scales`` constant world scales
``linspace(0, max_scale, n)`` (no depth factor), the scale whose highest relevancy over the image is highest
wins per query (:func:`ovs3d.relevancy.best_scale_relevancy`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ovs3d.field.language import LanguageField
from ovs3d.field.trained import TrainedField
from ovs3d.foundation.features import dino_features
from ovs3d.io.scene import Scene
from ovs3d.methods.base import SemanticMethod, semantic_checkpoint
from ovs3d.methods.lerf.config import LERFConfig
from ovs3d.relevancy import CANONICAL_NEGATIVES
from ovs3d.render.cached import RaySamples, packed, top_samples, view_pixel_samples
from ovs3d.render.scene_rays import camera_depth
from ovs3d.render.volume import accumulate_packed
from ovs3d.utils.files import load_checkpoint

logger = logging.getLogger(__name__)


@dataclass
class LanguageData:
    """What a LERF training step reads.

    Attributes:
        pixels: samples of the training views' pixel rays ``R`` (semantic resolution, row-major per view).
        depth: ``[R, K]`` camera depth of each kept sample (normalised world units).
        scale_unit: ``[R]`` ``H / f_y`` of each ray's view (the world size of a tile of height ``H`` at depth 1).
        pyramid: the CLIP pyramid of the training views (with the prior applied).
        view_pos: ``[R]`` int64 position of each ray's view in the pyramid.
        pyr_xy: ``[R, 2]`` float32 pixel-index coordinates of each ray's pixel at the pyramid's resolution.
        dino: ``[R, D_dino]`` float16 DINO target of each ray (nearest cell), or None.
        view_ids: the training views, in order.
    """

    pixels: RaySamples
    depth: Tensor
    scale_unit: Tensor
    pyramid: Any
    view_pos: Tensor
    pyr_xy: Tensor
    dino: Tensor | None
    view_ids: tuple[int, ...]


def pixel_to_grid(n_out: int, n_in: int) -> Tensor:
    """``[n_in]`` pixel-index coordinates at a resolution with ``n_out`` pixels of the centres of ``n_in``
    pixels covering the same extent (pixel ``i`` has centre ``i``)."""
    return (torch.arange(n_in, dtype=torch.float32) + 0.5) * (n_out / n_in) - 0.5


def scale_unit(scene: Scene, view: int) -> float:
    """``H / f_y`` of a view: the world size at depth 1 of a tile as tall as the image."""
    return float(scene.image_size(1.0)[1] / scene.intrinsics_at(1.0)[view][1])


def prepare_language_data(scene: Scene, trained: TrainedField, fit_cfg, backends: dict[str, Any]) -> LanguageData:
    """Pyramid (cached), DINO targets (cached) and the marched samples of every training pixel ray."""
    from ovs3d.foundation.pyramid import PyramidConfig, load_pyramid

    cfg: LERFConfig = fit_cfg.semantic
    fcfg = fit_cfg.features
    cache_root = Path(fit_cfg.cache_dir) if fit_cfg.cache_dir else None
    views = scene.train_views(fit_cfg.holdout)
    pcfg = PyramidConfig(
        tile_ratios=tuple(cfg.tile_ratios),
        downscale=cfg.pyramid_downscale,
        tolerance=cfg.prior_tolerance,
        prior=cfg.prior,
    )
    pyramid = load_pyramid(scene, backends["clip"], views, pcfg, cache_root, backends.get("masks"))
    ds = fcfg.semantic_downscale
    w, h = scene.image_size(ds)
    pw, ph = scene.image_size(cfg.pyramid_downscale)
    pixels = view_pixel_samples(trained, scene, views, ds, cfg.samples_per_ray)
    n = w * h
    gx, gy = pixel_to_grid(pw, w), pixel_to_grid(ph, h)
    yy, xx = torch.meshgrid(gy, gx, indexing="ij")
    xy = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)  # [h*w, 2]
    depth = torch.cat([camera_depth(scene, v, pixels.xyz[j * n : (j + 1) * n]) for j, v in enumerate(views)])
    units = torch.cat([torch.full((n,), scale_unit(scene, v)) for v in views])
    dino = None
    if cfg.use_dino:
        dfeats = dino_features(scene, backends["dino"], views, fcfg, cache_root)
        parts = []
        for j in range(len(views)):
            grid = torch.from_numpy(np.array(dfeats[j], dtype=np.float16))  # [gh, gw, Dd]
            gh, gw = grid.shape[:2]
            rows = ((torch.arange(h) + 0.5) * gh / h).long().clamp(max=gh - 1)
            cols = ((torch.arange(w) + 0.5) * gw / w).long().clamp(max=gw - 1)
            parts.append(grid[rows[:, None], cols[None, :]].reshape(n, -1))
        dino = torch.cat(parts)
    return LanguageData(
        pixels=pixels,
        depth=depth,
        scale_unit=units,
        pyramid=pyramid,
        view_pos=torch.arange(len(views)).repeat_interleave(n),
        pyr_xy=xy.repeat(len(views), 1),
        dino=dino,
        view_ids=tuple(int(v) for v in views),
    )


def training_scale_max(data: LanguageData, quantile: float = 0.99) -> float:
    """The ``quantile`` of the largest world scale of the samples the field trains on (``H/f_y · depth``),
    weighted by compositing weight (what ``max_query_scale=None`` uses)."""
    w = data.pixels.weights
    s = (data.scale_unit[:, None] * data.depth).clamp_min(0)
    keep = w > 0
    vals, wts = s[keep], w[keep].double()
    if vals.numel() == 0:
        return 1.0
    order = vals.argsort()
    cdf = wts[order].cumsum(0) / wts.sum()
    i = int(torch.searchsorted(cdf, torch.tensor([quantile], dtype=cdf.dtype)).clamp(max=len(order) - 1))
    return float(vals[order][i])


def huber_loss(pred: Tensor, target: Tensor, delta: float) -> Tensor:
    """``[B]`` Huber loss summed over the last dimension (LERF's ``Σ_dims Huber_δ``)."""
    return F.huber_loss(pred, target, delta=delta, reduction="none").sum(-1)


class LERF(SemanticMethod):
    """LERF with the panoptic prior (``--method lerf``).

    Args:
        trained: the reconstructed field (frozen).
        cfg: the method's settings.
        text: ``[C, D]`` unit label text embeddings (LERF: the prompts as given, no templates).
        negatives: ``[N, D]`` unit embeddings of the canonical negatives.
        device: torch device.
        dino_dim: DINO dimension (0: no DINO head).
        scale_max: the largest world scale tried at query time.
        data: training data (None when loaded for use).
    """

    name = "lerf"
    config_type = LERFConfig
    summary_settings = ("prior", "clip_loss", "use_dino", "n_iters", "query_scales")
    score_scale = 10.0  # the logits are relevancies in [0, 1]; LERF's temperature on them

    def __init__(
        self,
        trained: TrainedField,
        cfg: LERFConfig,
        text: Tensor,
        negatives: Tensor,
        device,
        dino_dim: int,
        scale_max: float,
        data: LanguageData | None = None,
    ) -> None:
        super().__init__(trained, cfg, text, device)
        self.negatives = negatives.to(device)
        self.dino_dim, self.scale_max = int(dino_dim), float(scale_max)
        f = trained.field
        self.language = LanguageField(
            f.aabb.cpu(),
            f.grid_resolution,
            cfg.grid_levels,
            cfg.grid_components,
            text.shape[-1],
            self.dino_dim,
            cfg.clip_width,
            cfg.clip_layers,
            cfg.dino_width,
            seed=cfg.seed,
        ).to(device)
        self.data = data
        for p in trained.field.parameters():
            p.requires_grad_(False)

    @classmethod
    def needs(cls, cfg: LERFConfig) -> set[str]:
        out = {"clip"}
        if cfg.use_dino:
            out.add("dino")
        if cfg.prior != "none":
            out.add("masks")
        return out

    @classmethod
    def prepare(cls, scene, trained, fit_cfg, backends, device) -> LERF:
        cfg: LERFConfig = fit_cfg.semantic
        clip = backends["clip"]
        data = prepare_language_data(scene, trained, fit_cfg, backends)
        text = F.normalize(clip.encode_text(list(scene.classes)).float(), dim=-1)
        negatives = F.normalize(clip.encode_text(list(CANONICAL_NEGATIVES)).float(), dim=-1)
        dino_dim = 0 if data.dino is None else data.dino.shape[-1]
        scale_max = cfg.max_query_scale if cfg.max_query_scale is not None else training_scale_max(data)
        logger.info("LERF query scales: 0 .. %.3f (%d)", scale_max, cfg.query_scales)
        return cls(trained, cfg, text, negatives, device, dino_dim, scale_max, data)

    # -- the loop's Stage ------------------------------------------------------------------------------

    def phase(self, step: int) -> int:
        return 0

    def enter_phase(self, phase: int) -> list[dict[str, Any]]:
        return [{"params": list(self.language.parameters()), "lr": self.cfg.lr}]

    def make_optimizer(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        """LERF's RAdam (eps 1e-15, weight decay 1e-9)."""
        return torch.optim.RAdam(groups, eps=1e-15, weight_decay=self.cfg.weight_decay)

    def lr_factor(self, step: int) -> float:
        cfg = self.cfg
        return (cfg.lr_final / cfg.lr) ** (step / max(cfg.n_iters, 1))

    def loss(self, step: int, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """CLIP loss at a random pyramid scale per ray, plus the DINO regulariser."""
        cfg, data, dev = self.cfg, self.data, self.device
        n_rays = len(data.pixels)
        idx = torch.randint(0, n_rays, (cfg.batch_size,), generator=generator)
        n_bins = data.pyramid.n_levels - 1
        level = torch.randint(0, n_bins, (cfg.batch_size,), generator=generator)
        u = torch.rand(cfg.batch_size, generator=generator)
        batch = data.pixels.index(idx)
        keep = batch.weights > 0  # [B, K]
        pts, w, ray = packed(batch)
        s_img = data.pyramid.scale_value(level, u)  # [B] LERF's normalised position in the tile range
        scale = (s_img[:, None] * data.scale_unit[idx][:, None] * data.depth[idx])[keep]  # [M]
        enc = self.language.encode(pts.to(dev))
        clip = self.language.clip(enc, scale.to(dev))
        feat = F.normalize(accumulate_packed(w.to(dev), clip, ray.to(dev), cfg.batch_size), dim=-1)  # [B, D]
        xy = data.pyr_xy[idx]
        target = data.pyramid.target(data.view_pos[idx], xy[:, 0], xy[:, 1], level, u).to(dev).float()
        valid = keep.any(1).to(dev)  # rays through empty space have no feature (LERF: nanmean)
        if cfg.clip_loss == "huber":
            per_ray = huber_loss(feat, target, cfg.huber_delta)
        else:
            per_ray = -F.cosine_similarity(feat, target, dim=-1)
        loss_clip = per_ray[valid].mean() if valid.any() else per_ray.sum() * 0
        loss = cfg.clip_loss_weight * loss_clip
        parts = {"clip": loss_clip.detach()}
        if data.dino is not None and cfg.dino_weight > 0:
            dino = accumulate_packed(w.to(dev), self.language.dino(enc), ray.to(dev), cfg.batch_size)
            loss_dino = ((dino - data.dino[idx].to(dev).float()) ** 2).sum(-1)[valid].mean()
            loss = loss + cfg.dino_weight * loss_dino
            parts["dino"] = loss_dino.detach()
        return loss, parts

    def state_dict(self) -> dict[str, Any]:
        return {
            "language": self.language.state_dict(),
            "text": self.text.cpu(),
            "negatives": self.negatives.cpu(),
            "dino_dim": self.dino_dim,
            "scale_max": self.scale_max,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.language.load_state_dict(state["language"])

    def freeze(self) -> None:
        for p in self.language.parameters():
            p.requires_grad_(False)
        self.language.eval()

    # -- use -------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, trained: TrainedField, run: Path, device) -> LERF:
        payload = load_checkpoint(semantic_checkpoint(run), kind="semantic")
        cfg = cls.config_from_dict(payload["config"])
        s = payload["state"]
        method = cls(trained, cfg, s["text"], s["negatives"], device, int(s["dino_dim"]), float(s["scale_max"]))
        method.language.load_state_dict(s["language"])
        method.freeze()
        return method

    @property
    def scales(self) -> Tensor:
        """``[S]`` the world scales tried per query: ``linspace(0, scale_max, query_scales)``."""
        return torch.linspace(0.0, self.scale_max, self.cfg.query_scales)

    @torch.no_grad()
    def render_rays(self, rays_o: Tensor, rays_d: Tensor, near: float, chunk: int = 2048) -> dict[str, Tensor]:
        """Colour ``[R, 3]``, depth ``[R]``, opacity ``[R]`` and ``language`` ``[R, S, D]`` (bfloat16 unit
        features at each query scale; ``S = query_scales``) of rays, each marched once; on the CPU."""
        field = self.trained.field
        outs: dict[str, list] = {"rgb": [], "depth": [], "acc": [], "language": []}
        scales = self.scales.to(self.device)
        for i in range(0, rays_o.shape[0], chunk):
            s = top_samples(self.trained, rays_o[i : i + chunk], rays_d[i : i + chunk], near, self.cfg.samples_per_ray)
            s = s.to(self.device)
            n = len(s)
            pts, w, ray = packed(s)
            app = field.app_features(pts)
            outs["rgb"].append(accumulate_packed(w, field.rgb(app, s.viewdirs[ray]), ray, n).clamp(0, 1).cpu())
            outs["depth"].append(s.depth.cpu())
            outs["acc"].append(s.weights.sum(1).cpu())
            enc = self.language.encode(pts)
            per_scale = []
            for sc in scales:
                clip = self.language.clip(enc, sc.expand(pts.shape[0]))
                per_scale.append(F.normalize(accumulate_packed(w, clip, ray, n), dim=-1).to(torch.bfloat16).cpu())
            outs["language"].append(torch.stack(per_scale, 1))  # [n, S, D]
        return {k: torch.cat(v) for k, v in outs.items()}

    def language_features(self, render: dict[str, Tensor]) -> Tensor:
        """``[..., S, D]`` the rendered features at every query scale (as stored: no copy)."""
        return render["language"]

    def label_logits(self, render: dict[str, Tensor], text: Tensor | None = None) -> Tensor:
        """``[..., C]`` relevancy of the labels (or ``text``) with the best scale per label over the render."""
        return self.relevancy(render, self.text if text is None else text, self.negatives)

    def predict_labels(self, render: dict[str, Tensor]) -> Tensor:
        """``[...]`` argmax over the labels' relevancy (each at its best scale for the image)."""
        return self.label_logits(render).argmax(-1)
