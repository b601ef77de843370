"""Backend flags (SPEC §3): parsing, clear one-line errors, identities, offline weight resolution."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovs3d.errors import BackendError
from ovs3d.foundation import weights
from ovs3d.foundation.registry import build_clip, build_dino, build_masks
from ovs3d.foundation.sim import SimCLIP, SimDINO, SimMasks
from ovs3d.foundation.superpixel import SuperpixelMasks


def sim_scene(root: Path, sim: dict | None = None) -> Path:
    (root / "sim" / "instances").mkdir(parents=True)
    m = np.ones((32, 48), np.uint16)
    m[8:24, 8:24] = 2
    Image.fromarray(m).save(root / "sim" / "instances" / "v0.png")
    data: dict = {"labels": {"1": "table", "2": "mug"}}
    if sim:
        data["sim"] = sim
    (root / "sim" / "instances.json").write_text(json.dumps(data))
    return root


@pytest.fixture(autouse=True)
def _offline_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("OVS3D_WEIGHTS_DIR", str(tmp_path / "weights_dir"))
    monkeypatch.setenv("OVS3D_CACHE_DIR", str(tmp_path / "ovs3d_cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_sim_specs(tmp_path):
    root = sim_scene(tmp_path / "scene")
    clip = build_clip("sim", root)
    assert isinstance(clip, SimCLIP) and clip.seed == 0
    assert build_clip("sim:3", root).seed == 3
    assert build_clip("sim", root, seed=5).seed == 5
    assert build_clip(" SIM:7 ", root).seed == 7
    assert isinstance(build_dino("sim", root), SimDINO)
    assert isinstance(build_masks("sim:1", root), SimMasks)
    idents = {build_clip(f"sim:{s}", root).identity for s in range(3)}
    assert len(idents) == 3
    assert build_dino("sim:1", root).identity != build_dino("sim:2", root).identity
    assert build_masks("sim:1", root).identity != build_masks("sim:2", root).identity
    other = sim_scene(tmp_path / "other", sim={"clip_alpha": 0.5, "dino_sigma": 0.2, "masks_p_drop": 0.0})
    assert "clip_alpha=0.5" in build_clip("sim", other).identity
    assert "dino_sigma=0.2" in build_dino("sim", other).identity
    assert "masks_p_drop=0" in build_masks("sim", other).identity


def test_superpixel_specs():
    assert isinstance(build_masks("superpixel", None), SuperpixelMasks)
    assert build_masks("superpixel:felzenszwalb", None).method == "felzenszwalb"
    assert build_masks("superpixel:slic", None).identity != build_masks("superpixel:felzenszwalb", None).identity


@pytest.mark.parametrize(
    ("builder", "spec", "pattern"),
    [
        (build_clip, "", "empty --clip"),
        (build_clip, "clip-vit", "unknown --clip backend 'clip-vit'.*open_clip:<arch>"),
        (build_clip, "open_clip", "malformed --clip 'open_clip'.*open_clip:<arch>:<tag or weights file>"),
        (build_clip, "open_clip:ViT-B-16", "malformed --clip"),
        (build_clip, "open_clip::openai", "malformed --clip"),
        (build_clip, "sim:abc", "seed must be an integer"),
        (build_dino, "dino", "unknown --dino backend 'dino'.*timm:<name>"),
        (build_dino, "timm:", "malformed --dino"),
        (build_masks, "sam", "unknown SAM model type ''"),
        (build_masks, "sam:vit_x:/a.pth", "unknown SAM model type 'vit_x'.*vit_h"),
        (build_masks, "superpixel:watershed", "unknown superpixel method"),
        (build_masks, "mask2former", "unknown --masks backend.*sam:<vit_h"),
    ],
)
def test_bad_specs(builder, spec, pattern):
    with pytest.raises(BackendError, match=pattern) as info:
        builder(spec, None)
    assert "\n" not in str(info.value)


def test_sim_needs_a_synthetic_scene(tmp_path):
    for builder, flag in ((build_clip, "clip"), (build_dino, "dino"), (build_masks, "masks")):
        with pytest.raises(BackendError, match=f"--{flag} sim needs a synthetic scene") as info:
            builder("sim", None)
        assert "\n" not in str(info.value)
        real = tmp_path / "real_scene"
        real.mkdir(exist_ok=True)
        with pytest.raises(BackendError, match=f"--{flag} sim: .*real_scene/sim/instances.json") as info:
            builder("sim", real)
        assert "\n" not in str(info.value)


def test_missing_weight_files_name_the_file_and_the_flag(tmp_path):
    cases = [
        (build_clip, f"open_clip:ViT-B-16:{tmp_path}/w.bin", "--clip open_clip:ViT-B-16:"),
        (
            build_dino,
            f"timm:vit_base_patch8_224.dino:{tmp_path}/w.safetensors",
            "--dino timm:vit_base_patch8_224.dino:",
        ),
        (build_masks, f"sam:vit_h:{tmp_path}/sam.pth", "--masks sam:vit_h:"),
    ]
    for builder, spec, flag in cases:
        with pytest.raises(BackendError) as info:
            builder(spec, None)
        msg = str(info.value)
        assert spec.rsplit(":", 1)[1] in msg and flag in msg and "\n" not in msg


def test_weights_resolution(tmp_path, monkeypatch):
    wdir = tmp_path / "weights_dir"
    wdir.mkdir()
    f = wdir / "sam_vit_b_01ec64.pth"
    f.write_bytes(b"x" * 100)
    # explicit path, then a bare name looked up in $OVS3D_WEIGHTS_DIR
    assert weights.resolve_weights_file(f, what="w", flag="--f") == f.resolve()
    monkeypatch.chdir(tmp_path)
    assert weights.resolve_weights_file("sam_vit_b_01ec64.pth", what="w", flag="--f") == f.resolve()
    with pytest.raises(BackendError, match="other.pth.*--f"):
        weights.resolve_weights_file("other.pth", what="w", flag="--f")
    # then ovs3d's own cache
    cache = tmp_path / "ovs3d_cache" / "weights"
    cache.mkdir(parents=True)
    (cache / "in_cache.bin").write_bytes(b"y")
    assert weights.find_weights(["missing.bin", "in_cache.bin"]) == cache / "in_cache.bin"
    assert weights.looks_like_path("/a/b") and weights.looks_like_path("w.safetensors")
    assert not weights.looks_like_path("laion2b_s34b_b88k") and not weights.looks_like_path("openai")


def test_fingerprint_changes_with_the_weights(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    a = weights.fingerprint(f)
    assert a.startswith("w.bin@1000:")
    f.write_bytes(b"b" * 1000)
    os.utime(f, ns=(1, 1))
    assert weights.fingerprint(f) != a


def test_downloads_need_permission_and_network(monkeypatch):
    with pytest.raises(BackendError, match="downloads are off.*--allow-download"):
        weights.check_download_allowed(False, what="X weights", hint="pass --x FILE")
    weights.check_download_allowed(True, what="X weights", hint="pass --x FILE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackendError, match="HF_HUB_OFFLINE"):
        weights.check_download_allowed(True, what="X weights", hint="pass --x FILE")


def test_importing_the_registry_keeps_heavy_packages_out():
    code = (
        "import sys, ovs3d.foundation.registry, ovs3d.foundation.sim, ovs3d.foundation.openclip, "
        "ovs3d.foundation.dino, ovs3d.foundation.sam\n"
        "print(sorted(m for m in ('open_clip', 'timm', 'segment_anything') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
