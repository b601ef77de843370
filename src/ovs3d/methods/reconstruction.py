"""Stage 1: RGB reconstruction with TensoRF-VM.

Follows the TensoRF/3D-OVS recipe (Adam 0.9/0.99, grid lr 0.02, network lr, exponential decay to 0.1x,
coarse-to-fine upsampling with learning-rate reset, alpha-mask updates, TV on the planes), scaled down
by default to what a CPU does in minutes; every knob is a documented field of
:class:`ReconstructionConfig`. Training is resumable: the checkpoint holds the field, the occupancy grid,
the optimiser and the random state, so an interrupted fit continues exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ovs3d.field.occupancy import compute_occupancy, dilate_grid, visible_voxels
from ovs3d.field.tensorf import TensoRFField, resolution_for_voxels, tv_loss
from ovs3d.field.trained import TrainedField
from ovs3d.io.scene import Scene
from ovs3d.methods.loop import Callback, LoopSettings, run_stage
from ovs3d.render.marching import MarchConfig, march, render_rgb
from ovs3d.render.scene_rays import field_aabb, ray_near, view_rays
from ovs3d.render.volume import composite_background, depth_spread, distortion_loss, expected_background_mse
from ovs3d.utils.config import rule
from ovs3d.utils.files import load_checkpoint

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "reconstruction.pt"
ITERS_FACTOR_FIELDS = {"bounded": "bounded_iters_factor", "unbounded": "unbounded_iters_factor"}
"""The scene kinds that train ``n_iters`` × a factor of their own, and that factor's ``ReconstructionConfig`` field."""


@dataclass
class ReconstructionConfig:
    """Settings of the RGB reconstruction stage (defaults sized for a 2-core CPU; the reference's in comments)."""

    n_iters: int = field(default=400, metadata=rule(ge=1))
    """Training iterations on forward-facing scenes (reference: 30000); bounded scenes train
    ``bounded_iters_factor`` and unbounded scenes ``unbounded_iters_factor`` times as many. 400, not 300 (before
    issue 8, round 21): the 128³ grid trains 200 iterations instead of 100, +0.003 mIoU on twelve validation
    fits, a fit about 1.17x."""
    bounded_iters_factor: float = field(default=0.75, metadata=rule(gt=0, le=1000))
    """Bounded scenes (a world box, e.g. the inside-out rooms) train n_iters × this: 0.75 keeps the 300 iterations
    the rooms were measured with (bench/RESULTS.md §5); 400 was measured on forward-facing scenes only. 1 trains
    every kind alike."""
    unbounded_iters_factor: float = field(default=1.5, metadata=rule(gt=0, le=1000))
    """Unbounded (contracted, 360°) scenes train n_iters × this (1.5: 600): their 60-odd views of a whole room
    share one grid with the objects, and 300 iterations under-fit them (600: +1.1 and +1.9 dB held out on the
    validation orbit scenes). The upsampling and occupancy iterations stay where they are; 1 trains every kind
    alike."""
    batch_size: int = field(default=2048, metadata=rule(ge=1))
    """Rays per iteration (reference: 4096)."""
    rgb_downscale: float = field(default=2.0, metadata=rule(gt=0, le=1000))
    """Images are used at 1/rgb_downscale of full resolution (reference: 2)."""
    init_voxels: int = field(default=48**3, metadata=rule(ge=1, le=2**31))
    """Voxel count of the initial grid (reference: 128^3)."""
    final_voxels: int = field(default=128**3, metadata=rule(ge=1, le=2**31))
    """Voxel count after the last upsampling (reference: 640^3)."""
    upsample_iters: tuple[int, ...] = field(default=(50, 100, 150, 200), metadata=rule(ge=0))
    """Iterations at which the grid grows, log-spaced in voxel count (reference: 2000, 3000, 4000, 5500)."""
    occupancy_iters: tuple[int, ...] = field(default=(80, 160, 240), metadata=rule(ge=0))
    """Iterations at which the occupancy (alpha) grid is recomputed (reference: 2000, 4000)."""
    shrink_iter: int = field(default=80, metadata=rule(ge=0))
    """Iteration at which the box of a scene kind in ``shrink_kinds`` shrinks to the surfaces the training rays
    end on (TensoRF's ``shrink`` at its first alpha-mask update, which crops to occupied voxels; here the
    box of the rays' expected termination points, plus ``shrink_margin``, because faint density reaches the
    box's corners in rooms). The later upsamplings then spend their voxels inside it."""
    shrink_kinds: tuple[str, ...] = ()
    """Scene kinds whose box shrinks (default: none). ``bounded``: an inside-out room's box is the union of the
    cameras' frusta, about twelve times the room; shrinking it made the room's voxels ~2x finer per axis but
    was mixed on the validation rooms (held-out mIoU −0.04 / +0.01, PSNR −0.3 / +1.0 dB) at twice the
    reconstruction time, so it is off (bench/RESULTS.md §5). ``forward``: TensoRF shrinks its NDC box too (not
    measured here). ``unbounded`` never shrinks (its box is the contraction's)."""
    shrink_margin: float = field(default=0.05, metadata=rule(ge=0, le=10))
    """Margin added to each side of the shrunk box, as a fraction of its size along that axis."""
    occupancy_max_resolution: int = field(default=192, metadata=rule(ge=2, le=4096))
    """Largest occupancy-grid side (the grid follows the field's resolution up to this)."""
    visibility_culling: bool = True
    """Also empty voxels that no training ray sees (behind surfaces); TensoRF only uses density."""
    visibility_rays: int = field(default=65536, metadata=rule(ge=1))
    """Training rays (random subset) marched to find the visible voxels."""
    density_components: tuple[int, int, int] = field(default=(16, 4, 4), metadata=rule(ge=1))
    """Density components per plane-line pair (reference: 16, 4, 4)."""
    app_components: tuple[int, int, int] = field(default=(48, 12, 12), metadata=rule(ge=1))
    """Appearance components per plane-line pair (reference: 48, 12, 12)."""
    app_dim: int = field(default=27, metadata=rule(ge=1))
    """Appearance feature size (reference: 27)."""
    mlp_width: int = field(default=128, metadata=rule(ge=1))
    """RGB MLP width (reference: 128)."""
    density_init_scale: float = field(default=0.1, metadata=rule(ge=0))
    """Standard deviation of the density planes' and lines' random initial values (reference: 0.1). Under the
    ReLU activation they start as a fog over about half the box, and which fog a seed draws decides how well
    300 iterations end (up to 3 dB on a test scene); 0.01 lowered four of four validation fits (bench/RESULTS.md
    §4, round 17)."""
    app_init_scale: float = field(default=0.1, metadata=rule(ge=0))
    """Standard deviation of the appearance planes' and lines' random initial values (reference: 0.1)."""
    lr_grid: float = field(default=0.02, metadata=rule(ge=0))
    """Learning rate of planes and lines (reference: 0.02)."""
    lr_net: float = field(default=1e-3, metadata=rule(ge=0))
    """Learning rate of the basis and the MLP (TensoRF: 1e-3; the 3D-OVS config keeps 1e-4)."""
    lr_decay_ratio: float = field(default=0.1, metadata=rule(gt=0, le=1))
    """Learning rates decay exponentially to this fraction over n_iters (reset after each upsampling)."""
    tv_weight_density: float = field(default=1.0, metadata=rule(ge=0))
    """TV weight on density planes (x1e-2 internally, as TensoRF)."""
    tv_weight_app: float = field(default=1.0, metadata=rule(ge=0))
    """TV weight on appearance planes (x1e-2 internally)."""
    background: Literal["black", "random", "expected"] = "random"
    """What a ray's remaining transmittance shows in training, on the scene kinds of ``background_kinds`` (black
    on the others). ``black`` (TensoRF's LLFF setting, the paper's): the field may leave a dark surface
    empty, since nothing renders black too — a black chess pawn on a dark countertop was not reconstructed at
    all, and every view fused its labels with the countertop's (bench/RESULTS.md §4, round 9). ``random``
    (default): a random colour per ray and step (instant-ngp's training trick), so only an opaque surface
    reproduces the photo. ``expected``: the random background's expected loss in closed form, without its
    noise (the ray over mid-grey, plus ``(1 - acc)^2 / 12`` per channel). Rendering is unchanged (over black)."""
    background_kinds: tuple[Literal["forward", "bounded", "unbounded"], ...] = ("forward",)
    """Scene kinds that train over ``background``; the others over black. Chosen on the forward-facing
    validation scenes; not measured on the others."""
    background_from: float = field(default=0.0, metadata=rule(ge=0, le=1))
    """Share of the schedule after which the random background starts to fade in (black before it; default 0:
    from the first iteration). 1/3, the default of rounds 9–17 (iteration 100 of 300), let the surfaces form
    over black first, but the initial density fog survived that black phase and the background's arrival tore
    it down mid-schedule (a 7 dB fall on a validation scene), so the reconstruction's quality depended on its
    seed; faded in from the start (with ``background_ramp``) there is no fall: hard test scenes 0.896 → 0.908
    (held out 0.890 → 0.908), tabletop level (0.942 → 0.944, held out 0.945 → 0.945), no label lost
    (bench/RESULTS.md §4, rounds 17–18). Switched on at once from the start (``background_ramp`` 0) it cost up to
    5 dB on a validation scene (round 9)."""
    background_ramp: float = field(default=1 / 3, metadata=rule(ge=0, le=1))
    """Share of the schedule over which the background fades in after ``background_from`` (0: at once, the
    behaviour of round 9): the random colours are drawn from ``[0, s]`` with ``s`` rising linearly from 0 to 1
    (iterations 0 to 100 of 300 with the defaults). Switched on at once, the random background scattered a
    reconstruction whose surfaces had not formed yet into floaters (a validation scene 0.82 over black, 0.62
    over the random background at once, 0.86 faded in; bench/RESULTS.md §4, round 10)."""
    distortion_weight: float = field(default=0.01, metadata=rule(ge=0))
    """Weight of mip-NeRF 360's distortion loss (0 = TensoRF). It removes the semi-transparent fog in front of
    surfaces: sharper depth, fewer weight-carrying samples (faster marching and semantic caching)."""
    distortion_from: float = field(default=1 / 3, metadata=rule(ge=0, le=1))
    """Share of the schedule after which the distortion loss applies (iteration 100 of 300), on the scene kinds
    of ``distortion_from_kinds`` (from the start on the others: 0, mip-NeRF 360's). Applied from the start, it
    held some forward-facing scenes in their first, wrong geometry (the objects painted at the wrong depth)
    for 100-300 iterations: pulling a ray's weight to a new depth first spreads it, which the loss penalises.
    Delayed, a validation scene stuck at 23 dB went to 33 dB and from 0.586 to 0.908 mIoU (three lost labels
    back), level on six others; on twelve test scenes the mean is unchanged (bench/RESULTS.md §4, round 12)."""
    distortion_from_kinds: tuple[Literal["forward", "bounded", "unbounded"], ...] = ("forward",)
    """Scene kinds on which the distortion loss waits for ``distortion_from``; chosen on forward-facing
    validation scenes, not measured on rooms or 360° scenes (they apply it from the start)."""
    distortion_ramp: float = field(default=0.0, metadata=rule(ge=0, le=1))
    """Share of the schedule over which the distortion loss's weight rises linearly from 0 after
    ``distortion_from`` (0: at once), on the scene kinds of ``distortion_from_kinds``. 1/3 was level on the
    validation scenes (bench/RESULTS.md §4, round 17)."""
    march: MarchConfig = field(default_factory=MarchConfig)
    """Ray marching."""
    seed: int = field(default=20211202, metadata=rule(ge=0))
    """Seed of initialisation and ray sampling (TensoRF's)."""
    checkpoint_every: int = field(default=100, metadata=rule(ge=1))
    """Iterations between checkpoints."""
    log_every: int = field(default=50, metadata=rule(ge=1))
    """Iterations between log records."""


def for_kind(cfg: ReconstructionConfig, kind: str) -> ReconstructionConfig:
    """The settings a scene of ``kind`` trains with: a black background unless ``kind`` is in
    ``background_kinds``, the distortion loss from the start unless it is in ``distortion_from_kinds``; for
    ``bounded`` and ``unbounded``, n_iters × that kind's iterations factor (and the factor 1, so that applying
    it twice changes nothing); otherwise ``cfg`` itself."""
    if cfg.background != "black" and kind not in cfg.background_kinds:
        cfg = dataclasses.replace(cfg, background="black")
    if (cfg.distortion_from > 0 or cfg.distortion_ramp > 0) and kind not in cfg.distortion_from_kinds:
        cfg = dataclasses.replace(cfg, distortion_from=0.0, distortion_ramp=0.0)
    factor_name = ITERS_FACTOR_FIELDS.get(kind)
    if factor_name is None or getattr(cfg, factor_name) == 1.0:
        return cfg
    n_iters = max(1, round(cfg.n_iters * getattr(cfg, factor_name)))
    return dataclasses.replace(cfg, n_iters=n_iters, **{factor_name: 1.0})


def box_shrinks(cfg: ReconstructionConfig, kind: str) -> bool:
    """Whether a scene of ``kind`` shrinks its box (``shrink_kinds``; never an unbounded, contracted box)."""
    return kind in cfg.shrink_kinds and kind != "unbounded"


def build_field(
    cfg: ReconstructionConfig, aabb: torch.Tensor, resolution: list[int] | None = None, contracted: bool = False
) -> TensoRFField:
    """A fresh field for ``cfg`` at ``resolution`` (default: the initial resolution); ``contracted``: over
    mip-NeRF 360's contracted space (unbounded scenes)."""
    res = resolution or resolution_for_voxels(cfg.init_voxels, aabb)
    field_ = TensoRFField(
        aabb,
        res,
        cfg.density_components,
        cfg.app_components,
        cfg.app_dim,
        cfg.mlp_width,
        seed=cfg.seed,
        density_init_scale=cfg.density_init_scale,
        app_init_scale=cfg.app_init_scale,
    )
    field_.contracted = contracted
    return field_


def upsample_schedule(cfg: ReconstructionConfig, aabb: torch.Tensor) -> dict[int, list[int]]:
    """Iteration -> new resolution, log-spaced voxel counts from ``init_voxels`` to ``final_voxels``."""
    n = len(cfg.upsample_iters)
    counts = np.exp(np.linspace(np.log(cfg.init_voxels), np.log(cfg.final_voxels), n + 1))[1:]
    return {it: resolution_for_voxels(int(c), aabb) for it, c in zip(cfg.upsample_iters, counts)}


def occupancy_resolution(field_: TensoRFField, max_side: int) -> list[int]:
    """Occupancy grid ``(G_x, G_y, G_z)``: the field's resolution, scaled down to ``max_side`` at most."""
    res = field_.grid_resolution
    scale = min(1.0, max_side / max(res))
    return [max(2, int(r * scale)) for r in res]


@torch.no_grad()
def update_occupancy(
    field_: TensoRFField,
    cfg: ReconstructionConfig,
    rays: torch.Tensor | None = None,
    near: float = 0.0,
    chunk: int = 8192,
) -> torch.Tensor:
    """Recompute the occupancy grid ``[G_z, G_y, G_x]`` bool.

    A voxel stays occupied if its density gives an alpha above TensoRF's threshold and, when ``rays``
    ``[M, 6]`` (a subset of the training rays) are given, some of those rays sees it (visibility culling;
    dilated by one voxel).
    """
    res = occupancy_resolution(field_, cfg.occupancy_max_resolution)
    aabb = field_.aabb
    voxel = (aabb[1] - aabb[0]) / torch.tensor(field_.grid_resolution, dtype=aabb.dtype, device=aabb.device)
    step = float(voxel.norm()) * cfg.march.step_ratio / math.sqrt(3.0)
    occ = compute_occupancy(field_.density, aabb, res, step, cfg.march.distance_scale)
    if rays is None or not cfg.visibility_culling:
        return occ
    seen = torch.zeros_like(occ)
    for i in range(0, rays.shape[0], chunk):
        batch = rays[i : i + chunk].to(aabb.device)
        m = march(field_, occ, batch[:, :3], batch[:, 3:], cfg.march, near=near)
        seen |= visible_voxels(occ.shape, aabb, m.xyz.reshape(-1, 3), m.weights.reshape(-1), cfg.march.weight_threshold)
    return occ & dilate_grid(seen, 1)


def schedule_ramp(step: int, n_iters: int, start: float, ramp: float) -> float:
    """Weight of a term that starts at ``start * n_iters`` and rises linearly to 1 over ``ramp * n_iters``
    iterations (0 before the start; ``ramp`` 0: 1 from the start on)."""
    since = step - start * n_iters
    if since < 0:
        return 0.0
    if ramp <= 0:
        return 1.0
    return min(1.0, since / (ramp * n_iters))


def learning_rate_factor(step: int, cfg: ReconstructionConfig) -> float:
    """Decay factor at ``step``: ``ratio ** ((step - last_reset) / n_iters)``, reset at each upsampling."""
    resets = [it for it in cfg.upsample_iters if it <= step]
    since = step - (resets[-1] if resets else 0)
    return cfg.lr_decay_ratio ** (since / cfg.n_iters)


def config_from_dict(d: dict) -> ReconstructionConfig:
    """Rebuild a :class:`ReconstructionConfig` from ``asdict`` output (nested ``march``, tuples restored)."""
    from ovs3d.utils.config import config_from_dict as from_dict

    return from_dict(ReconstructionConfig, d)


def load_trained_field(ckpt_path: Path, device: str | torch.device = "cpu") -> TrainedField:
    """Load a reconstruction checkpoint (``weights_only``) into a :class:`TrainedField`."""
    payload = load_checkpoint(ckpt_path, kind="reconstruction")
    cfg = config_from_dict(payload["config"])
    state = payload["state"]
    res = [int(r) for r in state["field"]["resolution"]]
    field_ = build_field(cfg, state["field"]["aabb"], res, bool(state.get("contracted", False)))
    field_.load_state_dict(state["field"])
    occ = state.get("occupancy")
    return TrainedField(field_.to(device), None if occ is None else occ.bool().to(device), cfg, payload["step"])


def gather_training_rays(scene: Scene, views: list[int], downscale: float):
    """All rays and colours of the training views: ``rays`` ``[M, 6]`` (origin, direction), ``rgbs`` ``[M, 3]``."""
    rays, rgbs = [], []
    for i in views:
        o, d = view_rays(scene, i, downscale)
        rays.append(torch.cat([o, d], -1))
        rgbs.append(torch.from_numpy(scene.load_image(i, downscale)).reshape(-1, 3))
    return torch.cat(rays), torch.cat(rgbs)


@torch.no_grad()
def render_view(
    trained: TrainedField, scene: Scene, view: int, downscale: float, chunk: int = 8192, spread: bool = False
):
    """Render a view: ``rgb`` ``[H, W, 3]``, ``depth`` ``[H, W]`` (ray parameter), ``acc`` ``[H, W]`` numpy arrays
    (and ``depth_spread`` ``[H, W]`` with ``spread``, :func:`render_rays_chunked`)."""
    w, h = scene.image_size(downscale)
    rays_o, rays_d = view_rays(scene, view, downscale)
    return render_rays_chunked(trained, rays_o, rays_d, ray_near(scene), (h, w), chunk, spread)


@torch.no_grad()
def render_rays_chunked(
    trained: TrainedField,
    rays_o,
    rays_d,
    near: float,
    shape: tuple[int, int],
    chunk: int = 8192,
    spread: bool = False,
) -> dict[str, np.ndarray]:
    """Render ``[H * W]`` rays in chunks and reshape to ``shape`` (deterministic sampling); with ``spread``
    also each ray's ``depth_spread`` (:func:`~ovs3d.render.volume.depth_spread`, a diagnostic) from the same
    marching."""
    device = trained.field.aabb.device
    outs: dict[str, list] = {"rgb": [], "depth": [], "acc": []}
    if spread:
        outs["depth_spread"] = []
    for i in range(0, rays_o.shape[0], chunk):
        o, d = rays_o[i : i + chunk].to(device), rays_d[i : i + chunk].to(device)
        marched = march(trained.field, trained.occupancy, o, d, trained.config.march, near=near)
        out = render_rgb(trained.field, marched, d, trained.config.march)
        if spread:
            out["depth_spread"] = depth_spread(marched.weights, marched.t_mid)
        for k in outs:
            outs[k].append(out[k].cpu())
    h, w = shape
    result = {k: torch.cat(v).reshape(h, w, *v[0].shape[1:]).numpy() for k, v in outs.items()}
    result["rgb"] = result["rgb"].clip(0, 1)
    return result


class ReconstructionStage:
    """The RGB reconstruction as a :class:`~ovs3d.methods.loop.Stage`.

    Phases are the grid resolutions: each upsampling replaces the grids and starts a fresh optimiser with
    reset learning rates (TensoRF's recipe). Random draws (ray batches, stratified jitter, the ray subset
    of occupancy updates) all come from the loop's generator.
    """

    kind = "reconstruction"

    def __init__(self, scene: Scene, cfg: ReconstructionConfig, views: list[int], device) -> None:
        self.cfg, self.device, self.n_iters = cfg, device, cfg.n_iters
        self.aabb = field_aabb(scene).to(device)
        self.contracted = scene.kind == "unbounded"
        self.schedule = upsample_schedule(cfg, self.aabb.cpu())
        self.field = build_field(cfg, self.aabb.cpu(), contracted=self.contracted).to(device)
        self.occupancy: torch.Tensor | None = None
        self.stats: dict = {"train_seconds": 0.0, "density_evals": 0, "app_evals": 0, "rays": 0}
        self.scene, self.views = scene, views
        self._rays: tuple[torch.Tensor, torch.Tensor] | None = None
        self.near = ray_near(scene)

    @property
    def rays(self) -> torch.Tensor:
        """``[M, 6]`` training rays (read on first use: a finished stage never loads the images)."""
        if self._rays is None:
            self._rays = gather_training_rays(self.scene, self.views, self.cfg.rgb_downscale)
        return self._rays[0]

    @property
    def rgbs(self) -> torch.Tensor:
        """``[M, 3]`` colours of :attr:`rays`."""
        self.rays  # noqa: B018  (loads both)
        return self._rays[1]

    def phase(self, step: int) -> int:
        """Grid generations so far: each upsampling, and the shrink, makes new grid parameters."""
        return sum(1 for it in self.cfg.upsample_iters if it <= step) + int(
            self.shrinks and self.cfg.shrink_iter <= step
        )

    def enter_phase(self, phase: int) -> list[dict]:
        f = self.field
        return [
            {"params": f.grid_parameters(), "lr": self.cfg.lr_grid},
            {"params": f.network_parameters(), "lr": self.cfg.lr_net},
        ]

    def before_step(self, step: int, generator: torch.Generator) -> None:
        if step in self.schedule:
            self.field.upsample(self.schedule[step])
        shrink = self.shrinks and step == self.cfg.shrink_iter
        if step in self.cfg.occupancy_iters or shrink:
            sub = torch.randperm(self.rays.shape[0], generator=generator)[: self.cfg.visibility_rays]
            if shrink:
                self._shrink(self.rays[sub], step)
            self.occupancy = update_occupancy(self.field, self.cfg, self.rays[sub], self.near)

    @property
    def shrinks(self) -> bool:
        """Whether this scene's box shrinks (:func:`box_shrinks`)."""
        return box_shrinks(self.cfg, self.scene.kind)

    def _shrink(self, rays: torch.Tensor, step: int) -> None:
        """Shrink the field's box to the training rays' surfaces and re-plan the later upsamplings inside it."""
        out = render_rays_chunked(self.trained(step), rays[:, :3], rays[:, 3:], self.near, (1, rays.shape[0]))
        depth = torch.as_tensor(out["depth"]).reshape(-1)
        ends = rays[:, :3] + depth[:, None] * rays[:, 3:]  # [M, 3] expected termination points
        ends = ends[torch.as_tensor(out["acc"]).reshape(-1) > 0.5]  # rays that end on something
        if len(ends) < 100:
            logger.warning("the box was not shrunk: too few training rays end on a surface yet (%d)", len(ends))
            return
        lo, hi = ends.amin(0), ends.amax(0)
        pad = self.cfg.shrink_margin * (hi - lo)
        before = self.field.aabb.clone()
        box = torch.stack([torch.maximum(lo - pad, before[0].cpu()), torch.minimum(hi + pad, before[1].cpu())])
        self.field.shrink(box)
        self.schedule = upsample_schedule(self.cfg, self.field.aabb.cpu())
        shrunk = float(torch.prod(self.field.aabb[1] - self.field.aabb[0]) / torch.prod(before[1] - before[0]))
        self.stats["shrunk_volume"] = round(shrunk, 4)
        logger.info("box shrunk to the surfaces the training rays end on: %.1f%% of its volume", 100 * shrunk)

    def lr_factor(self, step: int) -> float:
        return learning_rate_factor(step, self.cfg)

    def loss(self, step: int, generator: torch.Generator):
        cfg, field_ = self.cfg, self.field
        idx = torch.randint(0, self.rays.shape[0], (cfg.batch_size,), generator=generator)
        batch = self.rays[idx].to(self.device)
        target = self.rgbs[idx].to(self.device)
        marched = march(
            field_,
            self.occupancy,
            batch[:, :3],
            batch[:, 3:],
            cfg.march,
            near=self.near,
            perturb=True,
            generator=generator,
        )
        out = render_rgb(field_, marched, batch[:, 3:], cfg.march)
        rgb = out["rgb"]
        late = step >= cfg.background_from * self.n_iters
        fade = schedule_ramp(step, self.n_iters, cfg.background_from, cfg.background_ramp)
        if cfg.background == "random" and late:
            bg = torch.rand(rgb.shape, generator=generator).to(rgb.device)
            rgb = composite_background(rgb, out["acc"], fade * bg)
        if cfg.background == "expected" and late:
            mse = expected_background_mse(rgb, out["acc"], target, fade)
        else:
            mse = torch.mean((rgb - target) ** 2)
        loss = mse
        if cfg.distortion_weight > 0 and step >= cfg.distortion_from * self.n_iters:
            ramp = schedule_ramp(step, self.n_iters, cfg.distortion_from, cfg.distortion_ramp)
            loss = loss + ramp * cfg.distortion_weight * distortion_loss(marched.weights, marched.t_mid, marched.dt)
        tv_scale = 1e-2 * self.lr_factor(step)
        if cfg.tv_weight_density > 0:
            loss = loss + cfg.tv_weight_density * tv_scale * tv_loss(list(field_.density_planes))
        if cfg.tv_weight_app > 0:
            loss = loss + cfg.tv_weight_app * tv_scale * tv_loss(list(field_.app_planes))
        self.stats["density_evals"] += int(out["n_density"])
        self.stats["app_evals"] += int(out["n_app"])
        self.stats["rays"] += cfg.batch_size
        parts = {
            "psnr": -10 * torch.log10(mse.detach()),
            "samples_per_ray": marched.n_samples,
            "density_evals_per_ray": float(out["n_density"]) / cfg.batch_size,
            "app_evals_per_ray": float(out["n_app"]) / cfg.batch_size,
            "resolution": field_.grid_resolution,
        }
        return loss, parts

    def state_dict(self) -> dict:
        occ = self.occupancy
        return {
            "field": self.field.state_dict(),
            "occupancy": None if occ is None else occ.to(torch.uint8).cpu(),
            "contracted": self.contracted,
        }

    def load_state_dict(self, state: dict) -> None:
        res = [int(r) for r in state["field"]["resolution"]]
        self.field = build_field(self.cfg, self.aabb.cpu(), res, bool(state.get("contracted", False)))
        self.field.load_state_dict(state["field"])  # its aabb too (a shrunk box)
        self.field.to(self.device)
        if not torch.equal(self.field.aabb, self.aabb):  # shrunk: the later upsamplings are planned inside it
            self.schedule = upsample_schedule(self.cfg, self.field.aabb.cpu())
        occ = state["occupancy"]
        self.occupancy = None if occ is None else occ.bool().to(self.device)

    def trained(self, step: int) -> TrainedField:
        """The field as it is now."""
        return TrainedField(self.field, self.occupancy, self.cfg, step)


def train_reconstruction(
    scene: Scene,
    run_dir: Path,
    cfg: ReconstructionConfig,
    views: list[int],
    device: str | torch.device = "cpu",
    callback: Callable[[int, TrainedField], None] | None = None,
    callback_every: int = 0,
) -> TrainedField:
    """Train (or resume, or just load) the RGB field of a run.

    Args:
        scene: the scene.
        run_dir: run folder; the checkpoint is ``run_dir/checkpoints/reconstruction.pt``.
        cfg: stage configuration (:func:`for_kind` of the scene's kind is what trains).
        views: training views.
        device: torch device.
        callback: called as ``callback(step, trained)`` every ``callback_every`` steps (benchmarks).
        callback_every: 0 disables the callback.

    Returns:
        The trained field.
    """
    run_dir = Path(run_dir)
    cfg = for_kind(cfg, scene.kind)
    stage = ReconstructionStage(scene, cfg, views, device)
    settings = LoopSettings(
        checkpoint=run_dir / "checkpoints" / CHECKPOINT_NAME,
        log=run_dir / "logs" / "reconstruction.jsonl",
        config=asdict(cfg),
        seed=cfg.seed,
        checkpoint_every=cfg.checkpoint_every,
        log_every=cfg.log_every,
        desc="reconstruction",
    )
    callbacks = []
    if callback is not None and callback_every:
        callbacks.append(Callback(callback_every, lambda step: callback(step, stage.trained(step))))
    step = run_stage(stage, settings, callbacks)
    return stage.trained(step)
