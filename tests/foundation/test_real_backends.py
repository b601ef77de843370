"""Real backends (open_clip, timm, segment_anything) load offline weight files exactly; nothing downloads.

Weights are random (no hub is reachable): a model is built with random weights, saved, and loaded back
through the flag parser, and the loaded parameters must equal the saved ones.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from ovs3d.errors import BackendError
from ovs3d.foundation.base import ClipBackend, DinoBackend, MaskBackend, ViewImage
from ovs3d.foundation.registry import build_clip, build_dino, build_masks

open_clip = pytest.importorskip("open_clip")

TINY = "ovs3d-tiny-clip-test"  # = conftest.TINY_OPEN_CLIP


@pytest.fixture(autouse=True)
def _offline_dirs(tmp_path, monkeypatch):
    """Empty weights dir and cache: nothing outside the test can satisfy a lookup."""
    monkeypatch.setenv("OVS3D_WEIGHTS_DIR", str(tmp_path / "weights_dir"))
    monkeypatch.setenv("OVS3D_CACHE_DIR", str(tmp_path / "ovs3d_cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def assert_same_state(model: torch.nn.Module, saved: dict) -> None:
    state = model.state_dict()
    assert set(saved) <= set(state)
    for k, v in saved.items():
        assert torch.equal(state[k].cpu(), v), k


@pytest.fixture(scope="module")
def tiny_clip(tiny_open_clip_weights):
    """``(weights file, saved state)`` of the tiny open_clip architecture ``TINY`` (tests/foundation/conftest.py)."""
    _, path, state = tiny_open_clip_weights
    return path, state


def test_open_clip_roundtrip_tiny(tiny_clip):
    path, state = tiny_clip
    clip = build_clip(f"open_clip:{TINY}:{path}", None, batch_size=5)
    assert isinstance(clip, ClipBackend) and clip.dim == 32
    assert_same_state(clip.model, state)
    assert clip.identity.startswith(f"open_clip:{TINY}:file=tiny weights.bin@")
    rng = np.random.default_rng(0)
    view = ViewImage("v", rng.random((40, 56, 3)).astype(np.float32))
    boxes = np.array([[0, 0, 56, 40], [3, 4, 20, 30], [10, 10, 18, 14], [30, 5, 56, 40], [0, 0, 8, 8], [1, 2, 9, 33]])
    f = clip.encode_crops(view, boxes)
    assert f.shape == (6, 32) and f.dtype == torch.float32 and torch.isfinite(f).all()
    # batching and ordering do not change results
    one = torch.cat([clip.encode_crops(view, boxes[i : i + 1]) for i in range(len(boxes))])
    torch.testing.assert_close(f, one, atol=1e-5, rtol=1e-4)
    t = clip.encode_text(["a red apple", "table"])
    assert t.shape == (2, 32)
    torch.testing.assert_close(t.norm(dim=1), torch.ones(2))
    # boxes reaching outside the image are zero padded
    assert clip.encode_crops(view, np.array([[-8, -8, 16, 16]])).shape == (1, 32)


def test_open_clip_preprocessing_matches_open_clip_transform(tiny_clip):
    """Batched tensor preprocessing ~ open_clip's PIL pipeline (resize short side, centre crop, mean/std)."""
    from PIL import Image

    path, _ = tiny_clip
    clip = build_clip(f"open_clip:{TINY}:{path}", None)
    _, _, preprocess = open_clip.create_model_and_transforms(TINY, pretrained=str(path))
    yy, xx = np.mgrid[0:120, 0:160]
    img = np.stack([np.sin(xx / 9.0), np.cos(yy / 7.0), np.sin((xx + yy) / 13.0)], -1) * 0.5 + 0.5
    img = (img * 255).round().astype(np.uint8)
    view = ViewImage("v", img.astype(np.float32) / 255.0)
    for x0, y0, x1, y1 in [(0, 0, 160, 120), (10, 5, 90, 45), (20, 20, 60, 110)]:
        ours = clip.preprocess_crops(torch.from_numpy(view.rgb).permute(2, 0, 1), np.array([[x0, y0, x1, y1]]))[0]
        ref = preprocess(Image.fromarray(img[y0:y1, x0:x1]))
        assert ours.shape == ref.shape
        assert torch.corrcoef(torch.stack([ours.flatten(), ref.flatten()]))[0, 1] > 0.99
        assert (ours - ref).abs().mean() < 0.05


def test_open_clip_templates(tiny_clip):
    path, _ = tiny_clip
    plain = build_clip(f"open_clip:{TINY}:{path}", None)
    templ = build_clip(f"open_clip:{TINY}:{path}", None, templates=["a photo of a {}.", "a {} on a table"])
    assert templ.identity != plain.identity and "templates=" in templ.identity
    parts = plain.encode_text(["a photo of a mug.", "a mug on a table"])
    expected = torch.nn.functional.normalize(parts.mean(0), dim=0)
    torch.testing.assert_close(templ.encode_text(["mug"])[0], expected, atol=1e-5, rtol=1e-4)


def test_open_clip_errors(tiny_clip, tmp_path, monkeypatch):
    missing = tmp_path / "nope" / "weights.bin"
    with pytest.raises(BackendError, match=r"weights\.bin.*--clip open_clip:ViT-B-16"):
        build_clip(f"open_clip:ViT-B-16:{missing}", None)
    with pytest.raises(BackendError, match="unknown open_clip architecture"):
        build_clip("open_clip:ViT-Q-99:openai", None)
    with pytest.raises(BackendError, match="unknown open_clip tag 'notatag'.*laion2b_s34b_b88k"):
        build_clip("open_clip:ViT-B-16:notatag", None)
    # a known tag whose weights are not cached: no download, a clear line naming the tag and the flag
    with pytest.raises(BackendError, match=r"'openai'.*--clip open_clip:ViT-B-16:/path/to/weights\.bin.*allow"):
        build_clip("open_clip:ViT-B-16:openai", None, cache_dir=tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackendError, match="HF_HUB_OFFLINE"):
        build_clip("open_clip:ViT-B-16:openai", None, cache_dir=tmp_path / "hub", allow_download=True)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    # weights of the wrong architecture
    path, _ = tiny_clip
    with pytest.raises(BackendError, match="could not load open_clip ViT-B-32"):
        build_clip(f"open_clip:ViT-B-32:{path}", None)


@pytest.mark.slow
def test_open_clip_vit_b_16_roundtrip_and_offline_tag(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None)
    state = model.state_dict()
    del model
    wdir = tmp_path / "weights_dir"
    wdir.mkdir()
    path = wdir / "ViT-B-16-openai.bin"  # also the name under which $OVS3D_WEIGHTS_DIR provides a tag
    torch.save(state, path)
    clip = build_clip(f"open_clip:ViT-B-16:{path}", None)
    assert clip.dim == 512
    assert_same_state(clip.model, state)
    view = ViewImage("v", np.random.default_rng(0).random((30, 40, 3)).astype(np.float32))
    assert clip.encode_crops(view, np.array([[0, 0, 40, 30], [5, 5, 25, 25]])).shape == (2, 512)
    assert clip.encode_text(["a", "b", "c"]).shape == (3, 512)
    # the 'openai' tag resolves offline to $OVS3D_WEIGHTS_DIR/ViT-B-16-openai.bin (with QuickGELU, as trained)
    del clip
    tagged = build_clip("open_clip:ViT-B-16:openai", None, cache_dir=tmp_path / "hub")
    assert tagged.identity.startswith("open_clip:ViT-B-16:openai:file=ViT-B-16-openai.bin@")
    assert_same_state(tagged.model, state)
    assert type(tagged.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    path.unlink()  # 600 MB


# ---------------------------------------------------------------------------------------------------
# timm DINO


@pytest.fixture(scope="module")
def dino_file(tmp_path_factory):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch8_224.dino", pretrained=False, num_classes=0)
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("dino") / "dino_s8.safetensors"
    save_file(state, str(path))
    return path, state


def test_timm_dino_roundtrip(dino_file):
    path, state = dino_file
    dino = build_dino(f"timm:vit_small_patch8_224.dino:{path}", None)
    assert isinstance(dino, DinoBackend) and dino.stride == 8 and dino.dim == 384
    assert_same_state(dino.model, state)
    assert dino.identity.startswith("timm:vit_small_patch8_224.dino:file=dino_s8.safetensors@")
    rgb = np.random.default_rng(0).random((45, 70, 3)).astype(np.float32)
    f = dino.dense_features(ViewImage(None, rgb))
    assert f.shape == (45 // 8, 70 // 8, 384) and f.dtype == torch.float32
    # same as the 3D-OVS reference: hook on blocks[-1] (before the final norm), CLS dropped
    out = {}
    hook = dino.model.blocks[-1].register_forward_hook(lambda m, i, o: out.__setitem__("x", o))
    x = torch.from_numpy(rgb[:40, :64]).permute(2, 0, 1)[None]
    x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        dino.model.forward_features(x)
    hook.remove()
    ref = out["x"][0, 1:].reshape(5, 8, 384)
    torch.testing.assert_close(f, ref, atol=1e-4, rtol=1e-4)


def test_timm_dino_weights_lookup_and_errors(dino_file, tmp_path):
    path, state = dino_file
    with pytest.raises(BackendError, match=r"missing\.safetensors.*--dino timm:vit_small_patch8_224\.dino"):
        build_dino(f"timm:vit_small_patch8_224.dino:{tmp_path / 'missing.safetensors'}", None)
    with pytest.raises(BackendError, match=r"timm vit_small_patch8_224\.dino weights.*--dino timm:"):
        build_dino("timm:vit_small_patch8_224.dino", None, cache_dir=tmp_path / "hub")
    with pytest.raises(BackendError, match="unknown timm model"):
        build_dino("timm:not_a_model_at_all", None)
    # no path: found in $OVS3D_WEIGHTS_DIR under <name>.safetensors
    wdir = tmp_path / "weights_dir"
    wdir.mkdir()
    (wdir / "vit_small_patch8_224.dino.safetensors").symlink_to(path)
    dino = build_dino("timm:vit_small_patch8_224.dino", None, cache_dir=tmp_path / "hub")
    assert dino.identity.startswith("timm:vit_small_patch8_224.dino:hub:file=vit_small_patch8_224.dino.safetensors@")
    assert_same_state(dino.model, state)


# ---------------------------------------------------------------------------------------------------
# SAM


@pytest.fixture(scope="module")
def sam_file(tmp_path_factory):
    pytest.importorskip("segment_anything")
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"](checkpoint=None)
    state = {k: v.clone() for k, v in sam.state_dict().items()}
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b_random.pth"
    torch.save(state, path)
    yield path, state
    path.unlink()  # 375 MB


def test_sam_loads_checkpoint(sam_file, tmp_path, dino_file):
    path, state = sam_file
    masks = build_masks(f"sam:vit_b:{path}", None, points_per_side=2)
    assert isinstance(masks, MaskBackend)
    assert_same_state(masks.model, state)
    assert masks.generator.point_grids[0].shape == (4, 2)
    assert masks.identity.startswith("sam:vit_b:file=sam_vit_b_random.pth@") and ":gen=" in masks.identity
    with pytest.raises(BackendError, match=r"nope\.pth.*--masks sam:vit_b"):
        build_masks(f"sam:vit_b:{tmp_path / 'nope.pth'}", None)
    with pytest.raises(BackendError, match=r"sam_vit_h_4b8939\.pth.*--masks sam:vit_h"):
        build_masks("sam:vit_h", None)
    with pytest.raises(BackendError, match="could not load SAM vit_b checkpoint"):
        build_masks(f"sam:vit_b:{dino_file[0].with_suffix('.safetensors')}", None)


class _CheapImageEncoder(torch.nn.Module):
    """Stands in for SAM's ViT image encoder (about a minute per image on two CPU cores)."""

    img_size = 1024

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linspace(-1, 1, 256 * 64 * 64).reshape(1, 256, 64, 64).expand(x.shape[0], -1, -1, -1)


def _check_sam_output(out: np.ndarray, h: int, w: int) -> None:
    assert out.dtype == bool and out.ndim == 3 and out.shape[1:] == (h, w)
    assert (np.diff(out.sum(axis=(1, 2))) <= 0).all()


def test_sam_generator_runs_end_to_end_with_a_cheap_encoder(sam_file):
    path, _ = sam_file
    masks = build_masks(f"sam:vit_b:{path}", None, points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    masks.model.image_encoder = _CheapImageEncoder()
    rgb = np.zeros((32, 48, 3), np.float32)
    rgb[:, 24:] = 1.0
    _check_sam_output(masks.propose(ViewImage(None, rgb)), 32, 48)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("OVS3D_TEST_SAM_CPU"), reason="set OVS3D_TEST_SAM_CPU=1 (~1 min of CPU)")
def test_sam_generates_masks_on_a_tiny_image(sam_file):
    path, _ = sam_file
    masks = build_masks(f"sam:vit_b:{path}", None, points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    rgb = np.zeros((32, 48, 3), np.float32)
    rgb[:, 24:] = 1.0
    _check_sam_output(masks.propose(ViewImage(None, rgb)), 32, 48)
