"""Stage 1: RGB reconstruction with TensoRF-VM.

Follows the TensoRF/3D-OVS recipe (Adam 0.9/0.99, grid lr 0.02, network lr, exponential decay to 0.1x,
coarse-to-fine upsampling with learning-rate reset, alpha-mask updates, TV on the planes), scaled down
by default to what a CPU does in minutes; every knob is a documented field of
:class:`ReconstructionConfig`. Training is resumable: the checkpoint holds the field, the occupancy grid,
the optimiser and the random state, so an interrupted fit continues exactly where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ovs3d.field.occupancy import compute_occupancy, dilate_grid, visible_voxels
from ovs3d.field.tensorf import TensoRFField, resolution_for_voxels, tv_loss
from ovs3d.io.scene import Scene
from ovs3d.methods.radiance import MarchConfig, march, render_rgb
from ovs3d.methods.scene_rays import field_aabb, ray_near, view_rays
from ovs3d.render.volume import distortion_loss
from ovs3d.utils.console import progress
from ovs3d.utils.files import load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "reconstruction.pt"


@dataclass
class ReconstructionConfig:
    """Settings of the RGB reconstruction stage (defaults sized for a 2-core CPU; the reference's in comments)."""

    n_iters: int = 300
    """Training iterations (reference: 30000)."""
    batch_size: int = 2048
    """Rays per iteration (reference: 4096)."""
    rgb_downscale: float = 2.0
    """Images are used at 1/rgb_downscale of full resolution (reference: 2)."""
    init_voxels: int = 48**3
    """Voxel count of the initial grid (reference: 128^3)."""
    final_voxels: int = 128**3
    """Voxel count after the last upsampling (reference: 640^3)."""
    upsample_iters: tuple[int, ...] = (50, 100, 150, 200)
    """Iterations at which the grid grows, log-spaced in voxel count (reference: 2000, 3000, 4000, 5500)."""
    occupancy_iters: tuple[int, ...] = (80, 160, 240)
    """Iterations at which the occupancy (alpha) grid is recomputed (reference: 2000, 4000)."""
    occupancy_max_resolution: int = 192
    """Largest occupancy-grid side (the grid follows the field's resolution up to this)."""
    visibility_culling: bool = True
    """Also empty voxels that no training ray sees (behind surfaces); TensoRF only uses density."""
    visibility_rays: int = 65536
    """Training rays (random subset) marched to find the visible voxels."""
    density_components: tuple[int, int, int] = (16, 4, 4)
    """Density components per plane-line pair (reference: 16, 4, 4)."""
    app_components: tuple[int, int, int] = (48, 12, 12)
    """Appearance components per plane-line pair (reference: 48, 12, 12)."""
    app_dim: int = 27
    """Appearance feature size (reference: 27)."""
    mlp_width: int = 128
    """RGB MLP width (reference: 128)."""
    lr_grid: float = 0.02
    """Learning rate of planes and lines (reference: 0.02)."""
    lr_net: float = 1e-3
    """Learning rate of the basis and the MLP (TensoRF: 1e-3; the 3D-OVS config keeps 1e-4)."""
    lr_decay_ratio: float = 0.1
    """Learning rates decay exponentially to this fraction over n_iters (reset after each upsampling)."""
    tv_weight_density: float = 1.0
    """TV weight on density planes (x1e-2 internally, as TensoRF)."""
    tv_weight_app: float = 1.0
    """TV weight on appearance planes (x1e-2 internally)."""
    distortion_weight: float = 0.01
    """Weight of mip-NeRF 360's distortion loss (0 = TensoRF). It removes the semi-transparent fog in front of
    surfaces: sharper depth, fewer weight-carrying samples (faster marching and semantic caching)."""
    march: MarchConfig = field(default_factory=MarchConfig)
    """Ray marching."""
    seed: int = 20211202
    """Seed of initialisation and ray sampling (TensoRF's)."""
    checkpoint_every: int = 100
    """Iterations between checkpoints."""
    log_every: int = 50
    """Iterations between log records."""


def build_field(cfg: ReconstructionConfig, aabb: torch.Tensor, resolution: list[int] | None = None) -> TensoRFField:
    """A fresh field for ``cfg`` at ``resolution`` (default: the initial resolution)."""
    res = resolution or resolution_for_voxels(cfg.init_voxels, aabb)
    return TensoRFField(
        aabb, res, cfg.density_components, cfg.app_components, cfg.app_dim, cfg.mlp_width, seed=cfg.seed
    )


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


def learning_rate_factor(step: int, cfg: ReconstructionConfig) -> float:
    """Decay factor at ``step``: ``ratio ** ((step - last_reset) / n_iters)``, reset at each upsampling."""
    resets = [it for it in cfg.upsample_iters if it <= step]
    since = step - (resets[-1] if resets else 0)
    return cfg.lr_decay_ratio ** (since / cfg.n_iters)


def make_optimizer(field_: TensoRFField, cfg: ReconstructionConfig) -> torch.optim.Adam:
    """Adam with the grid and network parameter groups (betas 0.9, 0.99 as TensoRF)."""
    return torch.optim.Adam(
        [
            {"params": field_.grid_parameters(), "lr": cfg.lr_grid, "base_lr": cfg.lr_grid},
            {"params": field_.network_parameters(), "lr": cfg.lr_net, "base_lr": cfg.lr_net},
        ],
        betas=(0.9, 0.99),
    )


@dataclass
class TrainedField:
    """A reconstructed field ready to render.

    Attributes:
        field: the TensoRF parameters.
        occupancy: ``[G_z, G_y, G_x]`` bool grid (or ``None``).
        config: the stage's configuration.
        step: iterations trained.
    """

    field: TensoRFField
    occupancy: torch.Tensor | None
    config: ReconstructionConfig
    step: int


def config_from_dict(d: dict) -> ReconstructionConfig:
    """Rebuild a :class:`ReconstructionConfig` from ``asdict`` output."""
    d = dict(d)
    d["march"] = MarchConfig(**d.get("march", {}))
    for k in ("upsample_iters", "occupancy_iters", "density_components", "app_components"):
        if k in d:
            d[k] = tuple(d[k])
    return ReconstructionConfig(**d)


def load_trained_field(ckpt_path: Path, device: str | torch.device = "cpu") -> TrainedField:
    """Load a reconstruction checkpoint (``weights_only``) into a :class:`TrainedField`."""
    payload = load_checkpoint(ckpt_path, kind="reconstruction")
    cfg = config_from_dict(payload["config"])
    state = payload["state"]
    field_ = build_field(cfg, state["field"]["aabb"], [int(r) for r in state["field"]["resolution"]])
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
def render_view(trained: TrainedField, scene: Scene, view: int, downscale: float, chunk: int = 8192):
    """Render a view: ``rgb`` ``[H, W, 3]``, ``depth`` ``[H, W]`` (ray parameter), ``acc`` ``[H, W]`` numpy arrays."""
    w, h = scene.image_size(downscale)
    rays_o, rays_d = view_rays(scene, view, downscale)
    return render_rays_chunked(trained, rays_o, rays_d, ray_near(scene), (h, w), chunk)


@torch.no_grad()
def render_rays_chunked(
    trained: TrainedField, rays_o, rays_d, near: float, shape: tuple[int, int], chunk: int = 8192
) -> dict[str, np.ndarray]:
    """Render ``[H * W]`` rays in chunks and reshape to ``shape`` (deterministic sampling)."""
    device = trained.field.aabb.device
    outs: dict[str, list] = {"rgb": [], "depth": [], "acc": []}
    for i in range(0, rays_o.shape[0], chunk):
        o, d = rays_o[i : i + chunk].to(device), rays_d[i : i + chunk].to(device)
        marched = march(trained.field, trained.occupancy, o, d, trained.config.march, near=near)
        out = render_rgb(trained.field, marched, d, trained.config.march)
        for k in outs:
            outs[k].append(out[k].cpu())
    h, w = shape
    return {
        "rgb": torch.cat(outs["rgb"]).clamp(0, 1).reshape(h, w, 3).numpy(),
        "depth": torch.cat(outs["depth"]).reshape(h, w).numpy(),
        "acc": torch.cat(outs["acc"]).reshape(h, w).numpy(),
    }


def _save(path: Path, cfg, field_, occ, opt, gen, step, stats):
    state = {
        "field": field_.state_dict(),
        "occupancy": None if occ is None else occ.to(torch.uint8).cpu(),
        "optimizer": opt.state_dict(),
        "rng": gen.get_state(),
        "stats": stats,
    }
    save_checkpoint(path, config=asdict(cfg), step=step, state=state, kind="reconstruction")


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
        cfg: stage configuration.
        views: training views.
        device: torch device.
        callback: called as ``callback(step, trained)`` every ``callback_every`` steps (benchmarks).
        callback_every: 0 disables the callback.

    Returns:
        The trained field.
    """
    ckpt_path = run_dir / "checkpoints" / CHECKPOINT_NAME
    log_path = run_dir / "logs" / "reconstruction.jsonl"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    aabb = field_aabb(scene).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    schedule = upsample_schedule(cfg, aabb.cpu())
    step, occ = 0, None
    stats = {"train_seconds": 0.0, "density_evals": 0, "app_evals": 0, "rays": 0}
    if ckpt_path.exists():
        payload = load_checkpoint(ckpt_path, kind="reconstruction")
        state = payload["state"]
        step = int(payload["step"])
        field_ = build_field(cfg, aabb.cpu(), [int(r) for r in state["field"]["resolution"]])
        field_.load_state_dict(state["field"])
        field_.to(device)
        occ = None if state["occupancy"] is None else state["occupancy"].bool().to(device)
        opt = make_optimizer(field_, cfg)
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["rng"])
        stats = dict(state.get("stats", stats))
        if step >= cfg.n_iters:
            logger.info("reconstruction already trained (%d iterations)", step)
            return TrainedField(field_, occ, cfg, step)
        logger.info("resuming reconstruction at iteration %d", step)
    else:
        field_ = build_field(cfg, aabb.cpu()).to(device)
        opt = make_optimizer(field_, cfg)

    rays, rgbs = gather_training_rays(scene, views, cfg.rgb_downscale)
    near = ray_near(scene)
    t_start = time.perf_counter()
    stats_at_start = float(stats["train_seconds"])
    log_file = open(log_path, "a")
    try:
        for it in progress(range(step, cfg.n_iters), desc="reconstruction", total=cfg.n_iters - step):
            if it in schedule:
                field_.upsample(schedule[it])
                opt = make_optimizer(field_, cfg)
            if it in cfg.occupancy_iters:
                sub = torch.randperm(rays.shape[0], generator=gen)[: cfg.visibility_rays]
                occ = update_occupancy(field_, cfg, rays[sub], near)
            factor = learning_rate_factor(it, cfg)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * factor
            idx = torch.randint(0, rays.shape[0], (cfg.batch_size,), generator=gen)
            batch = rays[idx].to(device)
            target = rgbs[idx].to(device)
            marched = march(field_, occ, batch[:, :3], batch[:, 3:], cfg.march, near=near, perturb=True, generator=gen)
            out = render_rgb(field_, marched, batch[:, 3:], cfg.march)
            mse = torch.mean((out["rgb"] - target) ** 2)
            loss = mse
            if cfg.distortion_weight > 0:
                loss = loss + cfg.distortion_weight * distortion_loss(marched.weights, marched.t_mid, marched.dt)
            tv_scale = 1e-2 * factor
            if cfg.tv_weight_density > 0:
                loss = loss + cfg.tv_weight_density * tv_scale * tv_loss(list(field_.density_planes))
            if cfg.tv_weight_app > 0:
                loss = loss + cfg.tv_weight_app * tv_scale * tv_loss(list(field_.app_planes))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            stats["density_evals"] += int(out["n_density"])
            stats["app_evals"] += int(out["n_app"])
            stats["rays"] += cfg.batch_size
            done = it + 1
            stats["train_seconds"] = stats_at_start + time.perf_counter() - t_start
            if done % cfg.log_every == 0 or done == cfg.n_iters:
                rec = {
                    "step": done,
                    "loss": float(loss.detach()),
                    "psnr": float(-10 * torch.log10(mse.detach())),
                    "seconds": round(stats["train_seconds"], 2),
                    "samples_per_ray": marched.n_samples,
                    "density_evals_per_ray": float(out["n_density"]) / cfg.batch_size,
                    "app_evals_per_ray": float(out["n_app"]) / cfg.batch_size,
                    "resolution": field_.grid_resolution,
                }
                log_file.write(json.dumps(rec) + "\n")
                log_file.flush()
                logger.debug("reconstruction %s", rec)
            if done % cfg.checkpoint_every == 0 or done == cfg.n_iters:
                _save(ckpt_path, cfg, field_, occ, opt, gen, done, stats)
            if callback is not None and callback_every and done % callback_every == 0:
                callback(done, TrainedField(field_, occ, cfg, done))
    finally:
        log_file.close()
    return TrainedField(field_, occ, cfg, cfg.n_iters)
