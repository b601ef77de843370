"""Methods by name: what ``--method`` chooses, for the run layer, the CLI and evaluation.

Each entry names the method's config class (a plain dataclass, importable without torch, so the CLI can
build its flags) and its :class:`~ovs3d.methods.base.SemanticMethod` class, imported on first use.
``rgb`` is the reconstruction alone and has neither.
"""

from __future__ import annotations

import importlib
from typing import Any

from ovs3d.errors import OVS3DError

METHODS: dict[str, tuple[str, str, str]] = {
    "3dovs": (
        "ovs3d.methods.threedovs.config:SemanticConfig",
        "ovs3d.methods.threedovs.method:ThreeDOVS",
        "3D-OVS (Liu et al.): Selection Volume, RDA, FDA",
    ),
    "ovnerf": (
        "ovs3d.methods.ovnerf.config:OVNeRFConfig",
        "ovs3d.methods.ovnerf.method:OVNeRF",
        "OV-NeRF (Liao et al.): 3D-OVS's field with Region Semantic Ranking and Cross-view Self-enhancement",
    ),
    "lerf": (
        "ovs3d.methods.lerf.config:LERFConfig",
        "ovs3d.methods.lerf.method:LERF",
        "LERF (Kerr et al.) with the panoptic prior (Ji et al.): a scale-conditioned language field",
    ),
}
"""Semantic methods: name -> (config class, method class, one-line description)."""

RECONSTRUCTION_ONLY = "rgb"
DEFAULT_METHOD = "3dovs"


def method_names() -> list[str]:
    """Every ``--method`` value: the semantic methods and ``rgb``."""
    return [*METHODS, RECONSTRUCTION_ONLY]


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def check_method(name: str) -> None:
    """Raise a one-line :class:`OVS3DError` listing the methods if ``name`` is not one."""
    if name not in METHODS and name != RECONSTRUCTION_ONLY:
        listing = "; ".join([f"{k}: {v[2]}" for k, v in METHODS.items()] + ["rgb: reconstruction only"])
        raise OVS3DError(f"unknown method {name!r}; choose one of {', '.join(method_names())} ({listing})")


def method_config_type(name: str) -> type | None:
    """The config class of method ``name`` (None for ``rgb``)."""
    check_method(name)
    return None if name == RECONSTRUCTION_ONLY else _load(METHODS[name][0])


def get_method(name: str):
    """The :class:`~ovs3d.methods.base.SemanticMethod` class of ``name``."""
    check_method(name)
    if name == RECONSTRUCTION_ONLY:
        raise OVS3DError("method 'rgb' is a reconstruction only: it has no semantic stage")
    return _load(METHODS[name][1])
