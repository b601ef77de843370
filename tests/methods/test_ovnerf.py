"""OV-NeRF's stage: RSR targets, CSE updates, novel views, and a tiny end-to-end fit."""

import logging

import pytest
import torch
import torch.nn.functional as F

from ovs3d.io.loader import load_scene
from ovs3d.methods.ovnerf.config import OVNeRFConfig
from ovs3d.methods.ovnerf.method import (
    OVNeRF,
    cse_runs,
    masked_cross_entropy,
    novel_poses,
    void_balanced_weights,
)
from ovs3d.methods.ovnerf.rsr import region_vote
from ovs3d.methods.reconstruction import ReconstructionConfig, train_reconstruction
from ovs3d.methods.threedovs.method import SemanticData
from ovs3d.render.cached import render_semantic_samples, top_samples
from ovs3d.render.scene_rays import ray_near, view_rays


def _method(scene_dir, tmp_path, **cfg_overrides) -> OVNeRF:
    scene = load_scene(scene_dir)
    recon = ReconstructionConfig(
        n_iters=20, batch_size=512, init_voxels=16**3, final_voxels=20**3, upsample_iters=(10,), occupancy_iters=()
    )
    trained = train_reconstruction(scene, tmp_path / "r", recon, scene.train_views(False))
    ds = 4.0  # 16 x 12 rays per view
    views = [0, 1]
    samples = [top_samples(trained, *view_rays(scene, v, ds), ray_near(scene), k=4) for v in views]
    pixels = type(samples[0]).cat(samples)
    n, n_cls = len(pixels), len(scene.classes)
    g = torch.Generator().manual_seed(0)
    clip_targets = F.normalize(torch.randn(n, 2, 16, generator=g), dim=-1).half()
    relevancy = torch.rand(n, 2, n_cls, generator=g)
    text = F.normalize(torch.randn(n_cls, 16, generator=g), dim=-1)
    data = SemanticData(
        pixels=pixels,
        clip_targets=clip_targets,
        relevancy=relevancy,
        rgb=torch.rand(n, 3, generator=g),
        cells=pixels.index(torch.zeros(0, dtype=torch.long)),
        dino=torch.zeros(0, 1),
        cell_grid=(0, 0, 0),
        text=text,
        view_ids=tuple(views),
        view_size=scene.image_size(ds),
        downscale=ds,
        raw_relevancy=F.normalize(clip_targets.float(), dim=-1) @ text.T,  # the cosines prepare_data keeps
    )
    cfg = OVNeRFConfig(
        n_iters=10, joint_start=5, batch_size=64, use_fda=False, cse_start=4, cse_every=2, **cfg_overrides
    )
    method = OVNeRF.from_data(trained, cfg, data)
    w, h = data.view_size
    # two masks per view: the left half and a small square inside it (the smaller one wins there)
    left = torch.zeros(h, w, dtype=torch.bool)
    left[:, : w // 2] = True
    square = torch.zeros(h, w, dtype=torch.bool)
    square[2:6, 2:6] = True
    method.proposals = [torch.stack([left, square]).numpy()] * len(views)
    method.scene = scene
    # region crops (rsr_class="crop"): the masks' panoptic partition and one embedding per region
    method.segments = _Segments(method.proposals, F.normalize(torch.randn(len(views), 2, 16, generator=g), dim=-1))
    method.labels = method.initial_labels(data)
    return method


class _Segments:
    """Stands in for :class:`~ovs3d.foundation.pyramid.SegmentTiles` (cached crops) with given embeddings."""

    def __init__(self, masks, embeddings):
        from ovs3d.foundation.pyramid import panoptic_partition

        self.partitions = [panoptic_partition(m) for m in masks]
        self.embeddings = [e[: int(p.max()) + 1].numpy() for p, e in zip(self.partitions, embeddings)]

    def __len__(self):
        return len(self.partitions)

    def partition(self, j):
        return self.partitions[j]


def test_initial_targets_are_rsr_of_the_2d_class_maps(tiny_scene_dir, tmp_path):
    m = _method(tiny_scene_dir, tmp_path, rsr_class="votes")
    w, h = m.data.view_size
    # default rsr_relevancy "scene": cosines min-max normalised per scale and label over all views' pixels
    cos = F.normalize(m.data.clip_targets.float(), dim=-1) @ m.data.text.T  # [R, S, C]
    lo, hi = cos.amin(0, keepdim=True), cos.amax(0, keepdim=True)
    raw = ((cos - lo) / (hi - lo)).mean(1).argmax(-1)
    for j in range(2):
        rows = slice(j * h * w, (j + 1) * h * w)
        expected = region_vote(raw[rows].reshape(h, w), m.proposals[j], "ignore").reshape(-1)
        assert torch.equal(m.labels[rows], expected)
    # the right half is in no mask: ignored
    assert (m.labels.reshape(2, h, w)[:, :, w // 2 :] == -1).all()


@pytest.mark.parametrize("uncovered", ["ignore", "keep"])
def test_initial_targets_by_region_crops(tiny_scene_dir, tmp_path, uncovered):
    from ovs3d.methods.ovnerf.rsr import class_map_from_relevancy, region_crop_classes

    m = _method(tiny_scene_dir, tmp_path, rsr_uncovered=uncovered)
    assert m.cfg.rsr_class == "crop"  # the default
    w, h = m.data.view_size
    seg = m.segments
    cosines = [torch.from_numpy(seg.embeddings[j]) @ m.data.text.T for j in range(2)]
    pixel = class_map_from_relevancy(m.relevancy_2d(m.data)).reshape(2, h, w)
    expected = region_crop_classes(seg.partitions, cosines, pixel if uncovered == "keep" else None)
    assert torch.equal(m.labels, expected.reshape(-1))
    # every pixel of a region has one class, its crop's
    for j in range(2):
        for s_id in range(len(seg.embeddings[j])):
            assert m.labels.reshape(2, h, w)[j][torch.from_numpy(seg.partitions[j] == s_id)].unique().numel() == 1
    right = m.labels.reshape(2, h, w)[:, :, w // 2 :]
    if uncovered == "ignore":
        assert (right == -1).all()
    else:
        assert torch.equal(right, pixel[:, :, w // 2 :])


def test_cse_replaces_targets_with_rsr_of_the_render(tiny_scene_dir, tmp_path):
    m = _method(tiny_scene_dir, tmp_path, rsr_uncovered="keep")
    before = m.labels.clone()
    with torch.no_grad():  # scramble the heads so the render disagrees with the 2D maps
        for p in m.heads.feature_mlp.parameters():
            p.add_(torch.randn_like(p))
    m.update_targets(4)
    w, h = m.data.view_size
    with torch.no_grad():
        feats = render_semantic_samples(m.trained, m.heads, m.data.pixels, with_select=False, with_rgb=False)
    rendered = F.normalize(feats["features"], dim=-1) @ m.query_text.T
    for j in range(2):
        rows = slice(j * h * w, (j + 1) * h * w)
        expected = region_vote(rendered[rows].argmax(-1).reshape(h, w), m.proposals[j], "keep").reshape(-1)
        assert torch.equal(m.labels[rows], expected)
    assert not torch.equal(before, m.labels)
    assert m.stats["cse_updates"][-1]["step"] == 4


def test_cse_runs_on_the_kinds_it_is_set_for(tiny_scene_dir, tmp_path):
    cfg = OVNeRFConfig()
    assert [cse_runs(cfg, k) for k in ("forward", "bounded", "unbounded")] == [False, True, True]
    assert not cse_runs(OVNeRFConfig(use_cse=False), "bounded")
    m = _method(tiny_scene_dir, tmp_path)  # a forward-facing scene with the default kinds: no updates
    assert m.scene.kind == "forward" and m.callbacks() == []
    m.cfg = OVNeRFConfig(cse_start=4, cse_every=2, cse_kinds=("forward",))
    (update,) = m.callbacks()
    assert (update.every, update.start) == (2, 4)
    # a run stored before the setting existed ran CSE on every kind of scene, as the paper's ablation row does
    old = OVNeRF.config_from_dict({"use_cse": True})
    assert old.cse_kinds == ("forward", "bounded", "unbounded") and cse_runs(old, "forward")
    from ovs3d.methods.threedovs.ablations import with_ablation
    from ovs3d.run import FitConfig

    base = FitConfig(scene=tiny_scene_dir, out=tmp_path / "run", method="ovnerf", semantic=cfg)
    paper_cse = with_ablation(base, "cse_every_kind")
    assert paper_cse.semantic.cse_kinds == old.cse_kinds


def test_novel_views_looking_into_nothing_are_skipped(tiny_scene_dir, tmp_path, caplog):
    m = _method(tiny_scene_dir, tmp_path, cse_novel_views=2, cse_min_opacity=1.5)  # no render is that opaque
    m._novel_c2w = novel_poses(m.scene, [0, 1, 2], m.cfg)
    assert m._novel_c2w.shape == (2, 3, 4)
    with caplog.at_level(logging.WARNING):
        m.update_targets(4)
    assert "novel views are off" in caplog.text
    assert (m.novel_labels == -1).all()
    assert m._novel_batch(torch.Generator().manual_seed(0)) is None
    loss, parts = m.loss(6, torch.Generator().manual_seed(0))  # after T: still no novel term, no crash
    assert "novel" not in parts and torch.isfinite(loss)


def test_novel_views_that_see_the_scene_give_a_loss(tiny_scene_dir, tmp_path):
    m = _method(tiny_scene_dir, tmp_path, cse_novel_views=2, cse_min_opacity=0.0, use_rsr=False)
    m._novel_c2w = novel_poses(m.scene, [0, 1, 2], m.cfg)
    m.update_targets(4)
    assert (m.novel_labels >= 0).all()
    loss, parts = m.loss(6, torch.Generator().manual_seed(0))
    assert "novel" in parts and "rsr" in parts and torch.isfinite(loss)
    loss.backward()
    assert m.heads.feature_mlp[0].weight.grad is not None


def test_masked_cross_entropy_ignores_void_and_balanced_weights_bucket_it():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]])
    labels = torch.tensor([0, -1, 1])
    expected = F.cross_entropy(logits[[0, 2]], labels[[0, 2]])
    assert torch.allclose(masked_cross_entropy(logits, labels), expected)
    assert masked_cross_entropy(logits, torch.full((3,), -1)) == 0
    w = void_balanced_weights(torch.tensor([0, 0, 1, -1, -1, -1]), 2, 1.0)
    assert torch.allclose(w, torch.tensor([0.5, 0.5, 1.0, 1 / 3, 1 / 3, 1 / 3]))


@pytest.mark.slow
def test_tiny_ovnerf_fit_beats_the_2d_baseline(small_scene_dir, tmp_path, short_fit_settings):
    from ovs3d.eval.baseline import run_baseline
    from ovs3d.run import FitConfig, evaluate, fit

    s = short_fit_settings["semantic"]
    semantic = OVNeRFConfig(
        n_iters=s.n_iters, joint_start=s.joint_start, batch_size=s.batch_size, patch_cells=s.patch_cells,
        checkpoint_every=s.checkpoint_every, cse_start=130, cse_every=20, cse_novel_views=2,
        cse_kinds=("forward",),  # CSE's path end to end (off on forward-facing scenes by default)
    )  # fmt: skip
    features = short_fit_settings["features"]
    cfg = FitConfig(
        scene=small_scene_dir,
        out=tmp_path / "run",
        method="ovnerf",
        recon=short_fit_settings["recon"],
        semantic=semantic,
        features=features,
        cache_dir=tmp_path / "cache",
    )
    fit(cfg)
    metrics = evaluate(tmp_path / "run")
    ovnerf_protocol = evaluate(tmp_path / "run", protocol="ovnerf")
    # The raw 2D baseline (``ovs3d baseline``). The min-max normalised one scores 0.73 on this scene: OV-NeRF
    # passes it with the default 600 iterations (0.75) but not with this 200-iteration schedule (0.69).
    base = run_baseline(small_scene_dir, tmp_path / "b", cfg=features, cache_dir=tmp_path / "cache")
    assert metrics["miou"] > base["miou"], (metrics["miou"], base["miou"])
    assert ovnerf_protocol["protocol"] == "ovnerf" and metrics["protocol"] == "3dovs"
    assert ovnerf_protocol["miou"] >= metrics["miou"] - 1e-9  # every label is in every view here: no skips


def test_rsr_maps_are_cached_with_the_features(tiny_scene_dir, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from ovs3d.foundation.features import FeatureConfig

    m = _method(tiny_scene_dir, tmp_path)
    fit_cfg = SimpleNamespace(features=FeatureConfig(), cache_dir=tmp_path / "cache")
    backends = {"clip": SimpleNamespace(identity="clip-x"), "masks": SimpleNamespace(identity="masks-y")}
    first = m.cached_initial_labels(m.scene, fit_cfg, backends)
    assert torch.equal(first, m.initial_labels(m.data))
    monkeypatch.setattr(OVNeRF, "initial_labels", lambda self, data: pytest.fail("recomputed a cached RSR map"))
    assert torch.equal(m.cached_initial_labels(m.scene, fit_cfg, backends), first)
    assert len(list((tmp_path / "cache" / "rsr").iterdir())) == 1


def test_novel_poses_of_a_room_stand_inside_its_box_and_look_outward(tmp_path):
    import numpy as np

    from ovs3d.scenegen import make_scene

    root = make_scene("room", 3, tmp_path / "room", width=80, height=60, n_views=24, annotate_every=4, supersample=1)
    scene = load_scene(root)
    assert scene.kind == "bounded"
    cfg = OVNeRFConfig(cse_novel_views=8)
    train = scene.train_views(True)
    poses = novel_poses(scene, train, cfg)
    assert poses.shape == (8, 3, 4)
    aabb = np.asarray(scene.aabb)
    centres = poses[:, :, 3]
    assert ((centres > aabb[0]) & (centres < aabb[1])).all()
    middle = centres.mean(0)
    outward = np.einsum("nk,nk->n", poses[:, :, 2], centres - middle)  # optical axis vs offset from the middle
    assert (outward > 0).all()
    yaws = np.arctan2(poses[:, 0, 2], poses[:, 2, 2])
    assert len(np.unique(np.round(yaws, 3))) == 8  # eight directions around
