"""The method seam: what a semantic method is, and the run of any method from targets to predictions.

A semantic method (3D-OVS, OV-NeRF, ...) is a subclass of :class:`SemanticMethod` with its own typed
config. It says which foundation models it needs, prepares its targets from a reconstructed field, trains
as a :class:`~ovs3d.methods.loop.Stage` in the one training loop (its parameter groups per phase, its loss
per step, its callbacks), and renders rays and turns a render into labels or relevancy. The run layer
(:mod:`ovs3d.run`) finds methods by name in :mod:`ovs3d.methods.registry`, calls :func:`fit_method` and
the method's ``load``, and scores and writes what a method predicts.
"""

from __future__ import annotations

import abc
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from ovs3d.field.trained import TrainedField
from ovs3d.io.scene import Scene
from ovs3d.methods.loop import Callback, LoopSettings, run_stage
from ovs3d.methods.reconstruction import CHECKPOINT_NAME as RECON_CKPT
from ovs3d.methods.reconstruction import load_trained_field
from ovs3d.render.scene_rays import ray_near, view_rays
from ovs3d.utils.files import load_checkpoint

SEMANTIC_CHECKPOINT = "semantic.pt"


class SemanticMethod(abc.ABC):
    """A semantic method over a frozen-geometry field; also the loop's :class:`~ovs3d.methods.loop.Stage`.

    Attributes:
        name: registry name (``--method``).
        config_type: the method's config dataclass (``FitConfig.semantic`` holds one).
        trained: the reconstructed field (its appearance may train in a joint phase).
        cfg: the method's config.
        text: ``[C, D]`` normalised text features of the scene's labels.
    """

    name: ClassVar[str]
    config_type: ClassVar[type]
    summary_settings: ClassVar[tuple[str, ...]] = ()
    """Settings recorded in ``metrics.json`` (what a reader comparing runs looks for first)."""
    legacy_settings: ClassVar[dict[str, Any]] = {}
    """What settings added to ``config_type`` later meant before they existed (read into older runs)."""
    kind = "semantic"
    score_scale: ClassVar[float] = 100.0
    """Factor on :meth:`label_logits` before the softmax of :meth:`label_scores` (CLIP's logit scale, for cosines)."""

    def __init__(self, trained: TrainedField, cfg: Any, text: Tensor, device) -> None:
        self.trained, self.cfg, self.device = trained, cfg, device
        self.text = text.to(device)
        self.n_iters = int(cfg.n_iters)
        self.stats: dict[str, Any] = {"train_seconds": 0.0}

    # -- what the method needs -------------------------------------------------------------------------

    @classmethod
    def config_from_dict(cls, data: dict) -> Any:
        """The method's config from its stored dictionary (missing settings: :attr:`legacy_settings`, then defaults)."""
        from ovs3d.utils.config import config_from_dict

        return config_from_dict(cls.config_type, data, cls.legacy_settings)

    @classmethod
    def needs(cls, cfg: Any) -> set[str]:
        """Foundation models the method reads: a subset of ``{"clip", "dino", "masks"}``."""
        return {"clip"}

    @classmethod
    def check_scene(cls, scene: Scene) -> None:
        """Raise :class:`~ovs3d.errors.OVS3DError` if the method cannot run on ``scene``."""
        if not scene.classes:
            from ovs3d.errors import OVS3DError

            raise OVS3DError(
                f"{scene.root} has no segmentations/classes.txt: {cls.name} needs the label prompts "
                "(one text label per line)"
            )

    # -- training --------------------------------------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def prepare(
        cls, scene: Scene, trained: TrainedField, fit_cfg: Any, backends: dict[str, Any], device
    ) -> SemanticMethod:
        """Targets (features, cached ray samples, pseudo labels) and fresh parameters, ready to train."""

    def callbacks(self) -> list[Callback]:
        """Callbacks of the training loop (e.g. target updates every N steps)."""
        return []

    def before_step(self, step: int, generator: torch.Generator) -> None:  # noqa: B027 (optional hook)
        """Nothing by default."""

    @abc.abstractmethod
    def freeze(self) -> None:
        """Stop every parameter from training (after the loop, and when loaded for use)."""

    # -- use -------------------------------------------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def load(cls, trained: TrainedField, run: Path, device) -> SemanticMethod:
        """The trained method of a run folder (updates ``trained`` where the method fine-tuned it)."""

    @abc.abstractmethod
    def render_rays(self, rays_o: Tensor, rays_d: Tensor, near: float) -> dict[str, Tensor]:
        """Render rays ``[R, 3]``: at least ``features`` ``[R, D]``, ``rgb`` ``[R, 3]``, ``depth`` ``[R]``."""

    def label_logits(self, render: dict[str, Tensor], text: Tensor | None = None) -> Tensor:
        """``[..., C]`` cosine of the rendered features with ``text`` ``[C, D]`` (default: the labels)."""
        from ovs3d.losses import segmentation_logits

        t = self.text if text is None else text
        feats = render["features"]
        return segmentation_logits(feats.to(t.device), t)

    def language_features(self, render: dict[str, Tensor]) -> Tensor:
        """``[..., S, D]`` unit language features of a render at each of the method's ``S`` query scales
        (one scale by default: the rendered CLIP feature, normalised)."""
        import torch.nn.functional as F

        return F.normalize(render["features"].float(), dim=-1).unsqueeze(-2)

    def relevancy(self, render: dict[str, Tensor], queries: Tensor, negatives: Tensor) -> Tensor:
        """``[..., Q]`` LERF relevancy of texts over a whole render (one image: the scale is chosen per query
        over all its rays, :func:`~ovs3d.relevancy.best_scale_relevancy`).

        Args:
            render: a render of one image (``render_view``) or of any ray set.
            queries: ``[Q, D]`` unit text embeddings.
            negatives: ``[N, D]`` unit embeddings of the canonical negatives.
        """
        from ovs3d.relevancy import best_scale_relevancy

        feats = self.language_features(render)  # [..., S, D]
        shape = feats.shape[:-2]
        flat = feats.reshape(-1, *feats.shape[-2:])  # a view for renders laid out [..., S, D]
        rel, _ = best_scale_relevancy(flat, queries.to(flat.device).float(), negatives.to(flat.device).float())
        return rel.reshape(*shape, queries.shape[0])

    def prediction_logits(self, render: dict[str, Tensor]) -> Tensor:
        """``[..., C]`` the scores the scene's labels are predicted from (default: :meth:`label_logits`)."""
        return self.label_logits(render)

    def label_scores(self, render: dict[str, Tensor]) -> Tensor:
        """``[..., C]`` probability of each label: softmax over the labels of ``score_scale`` × the prediction
        logits (for cosine logits, CLIP's own zero-shot classification probabilities)."""
        return torch.softmax(self.prediction_logits(render).float() * self.score_scale, dim=-1)

    def predict_labels(self, render: dict[str, Tensor]) -> Tensor:
        """``[...]`` int64 label indices: argmax of the prediction logits over the scene's labels (closed set)."""
        return self.prediction_logits(render).argmax(-1)

    def render_view(self, scene: Scene, view: int, downscale: float) -> dict[str, Tensor]:
        """Render a training/annotated view at ``1/downscale``: each output reshaped to ``[H, W, ...]``."""
        w, h = scene.image_size(downscale)
        o, d = view_rays(scene, view, downscale)
        return as_view(self.render_rays(o, d, ray_near(scene)), h, w)


def as_view(render: dict[str, Tensor], height: int, width: int) -> dict[str, Tensor]:
    """A render of a whole view's rays (``[H * W, ...]`` each, row-major) laid out as the view: ``[H, W, ...]``
    each, what :meth:`SemanticMethod.predict_labels` reads as one image."""
    return {k: v.reshape(height, width, *v.shape[1:]) for k, v in render.items()}


def semantic_checkpoint(run: Path) -> Path:
    """The semantic checkpoint of a run folder."""
    return Path(run) / "checkpoints" / SEMANTIC_CHECKPOINT


def semantic_finished(run: Path, n_iters: int) -> bool:
    """Whether a run's semantic stage has trained ``n_iters`` iterations."""
    ckpt = semantic_checkpoint(run)
    return ckpt.exists() and load_checkpoint(ckpt, kind="semantic")["step"] >= n_iters


def fit_method(
    method_cls: type[SemanticMethod], scene: Scene, run: Path, fit_cfg: Any, device, backends: dict[str, Any]
) -> SemanticMethod:
    """Train (or resume, or just load) the semantic stage of a run whose reconstruction is done."""
    method_cls.check_scene(scene)
    trained = load_trained_field(Path(run) / "checkpoints" / RECON_CKPT, device)
    cfg = fit_cfg.semantic
    if semantic_finished(run, cfg.n_iters):
        return method_cls.load(trained, run, device)
    return train_method(method_cls.prepare(scene, trained, fit_cfg, backends, device), run)


def train_method(method: SemanticMethod, run: Path) -> SemanticMethod:
    """Run a prepared method through the training loop (resuming ``run``'s semantic checkpoint), then freeze it."""
    cfg = method.cfg
    settings = LoopSettings(
        checkpoint=semantic_checkpoint(run),
        log=Path(run) / "logs" / "semantic.jsonl",
        config=asdict(cfg),
        seed=cfg.seed,
        checkpoint_every=cfg.checkpoint_every,
        log_every=cfg.log_every,
        desc=f"semantic ({method.name})",
    )
    run_stage(method, settings, method.callbacks())
    method.freeze()
    return method
