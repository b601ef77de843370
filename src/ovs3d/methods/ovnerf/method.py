"""OV-NeRF's semantic stage (Liao et al., §III; Alg. 1): 3D-OVS's field with RSR targets and CSE updates.

* **RSR** (Eq. 5–7): each training view's 2D class map (argmax of its min–max-normalised multi-scale CLIP
  relevancy, scales combined by ``rsr_scales``) is regularised by that view's mask proposals: every mask
  takes its most-voted class (:func:`~ovs3d.methods.ovnerf.rsr.region_vote`), or by default (ours,
  ``rsr_class="crop"``) the class of its own CLIP crop
  (:func:`~ovs3d.methods.ovnerf.rsr.region_crop_classes`). The rendered class logits
  learn these maps by cross-entropy, beside 3D-OVS's feature and selection terms and FDA (RDA is off).
* **CSE** (Eq. 8–12): from ``cse_start`` on, every ``cse_every`` iterations, every training view is
  re-rendered (from its cached samples), its argmax map goes through RSR with the view's stored masks and
  replaces the view's targets; ``cse_novel_views`` novel cameras (a spiral around the training cameras of
  a forward-facing scene, an outward-looking circle around the free-space centre of a bounded one) are
  rendered, masks are proposed on their rendered RGB, RSR gives their targets, and a cross-entropy on
  novel-view rays joins the loss. Novel renders with too little opacity are skipped.

Everything else (schedule, phases, heads, FDA, rendering, prediction) is :class:`ThreeDOVS`'s.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ovs3d import losses as L
from ovs3d.foundation.base import ViewImage
from ovs3d.io.scene import Scene
from ovs3d.methods.loop import Callback
from ovs3d.methods.ovnerf.config import OVNeRFConfig
from ovs3d.methods.ovnerf.rsr import class_map_from_relevancy, region_crop_classes, region_vote
from ovs3d.methods.threedovs.method import (
    SemanticData,
    ThreeDOVS,
    class_balanced_weights,
    prepare_data,
    settings_for_kind,
)
from ovs3d.render.cached import RaySamples, render_semantic_samples, top_samples
from ovs3d.render.rays import pixel_grid
from ovs3d.render.scene_rays import camera_rays_in_field, ray_near

logger = logging.getLogger(__name__)


def novel_poses(scene: Scene, train_views: list[int], cfg: OVNeRFConfig) -> np.ndarray:
    """``[N+, 3, 4]`` OpenCV camera-to-world of CSE's novel views (normalised world).

    Forward-facing scenes: LLFF's spiral around the training cameras (every pose looks into the scene).
    Bounded scenes: OV-NeRF's outward-looking circle (:func:`~ovs3d.render.paths.panorama_poses`) around the
    mean training camera centre, radius ``cse_radius`` times the box's largest side. Unbounded (360°) scenes:
    an orbit around the object, as the training cameras.
    """
    from ovs3d.render.paths import free_space_center, orbit_path, panorama_poses, spiral_path, up_from_cameras

    c2w = np.asarray(scene.c2w)[train_views]
    if cfg.cse_novel_views <= 0:
        return np.zeros((0, 3, 4))
    if scene.kind == "forward":
        return spiral_path(c2w, np.asarray(scene.near_far)[train_views], cfg.cse_novel_views)
    if scene.kind == "unbounded":
        # 360° around an object (normalised to the origin): an orbit through the cameras' mean height looking
        # at it; an outward panorama from the cameras' centre would stand inside the object.
        return orbit_path(c2w, np.zeros(3), cfg.cse_novel_views)
    aabb = np.asarray(scene.aabb)
    radius = cfg.cse_radius * float(np.max(aabb[1] - aabb[0]))
    centre = free_space_center(c2w)
    return panorama_poses(centre, cfg.cse_novel_views, radius, cfg.cse_pitch_deg, up_from_cameras(c2w))


def cse_runs(cfg: OVNeRFConfig, kind: str) -> bool:
    """Whether CSE updates the targets of a scene of ``kind`` (``use_cse`` and ``kind`` in ``cse_kinds``)."""
    return cfg.use_cse and kind in cfg.cse_kinds


def void_balanced_weights(labels: Tensor, n_classes: int, power: float) -> Tensor:
    """Balanced draw weights ``[R]`` by pseudo-label ``[R]`` (void ``-1`` is a bucket of its own)."""
    buckets = torch.where(labels < 0, torch.full_like(labels, n_classes), labels)
    return class_balanced_weights(buckets, n_classes + 1, power)


def masked_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy ``[R, C]`` vs ``[R]`` over rays whose label is not void (-1); 0 if all are void."""
    valid = labels >= 0
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[valid], labels[valid])


class OVNeRF(ThreeDOVS):
    """OV-NeRF (``--method ovnerf``): :class:`ThreeDOVS` + RSR cross-entropy + CSE.

    Attributes (training only):
        labels: ``[R_p]`` int64 current pseudo label of every pixel ray (-1 = void, no loss).
        novel_labels: ``[R_n]`` int64 pseudo labels of the novel-view rays (-1 = void or skipped view).
    """

    name = "ovnerf"
    config_type = OVNeRFConfig
    # what runs made before a setting existed did: region votes with pixels, CSE on every kind of scene
    legacy_settings = {"rsr_class": "votes", "cse_kinds": ("forward", "bounded", "unbounded")}
    summary_settings = (*ThreeDOVS.summary_settings, "use_rsr", "use_cse", "cse_kinds")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.query_text = self.text  # CSE updates and predictions (ensembled prompts when asked)
        self.labels: Tensor | None = None
        self.novel_labels: Tensor | None = None
        self.proposals = None  # MaskProposals of the CLIP views (RSR)
        self.segments = None  # SegmentTiles of the CLIP views (rsr_class="crop")
        self.masks_backend = None
        self.scene: Scene | None = None
        self._novel_samples: RaySamples | None = None
        self._novel_c2w: np.ndarray | None = None
        self._novel_shape: tuple[int, int] = (0, 0)

    @classmethod
    def needs(cls, cfg: OVNeRFConfig) -> set[str]:
        return super().needs(cfg) | ({"masks"} if cfg.use_rsr else set())

    @classmethod
    def prepare(cls, scene, trained, fit_cfg, backends, device) -> OVNeRF:
        cfg: OVNeRFConfig = settings_for_kind(fit_cfg.semantic, scene.kind)
        views = scene.train_views(fit_cfg.holdout)
        keep_raw = cfg.rsr_relevancy != "view"  # RSR's 2D maps normalise the cosines themselves
        data = prepare_data(scene, trained, fit_cfg, backends["clip"], backends.get("dino"), views, keep_raw)
        method = cls.from_data(trained, cfg, data, device)
        method.scene, method.masks_backend = scene, backends.get("masks")
        if cfg.prompt_templates != "none":
            from ovs3d.foundation.prompts import encode_prompts

            method.query_text = encode_prompts(backends["clip"], list(scene.classes), cfg.prompt_templates).to(device)
        if cfg.use_rsr:
            from ovs3d.foundation.features import mask_proposals

            cache = Path(fit_cfg.cache_dir) if fit_cfg.cache_dir else None
            features = _masks_at_semantic_resolution(fit_cfg.features)
            t0 = time.perf_counter()
            method.proposals = mask_proposals(scene, method.masks_backend, list(data.view_ids), features, cache)
            method.stats["mask_seconds"] = round(time.perf_counter() - t0, 3)  # proposals (0 when cached)
        t0 = time.perf_counter()
        method.labels = method.cached_initial_labels(scene, fit_cfg, backends)
        method.stats["rsr_seconds"] = round(time.perf_counter() - t0, 3)  # 2D class maps + region votes
        method.stats["rsr_void_share"] = round(float((method.labels < 0).float().mean()), 4)
        if cfg.ray_sampling == "balanced":
            data.ray_weights = void_balanced_weights(method.labels, len(scene.classes), cfg.ray_balance_power)
        if cse_runs(cfg, scene.kind):
            if cfg.cse_novel_views > 0:
                method._novel_c2w = novel_poses(scene, views, cfg)
        elif cfg.use_cse:
            logger.info("CSE is off on %s scenes (--semantic.cse-kinds %s)", scene.kind, " ".join(cfg.cse_kinds))
        return method

    def initial_labels(self, data: SemanticData) -> Tensor:
        """``[R_p]`` RSR maps of the 2D class maps of every CLIP view (raw maps without RSR); with
        ``rsr_class="crop"`` each region takes its crop's class instead of its pixels' majority."""
        cfg = self.cfg
        if not (cfg.use_rsr and cfg.rsr_class == "crop"):
            return self._rsr(class_map_from_relevancy(self.relevancy_2d(data), cfg.rsr_scales))
        seg, (w, h) = self.segments, data.view_size
        text = self.text.float().cpu()  # [C, D]
        cosines = [
            L.segmentation_logits(torch.from_numpy(np.asarray(seg.embeddings[j], np.float32)), text)
            for j in range(len(seg))
        ]
        keep = None  # pixels in no region: void, or their 2D class
        if cfg.rsr_uncovered == "keep":
            keep = class_map_from_relevancy(self.relevancy_2d(data), cfg.rsr_scales).reshape(-1, h, w)
        return region_crop_classes([seg.partition(j) for j in range(len(seg))], cosines, keep).reshape(-1)

    def _load_segments(self, scene: Scene, fit_cfg, backends: dict) -> None:
        """The region crops of every CLIP view (``rsr_class="crop"``), cached with the features."""
        from ovs3d.foundation.pyramid import PyramidConfig, segment_tiles

        t0 = time.perf_counter()
        cache = Path(fit_cfg.cache_dir) if fit_cfg.cache_dir else None
        views, pyramid = list(self.data.view_ids), PyramidConfig(downscale=self.data.downscale)
        self.segments = segment_tiles(scene, backends["clip"], self.masks_backend, views, pyramid, cache)
        self.stats["crop_seconds"] = round(time.perf_counter() - t0, 3)  # region crops (0 when cached)

    def cached_initial_labels(self, scene: Scene, fit_cfg, backends: dict) -> Tensor:
        """:meth:`initial_labels`, stored in the scene's feature cache beside the features and masks they come
        from (int16 per view; the key holds the labels, the backends, the feature and RSR settings and the
        view set, since the scene-level normalisation reads every view)."""
        from dataclasses import asdict

        from ovs3d.foundation.cache import FeatureCache
        from ovs3d.foundation.features import default_cache_root, view_files

        cfg, data = self.cfg, self.data
        w, h = data.view_size
        computed: dict[str, Tensor] = {}

        def compute(j: int) -> np.ndarray:
            if "labels" not in computed:
                if cfg.use_rsr and cfg.rsr_class == "crop" and self.segments is None:
                    self._load_segments(scene, fit_cfg, backends)  # only when the maps are not cached
                computed["labels"] = self.initial_labels(data)
            return computed["labels"][j * h * w : (j + 1) * h * w].reshape(h, w).numpy().astype(np.int16)

        masks = backends.get("masks")
        identity = f"{backends['clip'].identity}+{masks.identity if masks is not None and cfg.use_rsr else 'none'}"
        settings = {
            "labels": list(scene.classes),
            "size": [w, h],
            "features": asdict(fit_cfg.features),
            "rsr": {
                k: getattr(cfg, k) for k in ("use_rsr", "rsr_relevancy", "rsr_scales", "rsr_uncovered", "rsr_class")
            },
        }
        root = Path(fit_cfg.cache_dir) if fit_cfg.cache_dir else default_cache_root(scene)
        views = view_files(scene, list(data.view_ids))
        cached = FeatureCache(root).get_or_compute("rsr", identity, settings, views, compute, "int16", "RSR maps")
        return torch.cat(
            [torch.from_numpy(np.asarray(cached[j], dtype=np.int64)).reshape(-1) for j in range(len(cached))]
        )

    def relevancy_2d(self, data: SemanticData) -> Tensor:
        """``[R_p, S, C]`` the relevancy the 2D class maps come from (``rsr_relevancy``)."""
        if self.cfg.rsr_relevancy == "view":
            return data.relevancy
        if self.cfg.rsr_relevancy == "raw":
            return data.raw_relevancy
        return L.minmax_normalize(data.raw_relevancy[None], dims=(1,))[0]  # per scale and label over all pixels

    def _rsr(self, class_maps: Tensor) -> Tensor:
        """Region vote of ``[R_p]`` per-view class maps with each view's stored masks (identity without RSR)."""
        if not self.cfg.use_rsr:
            return class_maps.clone()
        w, h = self.data.view_size
        out = class_maps.clone()
        for j in range(len(self.data.view_ids)):
            rows = slice(j * h * w, (j + 1) * h * w)
            out[rows] = region_vote(class_maps[rows].reshape(h, w), self.proposals[j], self.cfg.rsr_uncovered).reshape(
                -1
            )
        return out

    # -- losses ----------------------------------------------------------------------------------------

    def _logits(self, features: Tensor) -> Tensor:
        return L.segmentation_logits(features, self.text, normalize=self.cfg.rsr_logits == "cosine")

    def method_losses(self, out, selection, idx, step, generator) -> dict[str, tuple[float, Tensor]]:
        """3D-OVS's optional terms (RDA off by default), the RSR cross-entropy and, after T, the novel-view
        cross-entropy."""
        terms = super().method_losses(out, selection, idx, step, generator)
        cfg = self.cfg
        if cfg.rsr_weight > 0:
            terms["rsr"] = (
                cfg.rsr_weight,
                masked_cross_entropy(self._logits(out["features"]), self.labels[idx].to(self.device)),
            )
        novel = self._novel_batch(generator) if step >= cfg.cse_start else None
        if novel is not None and cfg.cse_novel_weight > 0:
            samples, labels = novel
            feats = render_semantic_samples(self.trained, self.heads, samples, with_select=False, with_rgb=False)
            terms["novel"] = (cfg.cse_novel_weight, masked_cross_entropy(self._logits(feats["features"]), labels))
        return terms

    def _novel_batch(self, generator: torch.Generator) -> tuple[RaySamples, Tensor] | None:
        """A batch of novel-view rays with a target, or None before CSE made any."""
        if self.novel_labels is None:
            return None
        valid = (self.novel_labels >= 0).nonzero()[:, 0]
        if len(valid) == 0:
            return None
        pick = valid[torch.randint(0, len(valid), (self.cfg.batch_size,), generator=generator)]
        return self.novel_samples().index(pick).to(self.device), self.novel_labels[pick].to(self.device)

    # -- CSE -------------------------------------------------------------------------------------------

    def callbacks(self) -> list[Callback]:
        cfg = self.cfg
        if self.scene is None or not cse_runs(cfg, self.scene.kind) or cfg.cse_every <= 0:
            return super().callbacks()
        return [*super().callbacks(), Callback(cfg.cse_every, self.update_targets, start=cfg.cse_start)]

    def novel_samples(self) -> RaySamples:
        """Cached samples of every novel view's pixel rays at the semantic resolution (density is frozen)."""
        if self._novel_samples is None:
            scene, ds = self.scene, self.data.downscale
            w, h = scene.image_size(ds)
            u, v = pixel_grid(w, h)
            intr = scene.intrinsics_at(ds)[self.data.view_ids[0]]
            parts = []
            for c2w in self._novel_c2w:
                o, d = camera_rays_in_field(scene, c2w, intr, ds, u, v)
                parts.append(top_samples(self.trained, o, d, ray_near(scene), self.cfg.samples_per_ray))
            self._novel_samples = RaySamples.cat(parts)
            self._novel_shape = (h, w)
        return self._novel_samples

    def _render_classes(self, samples: RaySamples, with_rgb: bool) -> dict[str, Tensor]:
        out = self.render_cached(samples, with_rgb)  # its logits: cosines with the (ensembled) query features
        out["classes"] = out.pop("logits").argmax(-1)
        return out

    def update_targets(self, step: int) -> None:
        """One CSE update (Alg. 1): re-render the training views' targets and the novel views' targets."""
        if step >= self.n_iters:
            return
        t0 = time.perf_counter()
        classes = self._render_classes(self.data.pixels, with_rgb=False)["classes"]  # in eval mode, kept after
        new = self._rsr(classes)
        changed = float((new != self.labels).float().mean())
        self.labels = new
        kept = self._update_novel() if self._novel_c2w is not None and len(self._novel_c2w) else 0
        seconds = round(time.perf_counter() - t0, 2)
        update = {"step": step, "changed": round(changed, 4), "novel_views": kept, "seconds": seconds}
        self.stats.setdefault("cse_updates", []).append(update)
        logger.info("CSE at %d: %.1f%% of the training targets changed, %d novel views kept", step, 100 * changed, kept)

    def _update_novel(self) -> int:
        samples = self.novel_samples()
        h, w = self._novel_shape
        out = self._render_classes(samples, with_rgb=True)
        acc = samples.weights.sum(1).reshape(len(self._novel_c2w), h * w)  # opacity of every novel ray
        labels = torch.full((len(samples),), -1, dtype=torch.long)
        kept = 0
        for p in range(len(self._novel_c2w)):
            if float(acc[p].mean()) < self.cfg.cse_min_opacity:
                continue
            rows = slice(p * h * w, (p + 1) * h * w)
            class_map = out["classes"][rows].reshape(h, w)
            if self.cfg.use_rsr:
                rgb = out["rgb"][rows].reshape(h, w, 3).numpy().astype(np.float32)
                masks = self.masks_backend.propose(ViewImage(stem=None, rgb=rgb))
                class_map = region_vote(class_map, masks, self.cfg.rsr_uncovered)
            labels[rows] = class_map.reshape(-1)
            kept += 1
        if kept == 0 and self.novel_labels is None:
            logger.warning(
                "CSE: none of the %d novel views sees enough of the scene (mean opacity < %.2f): novel views "
                "are off for this run (lower --semantic.cse-min-opacity or change --semantic.cse-radius)",
                len(self._novel_c2w),
                self.cfg.cse_min_opacity,
            )
        self.novel_labels = labels
        return kept

    # -- state -----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["query_text"] = self.query_text.cpu()
        if self.labels is not None:
            state["labels"] = self.labels.to(torch.int16)
        if self.novel_labels is not None:
            state["novel_labels"] = self.novel_labels.to(torch.int16)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.load_extra_state(state)
        if "labels" in state:
            self.labels = state["labels"].long()
        if "novel_labels" in state:
            self.novel_labels = state["novel_labels"].long()

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "query_text" in state:
            self.query_text = state["query_text"].to(self.device)

    def label_logits(self, render: dict[str, Tensor], text: Tensor | None = None) -> Tensor:
        """Cosine relevancy ``[..., C]``; the labels' text features are the (ensembled) query features."""
        return super().label_logits(render, self.query_text if text is None else text)


def _masks_at_semantic_resolution(features):
    """The feature settings with masks proposed at the CLIP targets' resolution (RSR votes per pixel ray)."""
    from dataclasses import replace

    return replace(features, mask_downscale=None)
