"""Shared fixtures: tiny synthetic scenes (generated once per session) and quiet progress bars."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ovs3d.utils.console import set_quiet

set_quiet(True)
torch.set_num_threads(2)

TINY = {"width": 64, "height": 48, "n_views": 8, "n_annotated": 2, "supersample": 1}


@pytest.fixture(scope="session")
def tiny_scene_dir(tmp_path_factory) -> Path:
    """A 64x48, 8-view tabletop scene (seed 0)."""
    from ovs3d.scenegen import make_scene

    return make_scene("tabletop", 0, tmp_path_factory.mktemp("scenes") / "tiny", **TINY)


@pytest.fixture(scope="session")
def small_scene_dir(tmp_path_factory) -> Path:
    """A 128x96, 10-view tabletop scene (seed 1) for the end-to-end tests."""
    from ovs3d.scenegen import make_scene

    cfg = {"width": 128, "height": 96, "n_views": 10, "n_annotated": 2, "supersample": 1}
    return make_scene("tabletop", 1, tmp_path_factory.mktemp("scenes") / "small", **cfg)
