"""The 3D-OVS semantic stage (paper §3, App. A.3): distil CLIP (+ RDA) and DINO (FDA) into the field.

Schedule (App. A.3 and the official code): density is frozen throughout. Until ``joint_start`` the whole
RGB field is frozen and only the CLIP-feature head and the Selection Volume train; from ``joint_start``
the appearance grids, basis and RGB MLP join with their own learning rates (a fresh Adam, as the code
does) and the RGB loss is added. Learning rates decay exponentially to ``lr_decay_ratio``.

Per step: ``batch_size`` random pixel rays of the CLIP views give the feature loss (Eq. 3) and RDA
(Eq. 5–8); ``n_patches`` random patches of DINO cells give FDA (Eq. 9–14).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from ovs3d.methods.reconstruction import TrainedField
from ovs3d.methods.threedovs import losses as L
from ovs3d.methods.threedovs.data import RaySamples, patch_indices
from ovs3d.methods.threedovs.model import SemanticHeads
from ovs3d.utils.console import progress
from ovs3d.utils.files import load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "semantic.pt"


@dataclass
class SemanticConfig:
    """Settings of the 3D-OVS semantic stage (CPU-sized defaults; the reference's in comments)."""

    n_iters: int = 600
    """Iterations (reference: 15000)."""
    joint_start: int = 200
    """Iteration at which appearance and RGB join the training (reference: 5000)."""
    batch_size: int = 1024
    """Pixel rays per step for the feature loss and RDA (reference: 4096)."""
    n_patches: int = 8
    """DINO patches per step for FDA (reference: 8)."""
    patch_cells: int = 12
    """Patch side in DINO cells (reference: 32 = 256 px / 8)."""
    samples_per_ray: int = 8
    """Heaviest samples kept per ray from the frozen geometry (the reference marches 482 every step)."""
    feature_activation: bool = True
    """ReLUs in the CLIP-feature MLP (paper's "MLP"); False = the official code's affine decoder."""
    mlp_width: int = 128
    """Hidden width of the CLIP-feature MLP (reference: 128)."""
    select_components: tuple[int, int, int] = (16, 4, 4)
    """Selection Volume components per plane-line pair (reference: density's 16, 4, 4)."""
    semantic_components: tuple[int, int, int] = (0, 0, 0)
    """Components per plane-line pair of a semantic VM grid whose features join the appearance feature at the
    CLIP-feature MLP's input (ours); (0, 0, 0) = none: the CLIP branch reads the appearance volume alone, as
    in the paper and the code."""
    lr_grid: float = 0.02
    """Selection grids (reference: 0.02)."""
    lr_net: float = 1e-3
    """Feature MLP and selection basis (reference: 1e-4 over 15k iterations; higher for the short CPU schedule)."""
    lr_app_joint: float = 5e-3
    """Appearance grids after joint_start (reference: 5e-3)."""
    lr_rgb_joint: float = 5e-5
    """Appearance basis and RGB MLP after joint_start (reference: 5e-5)."""
    lr_decay_ratio: float = 0.1
    """Every learning rate decays exponentially to this fraction over n_iters (reference: 0.1)."""
    use_rda: bool = True
    """Relevancy-Distribution Alignment (ablation: False)."""
    rda_weight: float = 5.0
    """Weight of RDA (reference: 1; 0.1 for office_desk). 5 here: with 600 iterations instead of 15,000, weight
    1 leaves CLIP's absolute-relevancy ambiguity in place (bench/RESULTS.md §3)."""
    rda_mode: Literal["paper", "code"] = "code"
    """``code`` (default): unnormalised feature, softmax(R̄), as the official code; ``paper``: cosine logits
    (Eq. 4-5 at temperature 1), R̄ rescaled to a distribution. The paper's reading cannot overcome the
    ambiguity on our scenes (bench/RESULTS.md §3); ``variant paper`` restores all the paper's choices."""
    rda_temperature: float = 1.0
    """Temperature of the RDA target (``softmax(R̄ / T)`` in code mode); 1 = the paper's and the code's."""
    rda_detach_selection: bool = False
    """Stop RDA's gradient from reaching the Selection Volume through its target ``Σ_s S_s R̄_s``. False = the
    official code (the target may then move towards the prediction instead of the reverse)."""
    selection_prior: Literal["none", "dino"] = "none"
    """``dino``: teach the Selection Volume the scale DINO says fits each pixel's object (the largest Alg. 1
    window that is mostly the pixel's own DINO segment, else the smallest; ours, not the paper's). ``none``:
    the selection learns only from the feature loss and RDA, as in the paper and the code."""
    selection_prior_weight: float = 1.0
    """Weight of the selection-prior loss (cross-entropy of the rendered selection to the preferred scale)."""
    selection_purity: float = 0.5
    """Share of a window that must be the pixel's own DINO segment for the window to count as fitting."""
    ray_sampling: Literal["uniform", "balanced"] = "balanced"
    """``balanced`` (default, ours): each pixel ray is drawn with probability inversely proportional to the size
    of its pseudo-class (the argmax of its view's normalised relevancy), so that a label covering 0.5 % of the
    pixels is not 0.5 % of every batch; with uniform draws the shared field fits the large labels and small
    objects vanish (bench/RESULTS.md §4). ``uniform``: the paper's and the code's draws."""
    ray_balance_power: float = 1.0
    """Exponent γ of the balanced draws: a ray's weight is (size of its pseudo-class)^-γ; 1 gives every
    pseudo-class the same share, 0 is uniform."""
    use_fda: bool = True
    """Feature-Distribution Alignment (ablation: False)."""
    fda_rebalance: bool = True
    """Eq. 14's rebalanced weights; False (Table 2 "w/o re-balance"): both pair kinds weighted by fda_w_pos."""
    fda_divergence: Literal["js", "kl"] = "js"
    """``js``: the paper's Eq. 11; ``kl``: the official code's pairwise KL."""
    fda_tau: float = 0.2
    """Temperature of Eq. 10 (reference: 0.2)."""
    fda_shift: float = 0.7
    """DINO similarity offset b (reference: 0.7)."""
    fda_w_pos: float = 20.0
    """λ_pos (reference: 200). 20 here: at 200 the similar-pair term spreads the label of each region's
    majority over whole objects and small objects vanish into the table or wall (bench/RESULTS.md §3)."""
    fda_w_neg: float = 0.2
    """λ_neg (reference: 0.2)."""
    rgb_weight: float = 1.0
    """Weight of the RGB loss after joint_start (reference: 1)."""
    seed: int = 20230417
    """Seed of initialisation and sampling (reference's)."""
    checkpoint_every: int = 200
    """Iterations between checkpoints."""
    log_every: int = 50
    """Iterations between log records."""


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
        scale_prior: ``[R_p]`` int64 preferred scale of each pixel ray (``selection_prior="dino"``), else None.
        ray_weights: ``[R_p]`` sampling weights of the pixel rays (``ray_sampling="balanced"``), else None.
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


def render_samples(
    trained: TrainedField, heads: SemanticHeads, samples: RaySamples, with_select: bool, with_rgb: bool
) -> dict[str, Tensor]:
    """Composite the semantic branches over cached samples.

    Args:
        trained: field (appearance branch; frozen or not as the phase says).
        heads: feature head and selection volume.
        samples: ``R`` rays with ``K`` samples each.
        with_select: also render the selection (Eq. 2, before the softmax).
        with_rgb: also render colour.

    Returns:
        ``features`` ``[R, D]`` (Eq. 1, not normalised), optionally ``select_raw`` ``[R, S]`` and ``rgb`` ``[R, 3]``.
    """
    r, k, _ = samples.xyz.shape
    keep = samples.weights > 0  # [R, K]
    pts = samples.xyz[keep]  # [M, 3]
    w = samples.weights[keep]  # [M]
    ray_idx = keep.nonzero()[:, 0]
    app = trained.field.app_features(pts)  # [M, app_dim]
    feats = heads.features(app, pts)
    out = {"features": torch.zeros(r, feats.shape[-1], device=feats.device).index_add(0, ray_idx, w[:, None] * feats)}
    if with_select:
        sel = heads.selection(pts)
        out["select_raw"] = torch.zeros(r, sel.shape[-1], device=sel.device).index_add(0, ray_idx, w[:, None] * sel)
    if with_rgb:
        rgb = trained.field.rgb(app, samples.viewdirs[ray_idx])
        out["rgb"] = torch.zeros(r, 3, device=rgb.device).index_add(0, ray_idx, w[:, None] * rgb)
    return out


def _optimizer(trained: TrainedField, heads: SemanticHeads, cfg: SemanticConfig, joint: bool) -> torch.optim.Adam:
    groups = [
        {"params": heads.grid_parameters(), "lr": cfg.lr_grid, "base_lr": cfg.lr_grid},
        {"params": heads.network_parameters(), "lr": cfg.lr_net, "base_lr": cfg.lr_net},
    ]
    if joint:
        f = trained.field
        groups += [
            {"params": [*f.app_planes, *f.app_lines], "lr": cfg.lr_app_joint, "base_lr": cfg.lr_app_joint},
            {
                "params": [*f.basis_mat.parameters(), *f.rgb_mlp.parameters()],
                "lr": cfg.lr_rgb_joint,
                "base_lr": cfg.lr_rgb_joint,
            },
        ]
    return torch.optim.Adam(groups, betas=(0.9, 0.99))


def _set_trainable(trained: TrainedField, joint: bool) -> None:
    f = trained.field
    for p in f.parameters():
        p.requires_grad_(False)
    if joint:
        for p in [*f.app_planes, *f.app_lines, *f.basis_mat.parameters(), *f.rgb_mlp.parameters()]:
            p.requires_grad_(True)


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


def semantic_losses(
    trained: TrainedField,
    heads: SemanticHeads,
    data: SemanticData,
    cfg: SemanticConfig,
    step: int,
    gen: torch.Generator,
    device,
) -> tuple[Tensor, dict[str, float]]:
    """One step's total loss and its parts (Eq. 3 + Eq. 8 + Eq. 14, RGB in the joint phase)."""
    joint = step >= cfg.joint_start
    if data.ray_weights is not None:
        idx = torch.multinomial(data.ray_weights, cfg.batch_size, replacement=True, generator=gen)
    else:
        idx = torch.randint(0, len(data.pixels), (cfg.batch_size,), generator=gen)
    batch = data.pixels.index(idx).to(device)
    out = render_samples(trained, heads, batch, with_select=True, with_rgb=joint)
    selection = L.selection_softmax(out["select_raw"])  # [B, S]
    target = L.selected_features(data.clip_targets[idx].to(device).float(), selection)
    loss_feat = L.feature_loss(out["features"], target)
    parts = {"feat": float(loss_feat.detach())}
    loss = loss_feat
    if data.scale_prior is not None and cfg.selection_prior_weight > 0:
        preferred = data.scale_prior[idx].to(device)
        loss_sel = -torch.log(selection.gather(1, preferred[:, None]).clamp_min(1e-12)).mean()
        loss = loss + cfg.selection_prior_weight * loss_sel
        parts["sel"] = float(loss_sel.detach())
    if cfg.use_rda and cfg.rda_weight > 0:
        logits = L.segmentation_logits(out["features"], data.text, normalize=cfg.rda_mode == "paper")
        rda_selection = selection.detach() if cfg.rda_detach_selection else selection
        rel = L.relevancy_targets(data.relevancy[idx].to(device), rda_selection)
        loss_rda = L.rda_loss(logits, rel, mode=cfg.rda_mode, temperature=cfg.rda_temperature)
        loss = loss + cfg.rda_weight * loss_rda
        parts["rda"] = float(loss_rda.detach())
    if cfg.use_fda:
        n_views, gh, gw = data.cell_grid
        pidx = patch_indices(n_views, gh, gw, cfg.patch_cells, cfg.n_patches, gen)  # [B_p, P]
        cells = data.cells.index(pidx.reshape(-1)).to(device)
        feats = render_samples(trained, heads, cells, with_select=False, with_rgb=False)["features"]
        logits = L.segmentation_logits(feats, data.text).reshape(pidx.shape[0], pidx.shape[1], -1)
        dino = data.dino[pidx.reshape(-1)].to(device).float().reshape(pidx.shape[0], pidx.shape[1], -1)
        # Without rebalancing, similar and dissimilar pairs get the same weight (lambda_pos for both).
        w_neg = cfg.fda_w_neg if cfg.fda_rebalance else cfg.fda_w_pos
        loss_fda = L.fda_loss(
            logits,
            dino,
            tau=cfg.fda_tau,
            shift=cfg.fda_shift,
            w_pos=cfg.fda_w_pos,
            w_neg=w_neg,
            divergence=cfg.fda_divergence,
        )
        loss = loss + loss_fda
        parts["fda"] = float(loss_fda.detach())
    if joint and cfg.rgb_weight > 0:
        loss_rgb = torch.mean((out["rgb"] - data.rgb[idx].to(device)) ** 2)
        loss = loss + cfg.rgb_weight * loss_rgb
        parts["rgb"] = float(loss_rgb.detach())
    return loss, parts


def train_semantic(
    trained: TrainedField, data: SemanticData, run_dir: Path, cfg: SemanticConfig, device="cpu"
) -> SemanticHeads:
    """Train (or resume, or just load) the semantic stage of a run.

    The field's appearance changes in the joint phase, so the checkpoint holds the field as well as the
    heads; ``trained`` is updated in place.

    Returns:
        The trained heads.
    """
    ckpt = Path(run_dir) / "checkpoints" / CHECKPOINT_NAME
    log_path = Path(run_dir) / "logs" / "semantic.jsonl"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    n_scales, dim = data.clip_targets.shape[1], data.clip_targets.shape[2]
    heads = build_heads(trained, cfg, dim, n_scales).to(device)
    data.text = data.text.to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    step = 0
    stats = {"train_seconds": 0.0}
    if ckpt.exists():
        payload = load_checkpoint(ckpt, kind="semantic")
        state = payload["state"]
        step = int(payload["step"])
        heads.load_state_dict(state["heads"])
        trained.field.load_state_dict(state["field"])
        gen.set_state(state["rng"])
        stats = dict(state.get("stats", stats))
        # The checkpoint at step == joint_start was written before the switch (the loop switches on entry to
        # that iteration), so it holds the first phase's optimiser.
        joint = step > cfg.joint_start
        _set_trainable(trained, joint)
        opt = _optimizer(trained, heads, cfg, joint)
        opt.load_state_dict(state["optimizer"])
        if step >= cfg.n_iters:
            return heads
        logger.info("resuming semantic training at iteration %d", step)
    else:
        _set_trainable(trained, False)
        opt = _optimizer(trained, heads, cfg, False)
    t0, base_seconds = time.perf_counter(), float(stats["train_seconds"])
    with open(log_path, "a") as log:
        for it in progress(range(step, cfg.n_iters), desc="semantic (3D-OVS)", total=cfg.n_iters - step):
            if it == cfg.joint_start:
                _set_trainable(trained, True)
                opt = _optimizer(trained, heads, cfg, True)
            factor = cfg.lr_decay_ratio ** (it / cfg.n_iters)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * factor
            loss, parts = semantic_losses(trained, heads, data, cfg, it, gen, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done = it + 1
            stats["train_seconds"] = base_seconds + time.perf_counter() - t0
            if done % cfg.log_every == 0 or done == cfg.n_iters:
                rec = {"step": done, "loss": float(loss.detach()), **parts, "seconds": round(stats["train_seconds"], 2)}
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if done % cfg.checkpoint_every == 0 or done == cfg.n_iters:
                state = {
                    "heads": heads.state_dict(),
                    "field": trained.field.state_dict(),
                    "optimizer": opt.state_dict(),
                    "rng": gen.get_state(),
                    "stats": stats,
                    "text": data.text.cpu(),
                    "feature_dim": dim,
                    "n_scales": n_scales,
                }
                save_checkpoint(ckpt, config=asdict(cfg), step=done, state=state, kind="semantic")
    _set_trainable(trained, False)
    return heads


LEGACY_SETTINGS: dict = {
    "rda_temperature": 1.0,
    "rda_detach_selection": False,
    "selection_prior": "none",
    "ray_sampling": "uniform",
    "ray_balance_power": 1.0,
    "semantic_components": (0, 0, 0),
}
"""What settings added later meant before they existed: a run stored without them is read with these."""


def semantic_config_from_dict(d: dict) -> SemanticConfig:
    """Rebuild a :class:`SemanticConfig` from ``asdict`` output (older runs: see :data:`LEGACY_SETTINGS`)."""
    d = {**LEGACY_SETTINGS, **d}
    for key in ("select_components", "semantic_components"):
        if key in d:
            d[key] = tuple(d[key])
    return SemanticConfig(**d)


def load_semantic(trained: TrainedField, run_dir: Path, device="cpu") -> tuple[SemanticHeads, SemanticConfig, Tensor]:
    """Load the semantic checkpoint: heads, config, class text features ``[C, D]``; updates ``trained``'s field."""
    payload = load_checkpoint(Path(run_dir) / "checkpoints" / CHECKPOINT_NAME, kind="semantic")
    cfg = semantic_config_from_dict(payload["config"])
    state = payload["state"]
    # Checkpoints written before these keys existed: the text features have the CLIP dimension.
    n_scales = int(state.get("n_scales", state["heads"]["select_basis.weight"].shape[0]))
    dim = int(state.get("feature_dim", state["text"].shape[-1]))
    heads = build_heads(trained, cfg, dim, n_scales)
    heads.load_state_dict(state["heads"])
    trained.field.load_state_dict(state["field"])
    for p in trained.field.parameters():
        p.requires_grad_(False)
    return heads.to(device).eval(), cfg, state["text"].to(device)
