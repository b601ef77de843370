"""Cached ray samples: each ray marched once through the frozen density, its heaviest samples kept.

Density never changes in the semantic stages (3D-OVS, OV-NeRF), so the compositing weights of every
training ray are fixed. Instead of marching each ray from scratch at every step (the reference's 482
samples per ray), each ray is marched once and only its ``K`` heaviest samples (position and weight) are
kept; a training step then evaluates the appearance, feature and selection branches at ``K`` points per
ray and composites them with :func:`~ovs3d.render.volume.accumulate_packed`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ovs3d.field.semantic import SemanticHeads
from ovs3d.field.trained import TrainedField
from ovs3d.io.scene import Scene
from ovs3d.render.marching import march
from ovs3d.render.rays import pixel_grid
from ovs3d.render.scene_rays import ray_near, rays_at
from ovs3d.render.volume import accumulate_packed
from ovs3d.utils.console import progress


@dataclass
class RaySamples:
    """The weight-carrying samples of a set of rays.

    Attributes:
        xyz: ``[R, K, 3]`` sample positions (field frame).
        weights: ``[R, K]`` compositing weights (0 for padding), rescaled per ray to sum to the weight the
            full render composites, so ``Σ w c`` over the kept samples estimates the full colour.
        viewdirs: ``[R, 3]`` unit ray directions.
        captured: ``[R]`` fraction of each ray's total weight that the ``K`` samples keep.
        depth: ``[R]`` expected ray parameter ``Σ w t`` over *all* marched samples (for depth maps).
    """

    xyz: Tensor
    weights: Tensor
    viewdirs: Tensor
    captured: Tensor
    depth: Tensor

    _FIELDS = ("xyz", "weights", "viewdirs", "captured", "depth")

    def __len__(self) -> int:
        return self.xyz.shape[0]

    def index(self, idx: Tensor) -> RaySamples:
        """Subset of rays ``idx`` ``[B]``."""
        return RaySamples(*(getattr(self, k)[idx] for k in self._FIELDS))

    def to(self, device) -> RaySamples:
        """Move to ``device``."""
        return RaySamples(*(getattr(self, k).to(device) for k in self._FIELDS))

    @staticmethod
    def cat(items: list[RaySamples]) -> RaySamples:
        """Concatenate along rays."""
        return RaySamples(*(torch.cat([getattr(i, k) for i in items]) for k in RaySamples._FIELDS))


@torch.no_grad()
def top_samples(
    trained: TrainedField, rays_o: Tensor, rays_d: Tensor, near: float, k: int, chunk: int = 4096
) -> RaySamples:
    """March rays through the frozen density and keep each ray's ``k`` heaviest samples.

    Args:
        trained: the reconstructed field.
        rays_o: ``[R, 3]`` origins (field frame).
        rays_d: ``[R, 3]`` directions.
        near: minimum ray parameter.
        k: samples kept per ray.
        chunk: rays marched at once.

    Returns:
        :class:`RaySamples` (samples below the marching weight threshold are zero-weight padding).
    """
    device = trained.field.aabb.device
    out = []
    thr = trained.config.march.weight_threshold
    for i in range(0, rays_o.shape[0], chunk):
        o, d = rays_o[i : i + chunk].to(device), rays_d[i : i + chunk].to(device)
        m = march(trained.field, trained.occupancy, o, d, trained.config.march, near=near)
        kk = min(k, m.weights.shape[1])
        w, idx = m.weights.topk(kk, dim=1)  # [r, K]
        idx, order = idx.sort(dim=1)  # front to back
        w = torch.gather(w, 1, order)
        xyz = torch.gather(m.xyz, 1, idx[..., None].expand(-1, -1, 3))
        w = torch.where(w > thr, w, torch.zeros_like(w))
        total = m.weights.sum(1).clamp_min(1e-8)
        captured = w.sum(1) / total
        # Rescale the kept weights to what the full render composites (every sample above the threshold):
        # truncated weights would darken colours, and the joint phase's RGB loss would then brighten the
        # appearance to compensate, which ruins full renders (~33 -> ~19 dB on tabletop seed 0).
        composited = torch.where(m.weights > thr, m.weights, torch.zeros_like(m.weights)).sum(1)
        w = w * (composited / w.sum(1).clamp_min(1e-8))[:, None]
        depth = (m.weights * m.t_mid).sum(1)  # the same expectation as render_rgb's depth
        out.append(RaySamples(xyz.cpu(), w.cpu(), F.normalize(d, dim=-1).cpu(), captured.cpu(), depth.cpu()))
    return RaySamples.cat(out)


def view_pixel_samples(
    trained: TrainedField, scene: Scene, views: list[int], downscale: float, k: int, desc: str = "caching ray samples"
) -> RaySamples:
    """Samples of every pixel ray of ``views`` at ``1/downscale``, views concatenated, row-major."""
    w, h = scene.image_size(downscale)
    u, v = pixel_grid(w, h)
    near = ray_near(scene)
    parts = []
    for view in progress(views, desc=desc):
        o, d = rays_at(scene, view, downscale, u, v)
        parts.append(top_samples(trained, o, d, near, k))
    return RaySamples.cat(parts)


def token_grid(width: int, height: int, stride: int) -> tuple[Tensor, Tensor]:
    """Image coordinates of the centres of the ``stride`` x ``stride`` cells of a feature map.

    A ray through a cell centre stands for the cell (the reference averages the 8x8 rays of the cell,
    which for a pinhole camera is the same ray up to its length).

    Returns:
        ``u`` ``[h * w]`` and ``v`` ``[h * w]`` with ``h = height // stride``, ``w = width // stride``.
    """
    gh, gw = height // stride, width // stride
    v, u = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32), indexing="ij")
    return (u.reshape(-1) + 0.5) * stride, (v.reshape(-1) + 0.5) * stride


def view_token_samples(
    trained: TrainedField, scene: Scene, views: list[int], downscale: float, stride: int, k: int
) -> RaySamples:
    """Samples of the rays through the DINO cells of ``views`` (images at ``1/downscale``), row-major."""
    w, h = scene.image_size(downscale)
    u, v = token_grid(w, h, stride)
    near = ray_near(scene)
    parts = []
    for view in progress(views, desc="caching DINO-cell rays"):
        o, d = rays_at(scene, view, downscale, u, v)
        parts.append(top_samples(trained, o, d, near, k))
    return RaySamples.cat(parts)


def packed(samples: RaySamples) -> tuple[Tensor, Tensor, Tensor]:
    """The weight-carrying samples of ``samples`` packed: positions ``[M, 3]``, weights ``[M]``, ray of each ``[M]``."""
    keep = samples.weights > 0  # [R, K]
    return samples.xyz[keep], samples.weights[keep], keep.nonzero()[:, 0]


def render_semantic_samples(
    trained: TrainedField, heads: SemanticHeads, samples: RaySamples, with_select: bool, with_rgb: bool
) -> dict[str, Tensor]:
    """Composite the semantic branches (and optionally colour) over cached samples (Eq. 1–2 of 3D-OVS).

    Args:
        trained: field (appearance branch; frozen or not as the caller's phase says).
        heads: feature head and selection volume.
        samples: ``R`` rays with ``K`` samples each.
        with_select: also render the selection (Eq. 2, before the softmax).
        with_rgb: also render colour.

    Returns:
        ``features`` ``[R, D]`` (not normalised), optionally ``select_raw`` ``[R, S]`` and ``rgb`` ``[R, 3]``.
    """
    n_rays = len(samples)
    pts, w, ray_idx = packed(samples)
    app = trained.field.app_features(pts)  # [M, app_dim]
    out = {"features": accumulate_packed(w, heads.features(app, pts), ray_idx, n_rays)}
    if with_select:
        out["select_raw"] = accumulate_packed(w, heads.selection(pts), ray_idx, n_rays)
    if with_rgb:
        rgb = trained.field.rgb(app, samples.viewdirs[ray_idx])
        out["rgb"] = accumulate_packed(w, rgb, ray_idx, n_rays)
    return out
