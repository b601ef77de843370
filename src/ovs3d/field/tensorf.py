"""TensoRF with the vector-matrix (VM) decomposition (Chen et al., ECCV 2022), as used by 3D-OVS.

A 3D feature grid is factorised into three plane-line pairs: for plane axes ``(a, b)`` and line axis
``c`` (``MAT_MODE`` / ``VEC_MODE``), component ``k`` of a point is ``plane_k(x_a, x_b) * line_k(x_c)``.
Density sums all density components (ReLU activation, as the 3D-OVS LLFF config); appearance stacks the
appearance components and maps them with a linear basis to a small feature (27-D) that the RGB MLP (and,
in 3D-OVS, the CLIP-feature head) decode.

The maths lives in pure functions (:func:`vm_sample`, :func:`resample_vm`, :func:`tv_loss`); the module
:class:`TensoRFField` only owns the parameters and forwards to them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAT_MODE = ((0, 1), (0, 2), (1, 2))
VEC_MODE = (2, 1, 0)


def normalize_coords(xyz: Tensor, aabb: Tensor) -> Tensor:
    """Map world points ``[M, 3]`` inside ``aabb`` ``[2, 3]`` to ``[-1, 1]^3``."""
    return (xyz - aabb[0]) * (2.0 / (aabb[1] - aabb[0])) - 1.0


def resolution_for_voxels(n_voxels: int, aabb: Tensor) -> list[int]:
    """Grid resolution per axis with cubic voxels, about ``n_voxels`` in ``aabb`` (TensoRF's ``N_to_reso``)."""
    size = (aabb[1] - aabb[0]).tolist()
    voxel = (math.prod(size) / n_voxels) ** (1.0 / 3.0)
    return [max(2, int(round(s / voxel))) for s in size]


def vm_sample(planes: Sequence[Tensor], lines: Sequence[Tensor], xyz_n: Tensor) -> Tensor:
    """Sample VM-factorised features at normalised points.

    Args:
        planes: three ``[1, C_i, G_b, G_a]`` planes for ``MAT_MODE[i] = (a, b)``.
        lines: three ``[1, C_i, G_c, 1]`` lines for ``VEC_MODE[i] = c``.
        xyz_n: ``[M, 3]`` points in ``[-1, 1]^3``.

    Returns:
        ``[M, sum_i C_i]`` per-component products ``plane * line`` (bilinear/linear, ``align_corners=True``).
    """
    outs = []
    for plane, line, (a, b), c in zip(planes, lines, MAT_MODE, VEC_MODE):
        grid_p = xyz_n[:, [a, b]].view(1, -1, 1, 2)  # [1, M, 1, 2]
        grid_l = torch.stack([torch.zeros_like(xyz_n[:, c]), xyz_n[:, c]], -1).view(1, -1, 1, 2)
        p = F.grid_sample(plane, grid_p, mode="bilinear", align_corners=True)  # [1, C, M, 1]
        l = F.grid_sample(line, grid_l, mode="bilinear", align_corners=True)  # [1, C, M, 1]
        outs.append((p * l)[0, :, :, 0])  # [C, M]
    return torch.cat(outs, 0).T  # [M, sum C]


def resample_vm(planes: Sequence[Tensor], lines: Sequence[Tensor], resolution: Sequence[int]):
    """Resize VM factors to a new grid resolution (coarse-to-fine upsampling).

    Args:
        planes: three ``[1, C_i, G_b, G_a]`` planes.
        lines: three ``[1, C_i, G_c, 1]`` lines.
        resolution: new ``(G_x, G_y, G_z)``.

    Returns:
        ``(planes, lines)`` resized bilinearly with ``align_corners=True`` (values at the box corners kept).
    """
    new_planes, new_lines = [], []
    for plane, line, (a, b), c in zip(planes, lines, MAT_MODE, VEC_MODE):
        size_p = (resolution[b], resolution[a])
        new_planes.append(F.interpolate(plane, size=size_p, mode="bilinear", align_corners=True))
        new_lines.append(F.interpolate(line, size=(resolution[c], 1), mode="bilinear", align_corners=True))
    return new_planes, new_lines


def tv_loss(planes: Sequence[Tensor]) -> Tensor:
    """Total-variation regulariser on VM planes (TensoRF's ``TVLoss``, mean squared finite differences).

    Args:
        planes: ``[1, C, H, W]`` tensors.

    Returns:
        Scalar: sum over planes of the mean squared vertical plus horizontal differences.
    """
    total = planes[0].new_zeros(())
    for p in planes:
        dh = (p[:, :, 1:, :] - p[:, :, :-1, :]).pow(2).mean()
        dw = (p[:, :, :, 1:] - p[:, :, :, :-1]).pow(2).mean()
        total = total + 2.0 * (dh + dw)
    return total


def _vm_params(components: Sequence[int], resolution: Sequence[int], scale: float, gen: torch.Generator):
    planes, lines = [], []
    for n, (a, b), c in zip(components, MAT_MODE, VEC_MODE):
        planes.append(nn.Parameter(scale * torch.randn(1, n, resolution[b], resolution[a], generator=gen)))
        lines.append(nn.Parameter(scale * torch.randn(1, n, resolution[c], 1, generator=gen)))
    return nn.ParameterList(planes), nn.ParameterList(lines)


class TensoRFField(nn.Module):
    """Parameters of a TensoRF-VM radiance field (density and appearance grids, basis, RGB MLP).

    Args:
        aabb: ``[2, 3]`` box the grids span (world or NDC coordinates).
        resolution: ``(G_x, G_y, G_z)`` grid resolution.
        density_components: components per plane-line pair for density (TensoRF: 16, 4, 4).
        app_components: components per pair for appearance (TensoRF: 48, 12, 12).
        app_dim: appearance feature size after the basis matrix (27).
        mlp_width: hidden width of the RGB MLP (128).
        seed: initialisation seed.
        density_init_scale: standard deviation of the density planes' and lines' initial values
            (TensoRF: 0.1).
        app_init_scale: the same for the appearance planes and lines (TensoRF: 0.1).
    """

    def __init__(
        self,
        aabb: Tensor,
        resolution: Sequence[int],
        density_components: Sequence[int] = (16, 4, 4),
        app_components: Sequence[int] = (48, 12, 12),
        app_dim: int = 27,
        mlp_width: int = 128,
        seed: int = 0,
        density_init_scale: float = 0.1,
        app_init_scale: float = 0.1,
    ) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.contracted = False
        """Whether positions are in mip-NeRF 360's contracted space (unbounded scenes; set by the owner and
        stored beside the state dict)."""
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).clone())
        self.register_buffer("resolution", torch.tensor(list(resolution), dtype=torch.long))
        self.density_planes, self.density_lines = _vm_params(density_components, resolution, density_init_scale, gen)
        self.app_planes, self.app_lines = _vm_params(app_components, resolution, app_init_scale, gen)
        with torch.random.fork_rng(devices=[]):  # layer init draws from the global RNG: seed it, then restore
            torch.manual_seed(seed)
            self.basis_mat = nn.Linear(sum(app_components), app_dim, bias=False)
            self.rgb_mlp = nn.Sequential(
                nn.Linear(app_dim + 3, mlp_width),
                nn.ReLU(inplace=True),
                nn.Linear(mlp_width, mlp_width),
                nn.ReLU(inplace=True),
                nn.Linear(mlp_width, 3),
            )
        nn.init.constant_(self.rgb_mlp[-1].bias, 0.0)

    @property
    def grid_resolution(self) -> list[int]:
        """Current ``(G_x, G_y, G_z)``."""
        return [int(r) for r in self.resolution.tolist()]

    def density(self, xyz: Tensor) -> Tensor:
        """Density ``[M]`` (ReLU of the summed density components) at world points ``[M, 3]``."""
        feats = vm_sample(self.density_planes, self.density_lines, normalize_coords(xyz, self.aabb))
        return F.relu(feats.sum(-1))

    def app_features(self, xyz: Tensor) -> Tensor:
        """Appearance features ``[M, app_dim]`` at world points ``[M, 3]``."""
        feats = vm_sample(self.app_planes, self.app_lines, normalize_coords(xyz, self.aabb))
        return self.basis_mat(feats)

    def rgb(self, app_feats: Tensor, viewdirs: Tensor) -> Tensor:
        """Colour ``[M, 3]`` in [0, 1] from appearance features ``[M, app_dim]`` and unit view directions ``[M, 3]``."""
        return torch.sigmoid(self.rgb_mlp(torch.cat([app_feats, viewdirs], -1)))

    @torch.no_grad()
    def upsample(self, resolution: Sequence[int]) -> None:
        """Resize all grids to ``resolution`` (new parameters: rebuild the optimiser afterwards)."""
        for name in ("density", "app"):
            planes, lines = getattr(self, f"{name}_planes"), getattr(self, f"{name}_lines")
            new_p, new_l = resample_vm(list(planes), list(lines), resolution)
            setattr(self, f"{name}_planes", nn.ParameterList([nn.Parameter(p) for p in new_p]))
            setattr(self, f"{name}_lines", nn.ParameterList([nn.Parameter(p) for p in new_l]))
        self.resolution = torch.tensor(list(resolution), dtype=torch.long, device=self.aabb.device)

    @torch.no_grad()
    def shrink(self, box: Tensor) -> None:
        """Crop every grid to the grid points that enclose ``box`` ``[2, 3]`` (TensoRF's ``shrink``).

        Grid points sit at ``aabb[0] + i · (aabb[1] - aabb[0]) / (G - 1)`` (``align_corners=True``); the kept
        index range is the smallest one whose points enclose ``box`` (clipped to the grid), and the new
        ``aabb`` is that range's first and last point, so the field's values at every kept point, and hence
        everywhere inside the new box, are unchanged. The resolution becomes the kept range's size (later
        upsamplings spend their voxels inside the smaller box). Rebuild the optimiser afterwards.
        """
        box = torch.as_tensor(box, dtype=self.aabb.dtype, device=self.aabb.device).reshape(2, 3)
        res = self.resolution.to(self.aabb.dtype)
        units = (self.aabb[1] - self.aabb[0]) / (res - 1).clamp(min=1)
        lo = torch.floor((box[0] - self.aabb[0]) / units).clamp(min=0)
        hi = torch.ceil((box[1] - self.aabb[0]) / units)
        hi = torch.minimum(torch.maximum(hi, lo + 1), res - 1)  # at least two points per axis
        lo = torch.minimum(lo, hi - 1).long().tolist()
        hi = hi.long().tolist()
        for name in ("density", "app"):
            planes, lines = getattr(self, f"{name}_planes"), getattr(self, f"{name}_lines")
            new_p = [p[..., lo[b] : hi[b] + 1, lo[a] : hi[a] + 1] for p, (a, b) in zip(planes, MAT_MODE)]
            new_l = [ln[..., lo[c] : hi[c] + 1, :] for ln, c in zip(lines, VEC_MODE)]
            setattr(self, f"{name}_planes", nn.ParameterList([nn.Parameter(p.contiguous()) for p in new_p]))
            setattr(self, f"{name}_lines", nn.ParameterList([nn.Parameter(x.contiguous()) for x in new_l]))
        first = torch.tensor(lo, dtype=self.aabb.dtype, device=self.aabb.device)
        last = torch.tensor(hi, dtype=self.aabb.dtype, device=self.aabb.device)
        origin = self.aabb[0].clone()
        self.aabb = torch.stack([origin + first * units, origin + last * units])
        self.resolution = torch.tensor([b - a + 1 for a, b in zip(lo, hi)], dtype=torch.long, device=self.aabb.device)

    def grid_parameters(self) -> list[nn.Parameter]:
        """Plane and line parameters (learning rate ``lr_grid``)."""
        return [*self.density_planes, *self.density_lines, *self.app_planes, *self.app_lines]

    def network_parameters(self) -> list[nn.Parameter]:
        """Basis matrix and RGB MLP parameters (learning rate ``lr_net``)."""
        return [*self.basis_mat.parameters(), *self.rgb_mlp.parameters()]
