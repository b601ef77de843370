import pytest
import torch

from ovs3d import losses as L
from ovs3d.io.loader import load_scene
from ovs3d.methods.reconstruction import ReconstructionConfig, train_reconstruction
from ovs3d.methods.targets import patch_indices
from ovs3d.methods.threedovs.config import SemanticConfig
from ovs3d.methods.threedovs.method import build_heads
from ovs3d.methods.threedovs.method import set_trainable as _set_trainable
from ovs3d.render.cached import render_semantic_samples as render_samples
from ovs3d.render.cached import token_grid, top_samples
from ovs3d.render.marching import march, render_rgb
from ovs3d.render.scene_rays import ray_near, view_rays


def _trained(scene, tmp_path):
    cfg = ReconstructionConfig(
        n_iters=30,
        batch_size=512,
        init_voxels=16**3,
        final_voxels=24**3,
        upsample_iters=(10,),
        occupancy_iters=(20,),
        occupancy_max_resolution=32,
        visibility_rays=2048,
        checkpoint_every=100,
    )
    return train_reconstruction(scene, tmp_path / "r", cfg, scene.train_views(False))


def _random_targets(scene_dir, tmp_path, **extra):
    """A tiny trained field and random semantic targets on view 0's 16 x 12 rays (cells = the same rays)."""
    import torch.nn.functional as F

    from ovs3d.methods.threedovs.method import SemanticData

    scene = load_scene(scene_dir)
    trained = _trained(scene, tmp_path)
    o, d = view_rays(scene, 0, 4.0)
    s = top_samples(trained, o, d, ray_near(scene), k=4)
    g = torch.Generator().manual_seed(0)
    n = len(s)
    data = SemanticData(
        pixels=s,
        clip_targets=F.normalize(torch.randn(n, 3, 16, generator=g), dim=-1).half(),
        relevancy=torch.rand(n, 3, 5, generator=g),
        rgb=torch.rand(n, 3, generator=g),
        cells=s,
        dino=torch.randn(n, 8, generator=g).half(),
        cell_grid=(1, 12, 16),
        text=F.normalize(torch.randn(5, 16, generator=g), dim=-1),
    )
    for key, make in extra.items():
        setattr(data, key, make(n, g))
    return trained, data


def test_cached_samples_reproduce_full_rendering(tiny_scene_dir, tmp_path):
    scene = load_scene(tiny_scene_dir)
    trained = _trained(scene, tmp_path)
    o, d = view_rays(scene, 0, 4.0)
    with torch.no_grad():
        m = march(trained.field, trained.occupancy, o, d, trained.config.march, near=ray_near(scene))
        rendered = render_rgb(trained.field, m, d, trained.config.march)
        full = rendered["rgb"]
        # keeping every sample gives exactly the full compositing
        s = top_samples(trained, o, d, ray_near(scene), k=m.n_samples)
        heads = build_heads(trained, SemanticConfig(), feature_dim=16, n_scales=3)
        cached = render_samples(trained, heads, s, with_select=False, with_rgb=True)["rgb"]
    assert torch.allclose(cached, full, atol=1e-5)
    # the per-ray depth is the full march's expectation, whatever K is kept
    assert torch.allclose(s.depth, rendered["depth"], atol=1e-5)
    assert torch.allclose(s.captured, torch.ones_like(s.captured), atol=1e-3)  # weights < 1e-4 are dropped
    # K heaviest samples keep the largest share of each ray's weight
    s8 = top_samples(trained, o, d, ray_near(scene), k=8)
    assert s8.xyz.shape == (o.shape[0], 8, 3)
    assert torch.all(s8.captured <= 1 + 1e-5)
    assert torch.allclose(s8.depth, rendered["depth"], atol=1e-5)
    # the kept weights are rescaled to the opacity the full render composites (no darkened colours)
    thr = trained.config.march.weight_threshold
    composited = torch.where(m.weights > thr, m.weights, torch.zeros_like(m.weights)).sum(1)
    assert torch.allclose(s8.weights.sum(1), composited, atol=1e-5)
    assert torch.all(s8.captured <= composited / m.weights.sum(1).clamp_min(1e-8) + 1e-5)
    sub = s8.index(torch.tensor([3, 1]))
    assert torch.equal(sub.depth, s8.depth[[3, 1]]) and sub.xyz.shape == (2, 8, 3)


def test_gradients_reach_selection_volume_and_feature_head(tiny_scene_dir, tmp_path):
    scene = load_scene(tiny_scene_dir)
    trained = _trained(scene, tmp_path)
    o, d = view_rays(scene, 1, 4.0)
    s = top_samples(trained, o[:64], d[:64], ray_near(scene), k=4)
    heads = build_heads(trained, SemanticConfig(), feature_dim=16, n_scales=3)
    for p in trained.field.parameters():  # phase 1 of the schedule: the RGB field is frozen
        p.grad = None
    _set_trainable(trained, joint=False)
    out = render_samples(trained, heads, s, with_select=True, with_rgb=False)
    sel = L.selection_softmax(out["select_raw"])
    targets = torch.nn.functional.normalize(torch.randn(64, 3, 16), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    rel = torch.rand(64, 3, 5)
    loss = L.feature_loss(out["features"], L.selected_features(targets, sel))
    loss = loss + L.rda_loss(L.segmentation_logits(out["features"], text), L.relevancy_targets(rel, sel))
    loss.backward()
    assert heads.select_planes[0].grad is not None and heads.select_planes[0].grad.abs().sum() > 0
    assert heads.select_basis.weight.grad.abs().sum() > 0
    assert heads.feature_mlp[0].weight.grad.abs().sum() > 0
    # the frozen field gets nothing
    assert all(p.grad is None for p in trained.field.parameters())


def test_patch_indices_are_square_windows_of_one_view():
    g = torch.Generator().manual_seed(0)
    idx = patch_indices(n_views=3, grid_h=10, grid_w=12, patch=4, n_patches=5, generator=g)
    assert idx.shape == (5, 16)
    for row in idx:
        view = row // 120
        assert torch.all(view == view[0])
        r, c = (row % 120) // 12, row % 12
        assert (r.max() - r.min()) == 3 and (c.max() - c.min()) == 3
    u, v = token_grid(width=32, height=16, stride=8)
    assert u.tolist() == [4.0, 12.0, 20.0, 28.0] * 2 and v.tolist() == [4.0] * 4 + [12.0] * 4


def test_variants_set_what_they_name(tmp_path):
    import pytest

    from ovs3d.methods.threedovs.ablations import with_ablation
    from ovs3d.run import FitConfig

    base = FitConfig(scene=tmp_path, out=tmp_path / "run")
    paper = with_ablation(base, "paper").semantic
    assert (paper.rda_mode, paper.rda_weight, paper.fda_w_pos, paper.fda_w_neg) == ("paper", 1.0, 200.0, 0.2)
    assert paper.selection_prior == "none" and with_ablation(base, "reference").semantic.selection_prior == "none"
    ref = with_ablation(base, "reference").semantic
    assert (ref.rda_mode, ref.rda_weight, ref.fda_divergence, ref.fda_w_pos) == ("code", 1.0, "kl", 200.0)
    combo = with_ablation(base, "paper+no_fda+semantic.fda_w_pos=0.0+features.dino_downscale=0.5")
    assert combo.semantic.rda_mode == "paper" and not combo.semantic.use_fda and combo.semantic.fda_w_pos == 0.0
    assert combo.features.dino_downscale == 0.5 and base.features.dino_downscale == 1.0  # copies, not edits
    assert with_ablation(base, "single_scale").features.pixel_clip.patch_divisors == (7,)
    assert with_ablation(base, "smallest_scale").features.pixel_clip.patch_divisors == (10,)
    assert not with_ablation(base, "no_selection").semantic.use_selection and base.semantic.use_selection
    assert with_ablation(base, "no_neg").semantic.fda_w_neg == 0.0
    # a float setting reads fractions as the CLI does (not as the string "1/3")
    assert with_ablation(base, "recon.background_from=1/3").recon.background_from == 1 / 3
    with pytest.raises(ValueError, match="no field"):
        with_ablation(base, "semantic.not_a_field=1")
    with pytest.raises(ValueError, match="unknown ablation"):
        with_ablation(base, "no_such_variant")


def test_semantic_checkpoint_describes_its_heads(tiny_scene_dir, tmp_path):
    from ovs3d.methods.base import train_method
    from ovs3d.methods.threedovs.method import SemanticData, ThreeDOVS

    scene = load_scene(tiny_scene_dir)
    trained = _trained(scene, tmp_path)
    o, d = view_rays(scene, 0, 4.0)
    pixels = top_samples(trained, o[:256], d[:256], ray_near(scene), k=4)
    n_scales, dim, n_classes = 2, 12, 3
    g = torch.Generator().manual_seed(0)
    data = SemanticData(
        pixels=pixels,
        clip_targets=torch.nn.functional.normalize(torch.randn(256, n_scales, dim, generator=g), dim=-1).half(),
        relevancy=torch.rand(256, n_scales, n_classes, generator=g),
        rgb=torch.rand(256, 3, generator=g),
        cells=pixels.index(torch.zeros(0, dtype=torch.long)),
        dino=torch.zeros(0, 1),
        cell_grid=(0, 0, 0),
        text=torch.nn.functional.normalize(torch.randn(n_classes, dim, generator=g), dim=-1),
    )
    cfg = SemanticConfig(n_iters=4, joint_start=2, batch_size=64, use_fda=False, checkpoint_every=4)
    heads = train_method(ThreeDOVS.from_data(trained, cfg, data), tmp_path / "run").heads
    loaded = ThreeDOVS.load(trained, tmp_path / "run", "cpu")
    assert loaded.heads.selection(torch.zeros(5, 3)).shape == (5, n_scales)
    assert loaded.text.shape == (n_classes, dim) and loaded.cfg == cfg
    for a, b in zip(heads.state_dict().values(), loaded.heads.state_dict().values(), strict=True):
        assert torch.equal(a, b)


class _Interrupt(Exception):
    pass


def test_semantic_resume_from_the_joint_start_matches_uninterrupted(tiny_scene_dir, tmp_path, monkeypatch):
    """A checkpoint written at ``joint_start`` (the defaults have checkpoint_every == joint_start) resumes."""
    import copy

    from ovs3d.methods.base import train_method
    from ovs3d.methods.threedovs.method import ThreeDOVS

    trained, data = _random_targets(tiny_scene_dir, tmp_path, ray_weights=lambda n, g: torch.rand(n, generator=g))
    cfg = SemanticConfig(n_iters=6, joint_start=3, checkpoint_every=3, batch_size=32, patch_cells=4, n_patches=2)
    full = train_method(ThreeDOVS.from_data(copy.deepcopy(trained), cfg, data), tmp_path / "full").heads

    losses = ThreeDOVS.loss

    def crash(self, step, generator):
        if step == 4:  # step 4: after the checkpoint at the joint start
            raise _Interrupt
        return losses(self, step, generator)

    monkeypatch.setattr(ThreeDOVS, "loss", crash)
    with pytest.raises(_Interrupt):
        train_method(ThreeDOVS.from_data(copy.deepcopy(trained), cfg, data), tmp_path / "cut")
    monkeypatch.setattr(ThreeDOVS, "loss", losses)
    resumed = train_method(ThreeDOVS.from_data(copy.deepcopy(trained), cfg, data), tmp_path / "cut").heads
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name


@pytest.mark.parametrize("rebalance", [True, False])
def test_fda_term_is_eq14_or_eq12_by_the_rebalance_switch(tiny_scene_dir, tmp_path, rebalance):
    """The "no rebalance" ablation goes through Eq. 12 (the plain correlation loss), not a reweighted Eq. 14."""
    from ovs3d.methods.threedovs.method import ThreeDOVS

    trained, data = _random_targets(tiny_scene_dir, tmp_path)
    s = data.pixels
    cfg = SemanticConfig(patch_cells=4, n_patches=2, fda_rebalance=rebalance, fda_w_pos=20.0, fda_w_neg=0.2)
    m = ThreeDOVS.from_data(trained, cfg, data)
    got = m.fda_loss(torch.Generator().manual_seed(1))
    pidx = patch_indices(1, 12, 16, 4, 2, torch.Generator().manual_seed(1))
    feats = render_samples(trained, m.heads, s.index(pidx.reshape(-1)), with_select=False, with_rgb=False)["features"]
    logits = L.segmentation_logits(feats, data.text).reshape(2, 16, -1)
    dino = data.dino[pidx.reshape(-1)].float().reshape(2, 16, -1)
    pos_neg = L.fda_loss(logits, dino, w_pos=20.0, w_neg=0.2, return_terms=True)[1]
    if rebalance:
        expected = 20.0 * pos_neg["pos"] + 0.2 * pos_neg["neg"]
    else:
        expected = 20.0 * L.fda_loss(logits, dino, rebalance=False)
    torch.testing.assert_close(got.detach(), expected.detach())


def _method_on_random_targets(scene_dir, tmp_path, **cfg):
    from ovs3d.methods.threedovs.method import ThreeDOVS

    trained, data = _random_targets(
        scene_dir, tmp_path, scale_prior=lambda n, g: torch.randint(0, 3, (n,), generator=g)
    )
    base = {"n_iters": 4, "joint_start": 2, "batch_size": 32, "patch_cells": 4, "n_patches": 2}
    return ThreeDOVS.from_data(trained, SemanticConfig(**{**base, **cfg}), data)


@pytest.mark.parametrize(
    ("settings", "first_phase", "joint_phase"),
    [
        ({}, {"feat", "sel", "rda", "fda"}, {"feat", "sel", "rda", "fda", "rgb"}),
        ({"selection_prior": "none"}, {"feat", "rda", "fda"}, {"feat", "rda", "fda", "rgb"}),
        ({"selection_prior": "none", "use_rda": False, "use_fda": False}, {"feat"}, {"feat", "rgb"}),
        ({"selection_prior": "dino", "rgb_weight": 0.0}, {"feat", "sel", "rda", "fda"}, {"feat", "sel", "rda", "fda"}),
        ({"selection_prior": "agreement"}, {"feat", "sel", "rda", "fda"}, {"feat", "sel", "rda", "fda", "rgb"}),
    ],
)
def test_the_loss_set_follows_the_settings_and_the_phase(tiny_scene_dir, tmp_path, settings, first_phase, joint_phase):
    m = _method_on_random_targets(tiny_scene_dir, tmp_path, **settings)
    if settings.get("selection_prior") == "none":
        m.data.scale_prior = None
    g = torch.Generator().manual_seed(0)
    loss0, parts0 = m.loss(0, g)
    loss1, parts1 = m.loss(2, g)  # joint_start
    assert set(parts0) == first_phase and set(parts1) == joint_phase
    assert torch.isfinite(loss0) and torch.isfinite(loss1)


def test_the_phase_switch_unfreezes_the_appearance_only_in_the_joint_phase(tiny_scene_dir, tmp_path):
    m = _method_on_random_targets(tiny_scene_dir, tmp_path)
    f = m.trained.field
    appearance = {id(p) for p in [*f.app_planes, *f.app_lines, *f.basis_mat.parameters(), *f.rgb_mlp.parameters()]}
    assert m.phase(1) == 0 and m.phase(2) == 1
    groups0 = m.enter_phase(0)
    trained0 = {id(p) for p in f.parameters() if p.requires_grad}
    in_groups0 = {id(p) for g in groups0 for p in g["params"]}
    assert not trained0 and not (in_groups0 & appearance)
    groups1 = m.enter_phase(1)
    trained1 = {id(p) for p in f.parameters() if p.requires_grad}
    in_groups1 = {id(p) for g in groups1 for p in g["params"]}
    assert trained1 == appearance and appearance <= in_groups1
    assert not any(p.requires_grad for p in f.density_planes)  # density stays frozen


def test_consensus_relevancy_gives_rays_ending_in_the_same_voxels_one_value(tiny_scene_dir, tmp_path):
    """The same view's rays twice with different relevancies (two "views" of one surface): each pair reads
    back one value, the mean of what reached its voxels; a relevancy that is the same everywhere stays."""
    from ovs3d.methods.threedovs.method import consensus_relevancy
    from ovs3d.render.cached import RaySamples

    scene = load_scene(tiny_scene_dir)
    trained = _trained(scene, tmp_path)
    o, d = view_rays(scene, 0, 4.0)
    s = top_samples(trained, o, d, ray_near(scene), k=4)
    both = RaySamples.cat([s, s])
    g = torch.Generator().manual_seed(0)
    n = len(s)
    rel = torch.rand(2 * n, 3, 5, generator=g)
    got = consensus_relevancy(both, rel, trained)
    hit = s.weights.sum(1) > 1e-8
    torch.testing.assert_close(got[:n][hit], got[n:][hit])
    assert not torch.allclose(got[:n][hit], rel[:n][hit])  # one view's own value is outvoted
    flat = torch.full((2 * n, 3, 5), 0.25)
    torch.testing.assert_close(consensus_relevancy(both, flat, trained), flat)


def test_without_the_selection_volume_the_targets_are_the_scale_average(tiny_scene_dir, tmp_path):
    """Tab. 4's "w/o Selection Volume": the feature target is the normalised mean of the scales' features, RDA's
    the mean relevancy, and the Selection Volume receives no gradient."""
    m = _method_on_random_targets(tiny_scene_dir, tmp_path, use_selection=False)
    m.data.scale_prior = None
    g = torch.Generator().manual_seed(0)
    loss, parts = m.loss(0, g)
    idx = m.draw_rays(torch.Generator().manual_seed(0))
    batch = m.data.pixels.index(idx)
    out = render_samples(m.trained, m.heads, batch, with_select=False, with_rgb=False)
    mean_target = torch.nn.functional.normalize(m.data.clip_targets[idx].float().mean(1), dim=-1)
    torch.testing.assert_close(parts["feat"], L.feature_loss(out["features"], mean_target))
    rel = m.data.relevancy[idx].float().mean(1)
    logits = L.segmentation_logits(out["features"], m.text, normalize=False)
    torch.testing.assert_close(parts["rda"], L.rda_loss(logits, rel, mode="code"))
    loss.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in m.heads.grid_parameters())
    assert m.render_rays(*view_rays(load_scene(tiny_scene_dir), 0, 8.0), 0.0)["selection"].unique().tolist() == [
        pytest.approx(1 / 3)
    ]


@pytest.mark.parametrize("detach", [False, True])
def test_feature_detach_selection_leaves_the_selection_to_rda(tiny_scene_dir, tmp_path, detach):
    # Feature loss only: the Selection Volume learns from it unless detached.
    m = _method_on_random_targets(
        tiny_scene_dir, tmp_path, feature_detach_selection=detach, use_rda=False, use_fda=False
    )
    m.data.scale_prior = None
    loss, parts = m.loss(0, torch.Generator().manual_seed(0))
    assert set(parts) == {"feat"}
    loss.backward()
    select_grad = m.heads.select_planes[0].grad
    assert (select_grad is None or select_grad.abs().sum() == 0) == detach
    assert m.heads.feature_mlp[0].weight.grad.abs().sum() > 0  # the feature head still learns
    # With RDA the selection still learns, through RDA's target.
    m2 = _method_on_random_targets(tiny_scene_dir, tmp_path / "b", feature_detach_selection=detach, use_fda=False)
    m2.data.scale_prior = None
    m2.loss(0, torch.Generator().manual_seed(0))[0].backward()
    assert m2.heads.select_planes[0].grad.abs().sum() > 0


def test_prior_targets_read_the_targets_at_the_prior_scale(tiny_scene_dir, tmp_path):
    """With ``prior_targets`` the feature loss's target is each ray's CLIP feature at its prior scale and only
    the prior's cross-entropy trains the Selection Volume; without, the targets mix the scales."""
    from ovs3d.losses import feature_loss

    m = _method_on_random_targets(
        tiny_scene_dir, tmp_path, selection_prior="agreement", prior_targets=True, use_rda=False, use_fda=False
    )
    g = torch.Generator().manual_seed(0)
    idx = m.draw_rays(torch.Generator().manual_seed(0))
    loss, parts = m.loss(0, g)
    assert set(parts) == {"feat", "sel"}
    batch = m.data.pixels.index(idx)
    out = render_samples(m.trained, m.heads, batch, with_select=False, with_rgb=False)
    at_prior = (
        m.data.clip_targets[idx]
        .float()
        .gather(1, m.data.scale_prior[idx][:, None, None].expand(-1, 1, m.data.clip_targets.shape[-1]))[:, 0]
    )
    torch.testing.assert_close(parts["feat"], feature_loss(out["features"], at_prior).detach())
    # The feature loss alone sends no gradient to the Selection Volume; the prior's term does.
    m.heads.zero_grad()
    feature_loss(out["features"], at_prior).backward()
    grad = m.heads.select_planes[0].grad
    assert grad is None or grad.abs().sum() == 0
    m.heads.zero_grad()
    loss.backward()
    assert m.heads.select_planes[0].grad.abs().sum() > 0
    # Off: the same rays' target is the selection's mixture, not the prior's scale.
    m_off = _method_on_random_targets(
        tiny_scene_dir, tmp_path / "b", selection_prior="agreement", prior_targets=False, use_rda=False, use_fda=False
    )
    _, parts_off = m_off.loss(0, torch.Generator().manual_seed(0))
    assert not torch.isclose(parts_off["feat"], parts["feat"])


def test_mean_feature_is_the_mean_over_every_pixel_and_scale():
    from ovs3d.methods.threedovs.method import mean_feature

    g = torch.Generator().manual_seed(1)
    views = [torch.randn(6, 3, 5, generator=g).half(), torch.randn(4, 3, 5, generator=g).half()]
    direct = torch.cat([v.float().reshape(-1, 5) for v in views]).mean(0)
    assert torch.allclose(mean_feature(views), direct, atol=1e-6)


@pytest.mark.parametrize("centering", [True, False])
def test_label_centering_subtracts_the_mean_image_features_cosine_and_survives_a_reload(
    tiny_scene_dir, tmp_path, centering
):
    from ovs3d.methods.base import train_method
    from ovs3d.methods.threedovs.method import ThreeDOVS

    trained, data = _random_targets(tiny_scene_dir, tmp_path)
    data.clip_mean = torch.nn.functional.normalize(torch.randn(16, generator=torch.Generator().manual_seed(2)), dim=0)
    cfg = SemanticConfig(
        n_iters=2, joint_start=1, batch_size=32, use_fda=False, selection_prior="none", label_centering=centering
    )
    method = train_method(ThreeDOVS.from_data(trained, cfg, data), tmp_path / "run")
    loaded = ThreeDOVS.load(trained, tmp_path / "run", "cpu")
    render = {"features": torch.randn(7, 16, generator=torch.Generator().manual_seed(3))}
    raw = torch.nn.functional.normalize(render["features"], dim=-1) @ data.text.T  # [7, C] cosines
    # A hub direction: the label the mean image feature leans to is the one centring holds back.
    expected = raw - data.text @ data.clip_mean if centering else raw
    for m in (method, loaded):
        assert torch.allclose(m.prediction_logits(render), expected, atol=1e-5)
        assert torch.equal(m.predict_labels(render), expected.argmax(-1))
        assert torch.allclose(m.label_scores(render), torch.softmax(100 * expected, -1), atol=1e-4)
    assert torch.allclose(loaded.label_logits(render), raw, atol=1e-5)  # query's cosines stay raw


def test_label_centering_is_on_for_3dovs_only_and_off_for_runs_stored_before_it():
    from pathlib import Path

    from ovs3d.methods.ovnerf.config import OVNeRFConfig
    from ovs3d.methods.threedovs.ablations import with_ablation
    from ovs3d.methods.threedovs.method import ThreeDOVS
    from ovs3d.run import FitConfig

    assert SemanticConfig().label_centering is True
    assert ThreeDOVS.config_from_dict({"n_iters": 3}).label_centering is False
    assert OVNeRFConfig().label_centering is False
    for variant in ("paper", "reference", "previous"):
        assert with_ablation(FitConfig(scene=Path("s"), out=Path("o")), variant).semantic.label_centering is False


@pytest.mark.parametrize("centering", [True, False])
def test_label_centering_centres_the_logits_rda_and_fda_train(tiny_scene_dir, tmp_path, centering):
    m = _method_on_random_targets(tiny_scene_dir, tmp_path, label_centering=centering)
    m.clip_mean = torch.nn.functional.normalize(torch.randn(16, generator=torch.Generator().manual_seed(4)), dim=0)
    feats = 3 * torch.randn(5, 16, generator=torch.Generator().manual_seed(5))
    bias = m.text @ m.clip_mean if centering else torch.zeros(m.text.shape[0])
    cos = L.segmentation_logits(feats, m.text)
    raw = L.segmentation_logits(feats, m.text, normalize=False)
    assert torch.allclose(m.centred_for_training(cos, feats, normalized=True), cos - bias, atol=1e-5)
    # The code's unnormalised RDA logits |f| cos: centred as |f| (cos - mu.t), the same ranking as the prediction.
    expected = feats.norm(dim=-1, keepdim=True) * (cos - bias)
    assert torch.allclose(m.centred_for_training(raw, feats, normalized=False), expected, atol=1e-4)


@pytest.mark.parametrize(
    ("kind", "settings", "runs"),
    [
        ("forward", {}, True),
        ("bounded", {}, False),
        ("unbounded", {}, False),
        ("bounded", {"label_centering_kinds": ("forward", "bounded")}, True),
        ("forward", {"label_centering": False}, False),
    ],
)
def test_label_centering_runs_on_the_kinds_it_is_set_for(kind, settings, runs):
    from ovs3d.methods.threedovs.method import centring_runs

    assert centring_runs(SemanticConfig(**settings), kind) == runs


def test_prepare_computes_the_centre_only_where_centring_runs(tiny_scene_dir, tmp_path):
    from dataclasses import replace

    from ovs3d.foundation.features import clip_features
    from ovs3d.foundation.registry import build_clip
    from ovs3d.methods.threedovs.method import mean_feature, normalized_clip_targets, prepare_data
    from ovs3d.run import FitConfig

    scene = load_scene(tiny_scene_dir)
    trained = _trained(scene, tmp_path)
    views = scene.train_views(False)
    clip = build_clip("sim", scene.root)
    cfg = FitConfig(scene=tiny_scene_dir, out=tmp_path / "run", semantic=SemanticConfig(use_fda=False))
    data = prepare_data(scene, trained, cfg, clip, None, views)
    feats = clip_features(scene, clip, views, cfg.features, None)
    expected = mean_feature([normalized_clip_targets(feats[j]) for j in range(len(feats.view_ids))])
    assert scene.kind == "forward" and torch.allclose(data.clip_mean, expected)
    off = replace(cfg, semantic=SemanticConfig(use_fda=False, label_centering_kinds=("bounded",)))
    assert prepare_data(scene, trained, off, clip, None, views).clip_mean is None


@pytest.mark.parametrize("sampling", ["balanced", "uniform"])
def test_skip_label_borders_draws_no_ray_on_a_pseudo_class_border(tiny_scene_dir, tmp_path, sampling):
    from ovs3d.foundation.registry import build_clip
    from ovs3d.methods.threedovs.method import label_border_rays, prepare_data, pseudo_classes
    from ovs3d.run import FitConfig

    scene = load_scene(tiny_scene_dir)
    trained = _trained(scene, tmp_path)
    views = scene.train_views(False)
    clip = build_clip("sim", scene.root)
    semantic = SemanticConfig(use_fda=False, ray_sampling=sampling, selection_prior=None)
    cfg = FitConfig(scene=tiny_scene_dir, out=tmp_path / "run", semantic=semantic)
    plain = prepare_data(scene, trained, cfg, clip, None, views)
    cfg.semantic.skip_label_borders = True
    data = prepare_data(scene, trained, cfg, clip, None, views)
    border = label_border_rays(pseudo_classes(data.relevancy), len(data.view_ids), data.view_size)
    assert 0 < border.sum() < len(border)
    assert (data.ray_weights[border] == 0).all() and (data.ray_weights[~border] > 0).all()
    if sampling == "balanced":  # the other rays keep their balanced weights
        assert torch.equal(data.ray_weights[~border], plain.ray_weights[~border])
    else:
        assert plain.ray_weights is None
    draws = torch.multinomial(data.ray_weights, 4096, replacement=True)
    assert not border[draws].any()


def test_predict_labels_runs_the_crf_on_whole_views_only(tiny_scene_dir, tmp_path):
    from dataclasses import replace

    from ovs3d.methods.threedovs.method import ThreeDOVS
    from ovs3d.render.crf import dense_crf

    trained, data = _random_targets(tiny_scene_dir, tmp_path)
    method = ThreeDOVS.from_data(trained, SemanticConfig(use_fda=False), data)
    g = torch.Generator().manual_seed(1)
    image = {
        "features": torch.randn(6, 8, 16, generator=g),
        "rgb": torch.rand(6, 8, 3, generator=g),
        "depth": 0.5 + torch.rand(6, 8, generator=g),
    }
    cfg = method.cfg
    logits = method.prediction_logits(image)
    expected = dense_crf(
        logits * 100.0, image["rgb"], image["depth"], cfg.crf_weight, cfg.crf_radius, cfg.crf_sigma_rgb,
        cfg.crf_sigma_depth, cfg.crf_iters,
    ).argmax(-1)  # fmt: skip
    assert cfg.crf_iters > 0 and torch.equal(method.predict_labels(image), expected)
    flat = {k: v.reshape(48, *v.shape[2:]) for k, v in image.items()}  # per-ray renders: the argmax
    assert torch.equal(method.predict_labels(flat), logits.reshape(48, -1).argmax(-1))
    method.cfg = replace(cfg, crf_iters=0)
    assert torch.equal(method.predict_labels(image), logits.argmax(-1))


def test_empty_pixels_take_the_nearest_surface_prediction_before_the_crf(tiny_scene_dir, tmp_path):
    from ovs3d.methods.threedovs.method import ThreeDOVS

    trained, data = _random_targets(tiny_scene_dir, tmp_path)
    method = ThreeDOVS.from_data(trained, SemanticConfig(use_fda=False, crf_iters=0), data)
    g = torch.Generator().manual_seed(2)
    image = {"features": torch.randn(6, 8, 16, generator=g), "acc": torch.ones(6, 8)}
    image["features"][5] = 0.0  # a bottom row no surface was rendered at: its label is the offsets' alone
    image["acc"][5] = 0.0
    logits = method.prediction_logits(image)
    assert method.cfg.empty_fill_opacity == 0.5  # on by default
    labels = method.predict_labels(image)
    expected = logits.argmax(-1)
    expected[5] = expected[4]  # the nearest opaque pixel of each is the one above it
    assert torch.equal(labels, expected)
    method.cfg = SemanticConfig(use_fda=False, crf_iters=0, empty_fill_opacity=0.0)  # off: the argmax
    assert torch.equal(method.predict_labels(image), logits.argmax(-1))
    flat = {k: v.reshape(48, *v.shape[2:]) for k, v in image.items()}  # per-ray renders: never filled
    method.cfg = SemanticConfig(use_fda=False, crf_iters=0)
    assert torch.equal(method.predict_labels(flat), logits.reshape(48, -1).argmax(-1))


def test_the_fill_of_empty_pixels_is_off_for_runs_stored_before_it_and_for_the_papers_readings():
    from pathlib import Path

    from ovs3d.methods.ovnerf.config import OVNeRFConfig
    from ovs3d.methods.threedovs.ablations import with_ablation
    from ovs3d.methods.threedovs.method import ThreeDOVS
    from ovs3d.run import FitConfig

    assert ThreeDOVS.config_from_dict({"n_iters": 3}).empty_fill_opacity == 0.0
    assert ThreeDOVS.config_from_dict({"empty_fill_opacity": 0.25}).empty_fill_opacity == 0.25
    assert OVNeRFConfig().empty_fill_opacity == 0.0
    for variant in ("paper", "reference", "previous"):
        assert with_ablation(FitConfig(scene=Path("s"), out=Path("o")), variant).semantic.empty_fill_opacity == 0.0


def test_the_crf_is_on_for_3dovs_on_forward_scenes_and_off_for_runs_stored_before_it():
    from pathlib import Path

    from ovs3d.methods.ovnerf.config import OVNeRFConfig
    from ovs3d.methods.threedovs.ablations import with_ablation
    from ovs3d.methods.threedovs.method import ThreeDOVS, crf_runs
    from ovs3d.run import FitConfig

    cfg = SemanticConfig()
    assert crf_runs(cfg, "forward") and not crf_runs(cfg, "bounded") and not crf_runs(cfg, "unbounded")
    assert ThreeDOVS.config_from_dict({"n_iters": 3}).crf_iters == 0
    assert OVNeRFConfig().crf_iters == 0
    for variant in ("paper", "reference", "previous"):
        assert with_ablation(FitConfig(scene=Path("s"), out=Path("o")), variant).semantic.crf_iters == 0


def test_prepare_stores_the_crf_off_on_the_kinds_it_does_not_run_on(tiny_scene_dir, tmp_path, monkeypatch):
    from ovs3d.methods.threedovs import method as threedovs
    from ovs3d.run import FitConfig

    trained, data = _random_targets(tiny_scene_dir, tmp_path)
    monkeypatch.setattr(threedovs, "prepare_data", lambda *args, **kwargs: data)
    scene = load_scene(tiny_scene_dir)
    cfg = FitConfig(scene=tiny_scene_dir, out=tmp_path / "run", semantic=SemanticConfig(use_fda=False))
    assert threedovs.ThreeDOVS.prepare(scene, trained, cfg, {"clip": None}, "cpu").cfg.crf_iters == 5
    monkeypatch.setattr(scene, "kind", "bounded")  # the same targets, read as a room's
    assert threedovs.ThreeDOVS.prepare(scene, trained, cfg, {"clip": None}, "cpu").cfg.crf_iters == 0
    assert cfg.semantic.crf_iters == 5  # the user's config is left as it was
    from ovs3d.methods.ovnerf.config import OVNeRFConfig

    asked = OVNeRFConfig(crf_iters=5)  # OV-NeRF's prepare reads its settings through the same function
    assert threedovs.settings_for_kind(asked, "bounded").crf_iters == 0
    assert threedovs.settings_for_kind(asked, "forward") is asked


def test_prepare_stores_the_fill_of_empty_pixels_off_on_the_kinds_it_does_not_run_on(
    tiny_scene_dir, tmp_path, monkeypatch
):
    from dataclasses import replace

    from ovs3d.methods.threedovs import method as threedovs
    from ovs3d.run import FitConfig

    trained, data = _random_targets(tiny_scene_dir, tmp_path)
    monkeypatch.setattr(threedovs, "prepare_data", lambda *args, **kwargs: data)
    scene = load_scene(tiny_scene_dir)
    cfg = FitConfig(scene=tiny_scene_dir, out=tmp_path / "run", semantic=SemanticConfig(use_fda=False))
    assert scene.kind == "forward"
    assert threedovs.ThreeDOVS.prepare(scene, trained, cfg, {"clip": None}, "cpu").cfg.empty_fill_opacity == 0.5
    for kind in ("bounded", "unbounded"):  # rooms and 360° scenes train over black: not measured there
        monkeypatch.setattr(scene, "kind", kind)
        assert threedovs.ThreeDOVS.prepare(scene, trained, cfg, {"clip": None}, "cpu").cfg.empty_fill_opacity == 0
    both = replace(cfg, semantic=replace(cfg.semantic, empty_fill_kinds=("forward", "bounded")))
    monkeypatch.setattr(scene, "kind", "bounded")
    assert threedovs.ThreeDOVS.prepare(scene, trained, both, {"clip": None}, "cpu").cfg.empty_fill_opacity == 0.5
    assert cfg.semantic.empty_fill_opacity == 0.5  # the user's config is left as it was


def test_label_ce_is_the_cross_entropy_of_the_prediction_against_each_rays_pseudo_class(tiny_scene_dir, tmp_path):
    m = _method_on_random_targets(tiny_scene_dir, tmp_path, label_ce_weight=0.5)
    m.clip_mean = torch.nn.functional.normalize(torch.randn(16, generator=torch.Generator().manual_seed(4)), dim=0)
    idx = torch.arange(0, 40, 3)
    feats = 3 * torch.randn(len(idx), 16, generator=torch.Generator().manual_seed(5))
    got = m.pseudo_class_loss(feats, idx)
    # reference, one ray at a time: the class of the relevancy at the ray's prior scale, against 100 x centred cosines
    total = 0.0
    for r, i in enumerate(idx.tolist()):
        cls = int(m.data.relevancy[i, int(m.data.scale_prior[i])].float().argmax())
        z = 100.0 * (torch.nn.functional.normalize(feats[r], dim=0) @ m.text.T - m.text @ m.clip_mean)
        total += float(torch.logsumexp(z, 0) - z[cls])
    assert abs(float(got) - total / len(idx)) < 1e-3 * max(1.0, total / len(idx))
    g = torch.Generator().manual_seed(0)
    assert "ce" in m.loss(0, g)[1]
    assert "ce" not in _method_on_random_targets(tiny_scene_dir, tmp_path / "off").loss(0, g)[1]


def test_render_label_targets_are_the_read_out_of_each_training_view_and_are_kept_on_resume(tiny_scene_dir, tmp_path):
    from ovs3d.methods.threedovs.method import ThreeDOVS
    from ovs3d.render.crf import dense_crf

    m = _method_on_random_targets(
        tiny_scene_dir, tmp_path, label_ce_weight=1.0, label_ce_targets="render", label_ce_start=1, label_ce_every=2
    )
    m.data.view_ids, m.data.view_size = (0,), (16, 12)
    (callback,) = m.callbacks()
    assert [s for s in range(6) if callback.due(s)] == [1, 3, 5]
    g = torch.Generator().manual_seed(0)
    assert "ce" not in m.loss(0, g)[1]  # no read-out yet
    m.heads.train()
    m.update_render_labels(1)
    assert m.heads.training
    # reference: the view rendered in one piece, its centred cosines through the CRF on its colour and depth
    with torch.no_grad():
        out = render_samples(m.trained, m.heads.eval(), m.data.pixels, with_select=False, with_rgb=True)
    cfg = m.cfg
    logits = m.prediction_logits(out).reshape(12, 16, -1)
    rgb, depth = out["rgb"].clamp(0, 1).reshape(12, 16, 3), m.data.pixels.depth.reshape(12, 16)
    expected = dense_crf(
        100 * logits, rgb, depth, cfg.crf_weight, cfg.crf_radius, cfg.crf_sigma_rgb, cfg.crf_sigma_depth, cfg.crf_iters
    ).argmax(-1)
    assert torch.equal(m.render_labels, expected.reshape(-1))
    assert "ce" in m.loss(2, g)[1]
    idx = torch.arange(0, 100, 7)
    feats = torch.randn(len(idx), 16, generator=g)
    z = 100 * m.centred_for_training(L.segmentation_logits(feats, m.text), feats, normalized=True)
    ce = torch.nn.functional.cross_entropy(z, m.render_labels[idx])
    torch.testing.assert_close(m.pseudo_class_loss(feats, idx), ce)
    fresh = ThreeDOVS.from_data(m.trained, m.cfg, m.data)
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.render_labels, m.render_labels)
    assert _method_on_random_targets(tiny_scene_dir, tmp_path / "off", label_ce_weight=1.0).callbacks() == []
