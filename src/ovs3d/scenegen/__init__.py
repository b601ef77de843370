"""Procedural synthetic scenes in the SPEC §1 layout (for demos, tests and benchmarks)."""

from ovs3d.scenegen.orbit import OrbitConfig, make_orbit
from ovs3d.scenegen.presets import PRESETS, make_scene
from ovs3d.scenegen.room import RoomConfig, make_room
from ovs3d.scenegen.tabletop import TabletopConfig, make_tabletop

__all__ = [
    "PRESETS",
    "OrbitConfig",
    "RoomConfig",
    "TabletopConfig",
    "make_orbit",
    "make_room",
    "make_scene",
    "make_tabletop",
]
