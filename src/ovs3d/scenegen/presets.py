"""Named scene presets for ``ovs3d make-scene --preset P``.

:data:`PRESETS` maps a preset name to its configuration dataclass; :func:`make_scene` builds the
configuration from a seed and keyword overrides and writes the scene folder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ovs3d.errors import OVS3DError
from ovs3d.scenegen.orbit import OrbitConfig, make_orbit
from ovs3d.scenegen.room import RoomConfig, make_room
from ovs3d.scenegen.tabletop import TabletopConfig, make_tabletop

PRESETS: dict[str, type] = {"tabletop": TabletopConfig, "room": RoomConfig, "orbit": OrbitConfig}
"""Preset name to configuration class."""

_GENERATORS: dict[str, Callable[[Any, Path], Path]] = {
    "tabletop": make_tabletop,
    "room": make_room,
    "orbit": make_orbit,
}


def scene_config(preset: str, seed: int, **overrides: Any) -> Any:
    """The configuration of preset ``preset`` with ``seed`` and keyword overrides (not yet validated: its
    ``validate(name)`` names the settings in messages as ``name`` says, e.g. as the CLI flags).

    Raises:
        OVS3DError: unknown preset or field.
    """
    if preset not in PRESETS:
        raise OVS3DError(f"unknown scene preset {preset!r}; choose one of: {', '.join(sorted(PRESETS))}")
    cls = PRESETS[preset]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise OVS3DError(f"unknown {preset} option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    return cls(**{**overrides, "seed": int(seed)})


def make_scene(preset: str, seed: int, out: Path, **overrides: Any) -> Path:
    """Write the scene of preset ``preset`` with ``seed`` into ``out``.

    Args:
        preset: a key of :data:`PRESETS`.
        seed: random seed.
        out: destination folder (must not exist, be empty, or be a scene written by ``make-scene``).
        **overrides: fields of the preset's configuration (e.g. ``width=64``).

    Returns:
        ``out``.

    Raises:
        OVS3DError: unknown preset or field, bad value, ``out`` holds something else.
    """
    config = scene_config(preset, seed, **overrides)
    return _GENERATORS[preset](config, Path(out))
