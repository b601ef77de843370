import torch

from ovs3d.io.loader import load_scene
from ovs3d.methods.radiance import march, render_rgb
from ovs3d.methods.reconstruction import ReconstructionConfig, train_reconstruction
from ovs3d.methods.scene_rays import ray_near, view_rays
from ovs3d.methods.threedovs import losses as L
from ovs3d.methods.threedovs.data import patch_indices, token_grid, top_samples
from ovs3d.methods.threedovs.trainer import SemanticConfig, _set_trainable, build_heads, render_samples


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


def test_cached_samples_reproduce_full_rendering(tiny_scene_dir, tmp_path):
    scene = load_scene(tiny_scene_dir)
    trained = _trained(scene, tmp_path)
    o, d = view_rays(scene, 0, 4.0)
    with torch.no_grad():
        m = march(trained.field, trained.occupancy, o, d, trained.config.march, near=ray_near(scene))
        full = render_rgb(trained.field, m, d, trained.config.march)["rgb"]
        # keeping every sample gives exactly the full compositing
        s = top_samples(trained, o, d, ray_near(scene), k=m.n_samples)
        heads = build_heads(trained, SemanticConfig(), feature_dim=16, n_scales=3)
        cached = render_samples(trained, heads, s, with_select=False, with_rgb=True)["rgb"]
    assert torch.allclose(cached, full, atol=1e-5)
    assert torch.allclose(s.captured, torch.ones_like(s.captured), atol=1e-3)  # weights < 1e-4 are dropped
    # K heaviest samples keep the largest share of each ray's weight
    s8 = top_samples(trained, o, d, ray_near(scene), k=8)
    assert s8.xyz.shape == (o.shape[0], 8, 3)
    assert torch.all(s8.captured <= 1 + 1e-5)


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
