"""Prompt ensembling: template sets, averaging and normalisation, batching, the "none" identity."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from ovs3d.errors import BackendError
from ovs3d.foundation.prompts import (
    SCENE_TEMPLATES,
    TEMPLATE_SETS,
    encode_prompts,
    imagenet_templates,
    templates_for,
)
from ovs3d.foundation.sim import SimCLIP, SimScene


class FakeClip:
    """Deterministic text encoder: a hashed vector per string, deliberately not normalised."""

    identity = "fake"
    dim = 6

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def vector(self, text: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
        g = torch.Generator().manual_seed(seed)
        return torch.randn(self.dim, generator=g) * (1.0 + len(text))  # norms differ per prompt

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        assert isinstance(texts, list)
        self.calls.append(list(texts))
        return torch.stack([self.vector(t) for t in texts]) if texts else torch.zeros(0, self.dim)


def reference_ensemble(clip, labels, templates) -> torch.Tensor:
    """Loop: per label, normalised embedding of every filled template, mean, renormalised."""
    rows = []
    for label in labels:
        embs = [F.normalize(clip.encode_text([t.replace("{}", label)])[0].float(), dim=0) for t in templates]
        rows.append(F.normalize(torch.stack(embs).mean(0), dim=0))
    return torch.stack(rows)


def test_template_sets():
    assert set(TEMPLATE_SETS) == {"none", "imagenet", "imagenet+scene"}
    assert templates_for("none") == ["{}"]
    pytest.importorskip("open_clip")
    imagenet = imagenet_templates()
    assert len(imagenet) == 80 and len(set(imagenet)) == 80
    assert all(t.count("{}") == 1 for t in imagenet)
    assert imagenet[0] == "a bad photo of a {}."
    assert templates_for("imagenet") == imagenet
    ovnerf = templates_for("imagenet+scene")
    assert len(ovnerf) == 85 and ovnerf[:80] == imagenet and tuple(ovnerf[80:]) == SCENE_TEMPLATES
    assert templates_for(["a {}", "the {}."]) == ["a {}", "the {}."]
    for bad in ("imagenet+lerf", ["no placeholder"], ["{} and {}"], []):
        with pytest.raises(ValueError):
            templates_for(bad)


def test_missing_open_clip_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip -> ImportError
    monkeypatch.setitem(sys.modules, "open_clip.zero_shot_metadata", None)
    with pytest.raises(BackendError, match=r"ovs3d\[clip\]"):
        encode_prompts(FakeClip(), ["cup"], "imagenet+scene")
    assert encode_prompts(FakeClip(), ["cup"], "none").shape == (1, 6)  # "none" needs no open_clip


def test_importing_prompts_does_not_import_open_clip():
    code = "import sys, ovs3d.foundation.prompts; assert 'open_clip' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_encode_prompts_averages_normalised_template_embeddings():
    clip = FakeClip()
    labels = ["red apple", "cup", "bowl {odd}"]  # braces in a label are kept as text
    templates = ["a photo of a {}.", "{}", "there is the {} in the scene."]
    got = encode_prompts(clip, labels, templates)
    assert got.shape == (3, 6) and got.dtype == torch.float32
    torch.testing.assert_close(got, reference_ensemble(FakeClip(), labels, templates))
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(3))
    assert clip.calls == [[t.replace("{}", s) for s in labels for t in templates]]
    # hand check for one label: normalise first, then average (a long prompt does not dominate)
    a, b = clip.vector("x 1"), clip.vector("x 22")
    expected = F.normalize(F.normalize(a, dim=0) + F.normalize(b, dim=0), dim=0)
    torch.testing.assert_close(encode_prompts(clip, ["x"], ["{} 1", "{} 22"])[0], expected)


def test_encode_prompts_batches():
    clip = FakeClip()
    labels = [f"label {i}" for i in range(5)]
    templates = ["a {}.", "the {}.", "one {}."]
    whole = encode_prompts(FakeClip(), labels, templates, batch_size=1000)
    got = encode_prompts(clip, labels, templates, batch_size=4)
    assert [len(c) for c in clip.calls] == [4, 4, 4, 3]
    torch.testing.assert_close(got, whole)
    with pytest.raises(ValueError):
        encode_prompts(clip, labels, templates, batch_size=0)
    with pytest.raises(TypeError):
        encode_prompts(clip, "cup", templates)
    assert encode_prompts(clip, [], "none").shape == (0, 6)


def test_encode_prompts_none_is_the_raw_normalised_label():
    clip = FakeClip()
    labels = ["apple", "teddy bear", "apple"]
    got = encode_prompts(clip, labels)
    assert torch.equal(got, F.normalize(FakeClip().encode_text(labels), dim=-1))
    assert clip.calls == [labels]


@pytest.fixture
def sim_clip(tmp_path) -> SimCLIP:
    (tmp_path / "sim").mkdir()
    labels = {"1": "table", "2": "red apple", "3": "coffee mug"}
    (tmp_path / "sim" / "instances.json").write_text(json.dumps({"labels": labels}))
    return SimCLIP(SimScene(tmp_path))


def test_encode_prompts_with_simulated_clip(sim_clip):
    labels = ["table", "red apple", "coffee mug"]
    raw = encode_prompts(sim_clip, labels, "none")
    assert torch.equal(raw, F.normalize(sim_clip.encode_text(labels), dim=-1))
    templates = list(SCENE_TEMPLATES)
    ens = encode_prompts(sim_clip, labels, templates)
    torch.testing.assert_close(ens, reference_ensemble(sim_clip, labels, templates))
    torch.testing.assert_close(ens.norm(dim=-1), torch.ones(3))
    # simulated CLIP hashes every string: templated prompts are other texts, so the ensemble differs
    assert not torch.allclose(ens, raw)


def test_encode_prompts_ovnerf_85_with_simulated_clip(sim_clip):
    pytest.importorskip("open_clip")
    labels = ["table", "coffee mug"]
    full = encode_prompts(sim_clip, labels, "imagenet+scene", batch_size=64)
    assert full.shape == (2, sim_clip.dim)
    torch.testing.assert_close(full, reference_ensemble(sim_clip, labels, templates_for("imagenet+scene")))
