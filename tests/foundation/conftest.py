"""Fixtures of the foundation tests: a tiny open_clip architecture saved to a file, a scene of random images."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ovs3d.io.scene import Scene

TINY_OPEN_CLIP = "ovs3d-tiny-clip-test"
"""The architecture name the tiny open_clip config is registered under."""


@pytest.fixture(scope="session")
def tiny_open_clip_weights(tmp_path_factory) -> tuple[str, Path, dict]:
    """``(arch, weights file, saved state)``: a tiny open_clip architecture (registered for the tests) with random
    weights saved to a file whose name has a space in it."""
    open_clip = pytest.importorskip("open_clip")
    d = tmp_path_factory.mktemp("tiny_clip")
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "patch_size": 32, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (d / f"{TINY_OPEN_CLIP}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d / f"{TINY_OPEN_CLIP}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_OPEN_CLIP, pretrained=None)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    path = d / "tiny weights.bin"  # a space in the name on purpose
    torch.save(state, path)
    return TINY_OPEN_CLIP, path, state


@pytest.fixture
def image_scene() -> Callable[..., Scene]:
    """``image_scene(root, n=3, size=(80, 60))``: a scene of ``n`` random images (dummy poses, labels a, b)."""

    def make(root: Path, n: int = 3, size: tuple[int, int] = (80, 60)) -> Scene:
        rng = np.random.default_rng(0)
        paths = []
        (root / "images").mkdir(parents=True)
        for i in range(n):
            p = root / "images" / f"{i:02d}.png"
            Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(p)
            paths.append(p)
        return Scene(
            root=root,
            image_paths=paths,
            width=size[0],
            height=size[1],
            c2w=np.zeros((n, 3, 4), np.float32),
            intrinsics=np.zeros((n, 4), np.float32),
            near_far=np.ones((n, 2), np.float32),
            kind="forward",
            aabb=np.zeros((2, 3), np.float32),
            classes=["a", "b"],
            annotated=[0],
        )

    return make
