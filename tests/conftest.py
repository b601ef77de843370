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


@pytest.fixture
def short_fit_settings() -> dict:
    """A short schedule of every stage for end-to-end fits on the ~128x96 test scenes (library loss settings)."""
    from ovs3d.foundation.features import FeatureConfig
    from ovs3d.methods.reconstruction import ReconstructionConfig
    from ovs3d.methods.threedovs.config import SemanticConfig

    recon = ReconstructionConfig(
        n_iters=150,
        batch_size=1024,
        init_voxels=32**3,
        final_voxels=72**3,
        upsample_iters=(30, 60, 90),
        occupancy_iters=(50, 100),
        checkpoint_every=50,
    )
    semantic = SemanticConfig(n_iters=200, joint_start=100, batch_size=512, patch_cells=6, checkpoint_every=100)
    return {"recon": recon, "semantic": semantic, "features": FeatureConfig(semantic_downscale=2.0)}
