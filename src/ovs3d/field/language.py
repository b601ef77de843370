"""LERF's language field over a frozen-density radiance field (Kerr et al. 2023, §3.1–3.2; facts B.0).

Positions (detached: language never shapes density) -> a multi-resolution grid encoding -> a CLIP head
conditioned on a world scale, and a DINO head (a training regulariser only). LERF encodes positions with
tcnn hash grids (2 x 12 levels, 16 -> 512); on a CPU we use what the rest of the field uses: VM-factorised
planes and lines (TensoRF), one VM grid per resolution level, their per-component products concatenated.
With the default two levels (a quarter of the field's grid resolution and the full one) and 16 components
per plane-line pair, the encoding has 2 x 48 = 96 features.

Heads (LERF's shapes, narrower by default for the CPU): CLIP ``[encoding ‖ scale] -> width x layers (ReLU)
-> D``, each sample's output L2-normalised; DINO ``encoding -> width (ReLU) -> D_dino``, not normalised.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovs3d.field.tensorf import _vm_params, normalize_coords, vm_sample


class LanguageField(nn.Module):
    """Parameters of a language field: multi-resolution VM encoding, scale-conditioned CLIP head, DINO head.

    Args:
        aabb: ``[2, 3]`` box the grids span (the radiance field's).
        resolution: ``(G_x, G_y, G_z)`` of the radiance field; level ``i`` has ``round(G · levels[i])``.
        levels: resolution factor of each encoding level.
        components: components per plane-line pair of every level.
        clip_dim: CLIP dimension ``D``.
        dino_dim: DINO dimension (0: no DINO head).
        clip_width: hidden width of the CLIP head.
        clip_layers: hidden layers of the CLIP head.
        dino_width: hidden width of the DINO head (one hidden layer).
        seed: initialisation seed.
    """

    def __init__(
        self,
        aabb: Tensor,
        resolution: Sequence[int],
        levels: Sequence[float] = (0.25, 1.0),
        components: Sequence[int] = (16, 16, 16),
        clip_dim: int = 512,
        dino_dim: int = 384,
        clip_width: int = 128,
        clip_layers: int = 3,
        dino_width: int = 128,
        seed: int = 0,
    ) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).clone())
        self.planes = nn.ModuleList()
        self.lines = nn.ModuleList()
        for factor in levels:
            res = [max(2, int(round(g * factor))) for g in resolution]
            planes, lines = _vm_params(components, res, 0.1, gen)
            self.planes.append(planes)
            self.lines.append(lines)
        self.encoding_dim = len(levels) * sum(components)
        with torch.random.fork_rng(devices=[]):  # layer init draws from the global RNG: seed it, then restore
            torch.manual_seed(seed)
            layers: list[nn.Module] = []
            width_in = self.encoding_dim + 1
            for _ in range(clip_layers):
                layers += [nn.Linear(width_in, clip_width), nn.ReLU(inplace=True)]
                width_in = clip_width
            self.clip_mlp = nn.Sequential(*layers, nn.Linear(width_in, clip_dim))
            self.dino_mlp = (
                nn.Sequential(
                    nn.Linear(self.encoding_dim, dino_width), nn.ReLU(inplace=True), nn.Linear(dino_width, dino_dim)
                )
                if dino_dim
                else None
            )

    def encode(self, xyz: Tensor) -> Tensor:
        """``[M, E]`` grid encoding of points ``[M, 3]`` (field frame; detached from the caller's graph)."""
        xyz_n = normalize_coords(xyz.detach(), self.aabb)
        return torch.cat([vm_sample(p, line, xyz_n) for p, line in zip(self.planes, self.lines)], dim=-1)

    def clip(self, encoding: Tensor, scale: Tensor) -> Tensor:
        """``[M, D]`` unit CLIP embeddings of encoded samples ``[M, E]`` at world scales ``[M]``."""
        return F.normalize(self.clip_mlp(torch.cat([encoding, scale[:, None].to(encoding.dtype)], dim=-1)), dim=-1)

    def dino(self, encoding: Tensor) -> Tensor:
        """``[M, D_dino]`` DINO features of encoded samples ``[M, E]``."""
        if self.dino_mlp is None:
            raise ValueError("this language field has no DINO head")
        return self.dino_mlp(encoding)
