"""A reconstructed field as every method uses it: the TensoRF parameters, the occupancy grid, the settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ovs3d.field.tensorf import TensoRFField


@dataclass
class TrainedField:
    """A reconstructed field ready to render.

    Attributes:
        field: the TensoRF parameters.
        occupancy: ``[G_z, G_y, G_x]`` bool grid (or ``None``).
        config: the reconstruction stage's configuration (its ``march`` settings and ``app_dim`` are read
            by renderers and semantic heads).
        step: iterations trained.
    """

    field: TensoRFField
    occupancy: torch.Tensor | None
    config: Any
    step: int

    @property
    def device(self) -> torch.device:
        """Device of the field's parameters."""
        return self.field.aabb.device
