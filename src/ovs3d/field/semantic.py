"""Parameters that 3D-OVS adds to a reconstructed TensoRF field (paper App. A.1, Fig. 6).

* A CLIP-feature head: an MLP from the shared 27-D appearance feature to the CLIP dimension, without the
  view direction (the RGB and CLIP branches share the appearance volume).
* A 3D Selection Volume: an independent VM grid (density-sized: 16, 4, 4 components) whose components a
  linear basis maps to one value per CLIP scale, squashed with a sigmoid per point (Eq. 2 renders and
  softmaxes it per ray).

* Optionally (``semantic_components``, ours) a semantic VM grid of its own whose components join the
  appearance feature at the MLP input, so that the CLIP branch can tell apart places the appearance
  volume encodes alike (a small object against its similar-looking neighbour).

The official decoder has no nonlinearity (an affine map); ``feature_activation=True`` (our default)
uses ReLUs, the "MLP" of the paper; both are available.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ovs3d.field.tensorf import _vm_params, normalize_coords, resample_vm, vm_sample


class SemanticHeads(nn.Module):
    """CLIP-feature head and Selection Volume.

    Args:
        aabb: ``[2, 3]`` box of the field.
        resolution: ``(G_x, G_y, G_z)`` of the selection grid (the loaded field's resolution).
        app_dim: appearance feature size of the field (27).
        feature_dim: CLIP dimension ``D`` (512 for ViT-B/16).
        n_scales: number of CLIP scales ``S``.
        width: hidden width of the feature MLP (128).
        select_components: components per plane-line pair of the selection volume (16, 4, 4).
        feature_activation: ReLUs in the feature MLP (paper) or none (official code).
        seed: initialisation seed.
        semantic_components: components per plane-line pair of the semantic grid; all 0 = none (paper).
    """

    def __init__(
        self,
        aabb: Tensor,
        resolution: Sequence[int],
        app_dim: int = 27,
        feature_dim: int = 512,
        n_scales: int = 3,
        width: int = 128,
        select_components: Sequence[int] = (16, 4, 4),
        feature_activation: bool = True,
        seed: int = 0,
        semantic_components: Sequence[int] = (0, 0, 0),
    ) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).clone())
        act = [nn.ReLU(inplace=True)] if feature_activation else []
        self.select_planes, self.select_lines = _vm_params(select_components, resolution, 0.1, gen)
        n_sem = sum(semantic_components)
        self.feature_planes, self.feature_lines = (
            _vm_params(semantic_components, resolution, 0.1, gen) if n_sem else (nn.ParameterList(), nn.ParameterList())
        )
        with torch.random.fork_rng(devices=[]):  # layer init draws from the global RNG: seed it, then restore
            torch.manual_seed(seed)
            self.feature_mlp = nn.Sequential(
                nn.Linear(app_dim + n_sem, width), *act, nn.Linear(width, width), *act, nn.Linear(width, feature_dim)
            )
            self.select_basis = nn.Linear(sum(select_components), n_scales, bias=True)

    def features(self, app_feats: Tensor, xyz: Tensor | None = None) -> Tensor:
        """Per-sample CLIP features ``[M, D]`` from appearance features ``[M, app_dim]`` (and, with a
        semantic grid, the sample positions ``[M, 3]``)."""
        if len(self.feature_planes):
            if xyz is None:
                raise ValueError("these heads have a semantic grid: pass the sample positions")
            grid = vm_sample(self.feature_planes, self.feature_lines, normalize_coords(xyz, self.aabb))
            app_feats = torch.cat([app_feats, grid], dim=-1)
        return self.feature_mlp(app_feats)

    def selection(self, xyz: Tensor) -> Tensor:
        """Per-sample selection values ``[M, S]`` in (0, 1) at world/NDC points ``[M, 3]``."""
        comps = vm_sample(self.select_planes, self.select_lines, normalize_coords(xyz, self.aabb))
        return torch.sigmoid(self.select_basis(comps))

    @torch.no_grad()
    def resize(self, resolution: Sequence[int]) -> None:
        """Resize the selection grid (used when a checkpoint was trained at another resolution)."""
        p, l = resample_vm(list(self.select_planes), list(self.select_lines), resolution)
        self.select_planes = nn.ParameterList([nn.Parameter(x) for x in p])
        self.select_lines = nn.ParameterList([nn.Parameter(x) for x in l])
        if len(self.feature_planes):
            p, l = resample_vm(list(self.feature_planes), list(self.feature_lines), resolution)
            self.feature_planes = nn.ParameterList([nn.Parameter(x) for x in p])
            self.feature_lines = nn.ParameterList([nn.Parameter(x) for x in l])

    def grid_parameters(self) -> list[nn.Parameter]:
        """Selection (and semantic) planes and lines (grid learning rate)."""
        return [*self.select_planes, *self.select_lines, *self.feature_planes, *self.feature_lines]

    def network_parameters(self) -> list[nn.Parameter]:
        """Feature MLP and selection basis (network learning rate)."""
        return [*self.feature_mlp.parameters(), *self.select_basis.parameters()]
