"""Device selection."""

from __future__ import annotations

import torch

from ovs3d.errors import OVS3DError


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise the named device (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise OVS3DError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OVS3DError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return dev
