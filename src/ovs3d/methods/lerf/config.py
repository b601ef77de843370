"""Settings of ``--method lerf`` (the CLI builds its flags from them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ovs3d.foundation.pyramid import LERF_TILE_RATIOS
from ovs3d.utils.config import check_on_init, rule


@dataclass
class LERFConfig:
    """LERF's language field and the panoptic prior (defaults: LERF's released code, narrower for a CPU)."""

    prior: Literal["none", "panoptic", "panoptic_all", "single_scale", "full_segmentation"] = "panoptic"
    """CLIP pyramid prior (Ji et al. §3.3–3.4): none (LERF), panoptic (segment tiles override the pyramid tile
    centred on each segment at the levels of its scale), panoptic_all (the other reading: every tile whose centre
    lies in the segment, at those levels), single_scale (ablation: every tile of the largest
    level takes its segment's tile), full_segmentation (ablation: every pixel in a segment is supervised by
    its segment's tile at every scale). The segments come from ``--masks`` made non-overlapping."""
    n_iters: int = field(default=1500, metadata=rule(ge=1))
    """Training iterations (LERF: 30k on a GPU, its language group decaying over 4k)."""
    batch_size: int = field(default=1024, metadata=rule(ge=1))
    """Pixel rays per step (LERF: 4096)."""
    samples_per_ray: int = field(default=8, metadata=rule(ge=1))
    """The ray's ``k`` heaviest samples carry its language feature (LERF: 24 of Nerfacto's 48)."""
    lr: float = field(default=1e-2, metadata=rule(gt=0))
    """RAdam learning rate of the language field (LERF's lerf group)."""
    lr_final: float = field(default=1e-3, metadata=rule(gt=0))
    """The learning rate decays exponentially to this over ``n_iters`` (LERF: 1e-2 -> 1e-3)."""
    weight_decay: float = field(default=1e-9, metadata=rule(ge=0))
    """RAdam weight decay (LERF)."""
    clip_loss: Literal["huber", "cosine"] = "huber"
    """huber: the release's ``0.1 · Σ_dims Huber_1.25(φ, target)``; cosine: the paper's ``−0.01 · cos``."""
    clip_weight: float | None = field(default=None, metadata=rule(ge=0))
    """Weight of the CLIP loss; None = 0.1 for huber, 0.01 for cosine."""
    huber_delta: float = field(default=1.25, metadata=rule(gt=0))
    """Huber threshold of the released loss."""
    use_dino: bool = True
    """LERF's DINO head as a regulariser (``Σ_dims (d − dino)²``, weight ``dino_weight``)."""
    dino_weight: float = field(default=1.0, metadata=rule(ge=0))
    """Weight of the DINO loss."""
    grid_levels: tuple[float, ...] = field(default=(0.25, 1.0), metadata=rule(gt=0, min_len=1))
    """Resolution of each VM encoding level, as a fraction of the radiance field's grid resolution."""
    grid_components: tuple[int, int, int] = field(default=(16, 16, 16), metadata=rule(ge=1))
    """Components per plane-line pair of each encoding level."""
    clip_width: int = field(default=128, metadata=rule(ge=1))
    """Hidden width of the CLIP head (LERF: 256)."""
    clip_layers: int = field(default=3, metadata=rule(ge=0))
    """Hidden layers of the CLIP head (LERF: 4)."""
    dino_width: int = field(default=128, metadata=rule(ge=1))
    """Hidden width of the DINO head (LERF: 256)."""
    tile_ratios: tuple[float, ...] = field(default=LERF_TILE_RATIOS, metadata=rule(gt=0, min_len=2))
    """Pyramid tile sides as fractions of the image height (LERF's 7)."""
    pyramid_downscale: float = field(default=1.0, metadata=rule(gt=0, le=1000))
    """The pyramid (and the prior's segments) are made on images at ``1/pyramid_downscale`` of full size."""
    prior_tolerance: float = field(default=1.1, metadata=rule(gt=0))
    """The override rule's factor: a segment of scale ``s_x`` overrides level ``i`` iff
    ``s_{i-1}·t < s_x <= s_{i+1}·t`` or ``s_x >= s_max``."""
    query_scales: int = field(default=30, metadata=rule(ge=1))
    """World scales tried per query and image (LERF: 30)."""
    max_query_scale: float | None = field(default=None, metadata=rule(gt=0))
    """Largest world scale tried; None = the 99th percentile of the scales the field trained on (LERF's fixed
    1.5 assumes nerfstudio's scene scale; ours come from the scene's own units)."""
    seed: int = field(default=0, metadata=rule(ge=0))
    """Seed of the initialisation and the ray draws."""
    checkpoint_every: int = field(default=250, metadata=rule(ge=1))
    """Iterations between checkpoints."""
    log_every: int = field(default=50, metadata=rule(ge=1))
    """Iterations between log records."""

    def __post_init__(self) -> None:
        check_on_init(self)

    @property
    def clip_loss_weight(self) -> float:
        """The CLIP loss weight in use."""
        if self.clip_weight is not None:
            return float(self.clip_weight)
        return 0.1 if self.clip_loss == "huber" else 0.01
