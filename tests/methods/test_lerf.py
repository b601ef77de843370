"""LERF's stage: the scale unit in training and at query time, the loss, and a tiny end-to-end fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ovs3d.foundation.features import FeatureConfig
from ovs3d.methods.lerf.config import LERFConfig
from ovs3d.methods.reconstruction import ReconstructionConfig

TINY_RECON = ReconstructionConfig(
    n_iters=20, batch_size=512, init_voxels=16**3, final_voxels=20**3, upsample_iters=(10,), occupancy_iters=()
)


@pytest.fixture(scope="module")
def prepared(tiny_scene_dir, tmp_path_factory):
    """A LERF method prepared (not trained) on the tiny scene over a 20-iteration reconstruction."""
    from ovs3d.foundation.registry import build_backends
    from ovs3d.io.loader import load_scene
    from ovs3d.methods.lerf.method import LERF
    from ovs3d.methods.reconstruction import train_reconstruction
    from ovs3d.run import FitConfig

    tmp = tmp_path_factory.mktemp("lerf")
    scene = load_scene(tiny_scene_dir)
    trained = train_reconstruction(scene, tmp / "r", TINY_RECON, scene.train_views(False))
    cfg = FitConfig(
        scene=tiny_scene_dir,
        out=tmp / "run",
        method="lerf",
        semantic=LERFConfig(n_iters=4, batch_size=64, samples_per_ray=4),
        features=FeatureConfig(semantic_downscale=4.0),
        cache_dir=tmp / "cache",
    )
    specs = {"clip": "sim", "dino": "sim", "masks": "sim"}
    backends = build_backends({"clip", "dino", "masks"}, specs, scene.root, True, "cpu", False)
    return scene, LERF.prepare(scene, trained, cfg, backends, "cpu")


def test_training_scales_are_tile_fraction_times_height_over_focal_times_depth(prepared, monkeypatch):
    from ovs3d.field.language import LanguageField
    from ovs3d.render.cached import packed
    from ovs3d.render.scene_rays import camera_depth

    scene, method = prepared
    data = method.data
    seen: list[torch.Tensor] = []
    original = LanguageField.clip

    def spy(self, encoding, scale):
        seen.append(scale.detach().clone())
        return original(self, encoding, scale)

    monkeypatch.setattr(LanguageField, "clip", spy)
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    method.loss(0, gen)
    # replay the draws of that step and compute the scale of every sample independently
    gen.set_state(state)
    b = method.cfg.batch_size
    idx = torch.randint(0, len(data.pixels), (b,), generator=gen)
    n_bins = data.pyramid.n_levels - 1
    level = torch.randint(0, n_bins, (b,), generator=gen)
    u = torch.rand(b, generator=gen)
    batch = data.pixels.index(idx)
    _, _, ray = packed(batch)
    n = scene.image_size(4.0)[0] * scene.image_size(4.0)[1]
    views = torch.as_tensor(data.view_ids)[idx // n]
    h_over_f = torch.tensor([scene.image_size(1.0)[1] / scene.intrinsics_at(1.0)[int(v)][1] for v in views])
    depth = torch.stack([camera_depth(scene, int(v), batch.xyz[i]) for i, v in enumerate(views)])  # [B, K]
    expected = ((level + u) / n_bins)[:, None] * h_over_f[:, None] * depth
    assert torch.allclose(seen[0], expected[batch.weights > 0], rtol=1e-4, atol=1e-5)
    assert float(data.depth[data.pixels.weights > 0].min()) > 0  # every weighted sample is in front of its camera
    # query time: constant world scales in the same unit, up to the 99th percentile of what training saw
    scales = method.scales
    assert scales[0] == 0 and len(scales) == method.cfg.query_scales
    trained_max = (data.scale_unit[:, None] * data.depth)[data.pixels.weights > 0]
    assert float((trained_max <= scales[-1] + 1e-6).float().mean()) > 0.9
    assert float(scales[-1]) <= float(trained_max.max()) + 1e-6


def test_loss_has_clip_and_dino_parts_and_reaches_only_the_language_field(prepared):
    scene, method = prepared
    for p in method.trained.field.parameters():
        p.grad = None  # left by the reconstruction's last step
    loss, parts = method.loss(0, torch.Generator().manual_seed(0))
    assert set(parts) == {"clip", "dino"} and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in method.trained.field.parameters())  # density and appearance frozen
    grads = [p.grad for p in method.language.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    method.language.zero_grad(set_to_none=True)


def test_paper_cosine_loss_is_minus_cosine(prepared):
    from dataclasses import replace

    scene, method = prepared
    cos = replace(method.cfg, clip_loss="cosine")
    assert cos.clip_loss_weight == 0.01 and method.cfg.clip_loss_weight == 0.1
    saved = method.cfg
    method.cfg = cos
    try:
        _, parts = method.loss(0, torch.Generator().manual_seed(0))
        assert -1.0 <= float(parts["clip"]) <= 1.0
    finally:
        method.cfg = saved


def test_render_gives_unit_features_at_every_query_scale(prepared):
    from ovs3d.render.scene_rays import ray_near, view_rays

    scene, method = prepared
    o, d = view_rays(scene, 0, 8.0)
    out = method.render_rays(o, d, ray_near(scene))
    assert out["language"].shape == (len(o), method.cfg.query_scales, method.text.shape[-1])
    norms = out["language"].float().norm(dim=-1)
    hit = out["acc"] > 0.5
    assert torch.allclose(norms[hit], torch.ones_like(norms[hit]), atol=1e-2)
    rel = method.relevancy(out, method.text, method.negatives)
    assert rel.shape == (len(o), len(scene.classes)) and rel.min() >= 0 and rel.max() <= 1


def test_tiny_lerf_fit_is_more_relevant_inside_each_label_than_outside(small_scene_dir, tmp_path, short_fit_settings):
    from ovs3d.run import FitConfig, evaluate, fit

    cfg = FitConfig(
        scene=small_scene_dir,
        out=tmp_path / "run",
        method="lerf",
        recon=short_fit_settings["recon"],
        semantic=LERFConfig(n_iters=250, batch_size=512, query_scales=6),
        features=short_fit_settings["features"],
        cache_dir=tmp_path / "cache",
    )
    fit(cfg)
    metrics = evaluate(tmp_path / "run")
    rel = metrics["relevancy"]
    assert rel["n_pairs"] > 0 and 0 <= rel["d_relevancy"] <= 1
    # read the relevancy maps back through query and compare inside / outside each label's mask
    from ovs3d.io.loader import load_scene
    from ovs3d.query import query, unique_slugs

    scene = load_scene(small_scene_dir)
    out = query(tmp_path / "run", list(scene.classes), out=tmp_path / "q")
    margins = []
    for v in scene.annotated:
        gt = scene.load_masks(v, 2.0)
        for c, slug in enumerate(unique_slugs(list(scene.classes))):
            r = np.load(out / f"{v:02d}" / f"{slug}.npy")
            if gt[c].any() and (~gt[c]).any():
                margins.append(float(r[gt[c]].mean() - r[~gt[c]].mean()))
    assert np.mean(margins) > 0.05, margins
    assert np.mean(np.array(margins) > 0) >= 0.75, margins
