import numpy as np
import pytest
import torch

from ovs3d.eval.metrics import psnr
from ovs3d.io.loader import load_scene
from ovs3d.methods.reconstruction import (
    ReconstructionConfig,
    load_trained_field,
    render_view,
    train_reconstruction,
)


def tiny_config(**kw) -> ReconstructionConfig:
    # black: these tests check the loop's mechanics on 40 iterations; the random background has its own test
    base = dict(
        background="black",
        n_iters=40,
        bounded_iters_factor=1.0,  # every kind trains n_iters here; the factors have their own test
        batch_size=512,
        init_voxels=16**3,
        final_voxels=28**3,
        upsample_iters=(10, 20),
        occupancy_iters=(15, 30),
        occupancy_max_resolution=32,
        visibility_rays=2048,
        checkpoint_every=10,
        log_every=10,
    )
    base.update(kw)
    return ReconstructionConfig(**base)


def test_short_reconstruction_improves_psnr(tiny_scene_dir, tmp_path):
    scene = load_scene(tiny_scene_dir)
    views = scene.train_views(False)
    untrained = train_reconstruction(scene, tmp_path / "r0", tiny_config(n_iters=1), views)
    trained = train_reconstruction(scene, tmp_path / "r1", tiny_config(), views)
    gt = scene.load_image(0, 2.0)
    before = psnr(render_view(untrained, scene, 0, 2.0)["rgb"], gt)
    after = psnr(render_view(trained, scene, 0, 2.0)["rgb"], gt)
    assert after > before + 3.0, (before, after)
    logs = (tmp_path / "r1" / "logs" / "reconstruction.jsonl").read_text().splitlines()
    assert len(logs) == 4
    assert trained.field.grid_resolution != [16, 16, 16]  # upsampled
    assert trained.occupancy is not None and 0 < trained.occupancy.float().mean() < 1


class Interrupt(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted(tiny_scene_dir, tmp_path):
    scene = load_scene(tiny_scene_dir)
    views = scene.train_views(False)
    cfg = tiny_config(n_iters=30)
    full = train_reconstruction(scene, tmp_path / "full", cfg, views)

    def crash(step, _):
        if step == 25:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_reconstruction(scene, tmp_path / "cut", cfg, views, callback=crash, callback_every=1)
    ckpt = load_trained_field(tmp_path / "cut" / "checkpoints" / "reconstruction.pt")
    assert ckpt.step == 20  # the last checkpoint before the crash
    resumed = train_reconstruction(scene, tmp_path / "cut", cfg, views)
    for (name, a), (_, b) in zip(full.field.state_dict().items(), resumed.field.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert torch.equal(full.occupancy, resumed.occupancy)
    # a finished run just loads
    again = train_reconstruction(scene, tmp_path / "cut", cfg, views)
    assert again.step == cfg.n_iters


def test_checkpoint_is_weights_only_and_self_describing(tiny_scene_dir, tmp_path):
    scene = load_scene(tiny_scene_dir)
    train_reconstruction(scene, tmp_path / "r", tiny_config(n_iters=10), scene.train_views(False))
    payload = torch.load(tmp_path / "r" / "checkpoints" / "reconstruction.pt", weights_only=True)
    assert {"version", "kind", "config", "step", "state"} <= set(payload)
    assert payload["config"]["n_iters"] == 10 and payload["step"] == 10
    out = render_view(load_trained_field(tmp_path / "r" / "checkpoints" / "reconstruction.pt"), scene, 1, 2.0)
    assert out["rgb"].shape == (24, 32, 3) and np.isfinite(out["depth"]).all()
    # the opt-in depth spread comes from the same marching as the render, chunked or not
    from ovs3d.render.marching import march
    from ovs3d.render.scene_rays import ray_near, view_rays
    from ovs3d.render.volume import depth_spread

    trained = load_trained_field(tmp_path / "r" / "checkpoints" / "reconstruction.pt")
    with_spread = render_view(trained, scene, 1, 2.0, chunk=100, spread=True)
    without = render_view(trained, scene, 1, 2.0, chunk=100)
    assert "depth_spread" not in without and np.array_equal(with_spread["rgb"], without["rgb"])
    o, d = view_rays(scene, 1, 2.0)
    with torch.no_grad():
        m = march(trained.field, trained.occupancy, o, d, trained.config.march, near=ray_near(scene))
        ref = depth_spread(m.weights, m.t_mid).reshape(24, 32).numpy()
    assert np.allclose(with_spread["depth_spread"], ref, atol=1e-6)


def test_bounded_kind_marches_in_a_world_box(tiny_scene_dir, tmp_path):
    # the same cameras, forced to the bounded (world-box) code path instead of NDC
    scene = load_scene(tiny_scene_dir, kind="bounded")
    assert scene.kind == "bounded"
    trained = train_reconstruction(scene, tmp_path / "b", tiny_config(n_iters=20), scene.train_views(False))
    assert torch.allclose(trained.field.aabb, torch.as_tensor(scene.aabb, dtype=torch.float32))
    out = render_view(trained, scene, 0, 2.0)
    assert np.isfinite(out["rgb"]).all() and out["acc"].max() > 0.1


def test_each_scene_kind_trains_its_own_iterations():
    from ovs3d.methods.reconstruction import for_kind

    cfg = ReconstructionConfig(background="black", distortion_from=0.0)
    assert for_kind(cfg, "forward") is cfg
    # the defaults: 400 on forward-facing scenes, rooms keep 300 and unbounded scenes 600, as measured
    assert (cfg.n_iters, for_kind(cfg, "bounded").n_iters, for_kind(cfg, "unbounded").n_iters) == (400, 300, 600)
    unbounded = for_kind(cfg, "unbounded")
    assert unbounded.n_iters == round(1.5 * cfg.n_iters) and unbounded.unbounded_iters_factor == 1.0
    assert unbounded.bounded_iters_factor == cfg.bounded_iters_factor
    assert unbounded.upsample_iters == cfg.upsample_iters and unbounded.occupancy_iters == cfg.occupancy_iters
    assert for_kind(unbounded, "unbounded") == unbounded  # applying it twice changes nothing
    bounded = for_kind(cfg, "bounded")
    assert bounded.bounded_iters_factor == 1.0 and bounded.unbounded_iters_factor == cfg.unbounded_iters_factor
    assert for_kind(bounded, "bounded") == bounded
    assert for_kind(ReconstructionConfig(n_iters=3, unbounded_iters_factor=1.5), "unbounded").n_iters == 4
    alike = ReconstructionConfig(background="black", distortion_from=0.0, bounded_iters_factor=1.0)
    assert for_kind(alike, "bounded") is alike


def test_runs_made_before_the_unbounded_factor_keep_their_schedule():
    from ovs3d.run import _with_legacy_settings

    old = {"scene": "s", "recon": {"n_iters": 300}}
    new = ReconstructionConfig()
    assert _with_legacy_settings(old, "unbounded", new)["recon"]["unbounded_iters_factor"] == 1.0
    assert _with_legacy_settings(old, "forward", new)["recon"]["unbounded_iters_factor"] == new.unbounded_iters_factor
    # a room made before trained n_iters; elsewhere the factor changes nothing and takes the current value
    assert _with_legacy_settings(old, "bounded", new)["recon"]["bounded_iters_factor"] == 1.0
    assert _with_legacy_settings(old, "forward", new)["recon"]["bounded_iters_factor"] == new.bounded_iters_factor
    assert _with_legacy_settings(old, "unbounded", new)["recon"]["bounded_iters_factor"] == new.bounded_iters_factor
    current = {
        "scene": "s",
        "recon": {
            "n_iters": 300,
            "unbounded_iters_factor": 3.0,
            "bounded_iters_factor": 1.0,
            "shrink_kinds": [],
            "background": "black",
            "background_ramp": 0.0,
            "distortion_from": 0.5,
            "distortion_ramp": 0.0,
        },
    }
    assert _with_legacy_settings(current, "unbounded", new) is current


def test_runs_made_before_the_box_shrink_did_not_shrink():
    from ovs3d.run import _with_legacy_settings

    old = {"scene": "s", "recon": {"n_iters": 300, "unbounded_iters_factor": 2.0}}
    new = ReconstructionConfig()  # shrinks nothing: the stored run reads as the defaults, never blocking
    assert _with_legacy_settings(old, "bounded", new)["recon"]["shrink_kinds"] == []
    assert _with_legacy_settings(old, "bounded", new)["recon"]["shrink_iter"] == new.shrink_iter
    shrinking = ReconstructionConfig(shrink_kinds=("bounded",))  # a room made before did not shrink
    assert _with_legacy_settings(old, "bounded", shrinking)["recon"]["shrink_kinds"] == []
    assert _with_legacy_settings(old, "forward", shrinking)["recon"]["shrink_kinds"] == ["bounded"]


@pytest.fixture(scope="module")
def tiny_room_dir(tmp_path_factory):
    """An 80x60, 24-view inside-out room: its box (the union of the frusta) is many times the room."""
    from ovs3d.scenegen import make_scene

    root = tmp_path_factory.mktemp("room") / "room"
    return make_scene("room", 3, root, width=80, height=60, n_views=24, annotate_every=4, supersample=1)


@pytest.mark.parametrize("crash_at", [12, 25])  # resumed from before and from after the shrink
def test_bounded_box_shrinks_to_the_surfaces_and_resumes(tiny_scene_dir, tiny_room_dir, tmp_path, crash_at):
    scene = load_scene(tiny_room_dir)
    assert scene.kind == "bounded"
    views = scene.train_views(False)
    cfg = tiny_config(n_iters=30, shrink_iter=15, shrink_kinds=("bounded",))
    full = train_reconstruction(scene, tmp_path / "full", cfg, views)
    box = torch.as_tensor(scene.aabb, dtype=torch.float32)
    assert (full.field.aabb[0] >= box[0] - 1e-6).all() and (full.field.aabb[1] <= box[1] + 1e-6).all()
    assert torch.prod(full.field.aabb[1] - full.field.aabb[0]) < 0.5 * torch.prod(box[1] - box[0])
    out = render_view(full, scene, 0, 2.0)
    assert np.isfinite(out["rgb"]).all() and out["acc"].mean() > 0.5  # the room is still inside

    def crash(step, _):
        if step == crash_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_reconstruction(scene, tmp_path / "cut", cfg, views, callback=crash, callback_every=1)
    resumed = train_reconstruction(scene, tmp_path / "cut", cfg, views)
    assert torch.equal(resumed.field.aabb, full.field.aabb)
    for (name, a), (_, b) in zip(full.field.state_dict().items(), resumed.field.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name
    # a kind that is not listed keeps its box (and the default lists none)
    assert ReconstructionConfig().shrink_kinds == ()
    fwd_scene = load_scene(tiny_scene_dir)
    fwd_cfg = tiny_config(n_iters=16, shrink_iter=15, shrink_kinds=("bounded",))
    fwd = train_reconstruction(fwd_scene, tmp_path / "fwd", fwd_cfg, fwd_scene.train_views(False)[:4])
    assert torch.equal(fwd.field.aabb, torch.as_tensor(fwd_scene.aabb, dtype=torch.float32))


def test_runs_made_before_the_dino_grid_floor_read_without_it():
    from ovs3d.run import _with_legacy_settings

    old = {"scene": "s", "features": {"dino_downscale": 1.0}}
    assert _with_legacy_settings(old, "forward", ReconstructionConfig())["features"]["dino_min_cells"] is None
    current = {"scene": "s", "features": {"dino_downscale": 1.0, "dino_min_cells": 30}}
    assert _with_legacy_settings(current, "forward", ReconstructionConfig()) is current


@pytest.fixture(scope="module")
def black_table_dir(tiny_scene_dir, tmp_path_factory):
    """The tiny scene with its table (instance 2) painted black in every photo: a dark surface that a field
    over a black background can leave empty."""
    import shutil

    from PIL import Image

    out = tmp_path_factory.mktemp("black") / "scene"
    shutil.copytree(tiny_scene_dir, out)
    for img_path in sorted((out / "images").glob("*.png")):
        ids = np.asarray(Image.open(out / "sim" / "instances" / img_path.name))
        img = np.array(Image.open(img_path).convert("RGB"))
        img[ids == 2] = 0
        Image.fromarray(img).save(img_path)
    return out


def test_random_background_makes_a_black_surface_opaque(black_table_dir, tmp_path):
    from PIL import Image

    scene = load_scene(black_table_dir)
    views = scene.train_views(False)
    table = np.asarray(Image.open(black_table_dir / "sim" / "instances" / "00.png").resize((32, 24), Image.NEAREST))
    table = table == 2
    acc = {}
    settings = {
        "black": {"background": "black"},
        "random": {"background": "random", "background_ramp": 0.0},
        "expected": {"background": "expected", "background_ramp": 0.0},
        "ramp": {"background": "random"},  # the default fade
    }
    for name, kw in settings.items():
        cfg = tiny_config(**kw)
        trained = train_reconstruction(scene, tmp_path / name, cfg, views)
        acc[name] = render_view(trained, scene, 0, 2.0)["acc"]
    # over black, nothing is as good as a black surface; a random background shows through anything but one,
    # and so do its expectation (mid-grey plus the variance term) and one faded in
    assert acc["black"][table].mean() < 0.8, acc["black"][table].mean()
    for bg in ("random", "expected", "ramp"):
        assert acc[bg][table].mean() > acc["black"][table].mean() + 0.2, bg
    for bg in ("random", "expected"):  # the faded one has had less of the schedule at full strength
        assert acc[bg][table].mean() > 0.9 and acc[bg][~table].mean() > 0.9, bg


def test_runs_made_before_the_random_background_keep_a_black_one():
    from ovs3d.run import _with_legacy_settings

    old = {"scene": "s", "recon": {"n_iters": 300, "unbounded_iters_factor": 2.0, "shrink_kinds": []}}
    new = ReconstructionConfig()
    assert _with_legacy_settings(old, "forward", new)["recon"]["background"] == "black"
    assert _with_legacy_settings(old, "forward", new)["recon"]["background_from"] == new.background_from
    # a room trains over black with the defaults too: its stored run reads as the defaults, never blocking
    assert _with_legacy_settings(old, "bounded", new)["recon"]["background"] == new.background
    current = {
        "scene": "s",
        "recon": {
            **old["recon"],
            "bounded_iters_factor": 0.75,
            "background": "random",
            "background_from": 0.5,
            "background_ramp": 0.0,
            "distortion_from": 0.0,
            "distortion_ramp": 0.0,
        },
    }
    assert _with_legacy_settings(current, "forward", new) is current
    # a random background stored before the fade existed came in at once
    before_ramp = {"scene": "s", "recon": {**old["recon"], "background": "random", "background_from": 0.5}}
    ramped = ReconstructionConfig(background_ramp=0.3)
    assert _with_legacy_settings(before_ramp, "forward", ramped)["recon"]["background_ramp"] == 0.0
    assert _with_legacy_settings(old, "forward", ramped)["recon"]["background_ramp"] == 0.3  # black: no matter


def test_runs_made_before_the_distortion_delay_had_it_from_the_start():
    from ovs3d.run import _with_legacy_settings

    old = {"scene": "s", "recon": {"n_iters": 300, "distortion_weight": 0.01}}
    new = ReconstructionConfig(distortion_from=0.25)
    assert _with_legacy_settings(old, "forward", new)["recon"]["distortion_from"] == 0.0
    stored = {"scene": "s", "recon": {**old["recon"], "distortion_from": 0.25}}
    assert _with_legacy_settings(stored, "forward", new)["recon"]["distortion_from"] == 0.25
    # and it came in at once
    ramped = ReconstructionConfig(distortion_from=0.25, distortion_ramp=0.3)
    assert _with_legacy_settings(stored, "forward", ramped)["recon"]["distortion_ramp"] == 0.0
    assert _with_legacy_settings(stored, "bounded", ramped)["recon"]["distortion_ramp"] == 0.0


def test_the_background_applies_on_its_kinds_only():
    from ovs3d.methods.reconstruction import for_kind

    cfg = ReconstructionConfig(background="random", background_kinds=("forward",))
    assert for_kind(cfg, "forward") is cfg
    assert for_kind(cfg, "bounded").background == "black"
    assert for_kind(cfg, "unbounded").background == "black" and for_kind(cfg, "unbounded").n_iters == 600
    kinds = ("forward", "bounded", "unbounded")
    everywhere = ReconstructionConfig(
        background="random", background_kinds=kinds, distortion_from_kinds=kinds, bounded_iters_factor=1.0
    )
    assert for_kind(everywhere, "bounded") is everywhere


def test_the_distortion_delay_applies_on_its_kinds_only():
    from ovs3d.methods.reconstruction import for_kind

    cfg = ReconstructionConfig(distortion_from=0.25, distortion_from_kinds=("forward",))
    assert for_kind(cfg, "forward").distortion_from == 0.25
    assert for_kind(cfg, "bounded").distortion_from == 0.0 and for_kind(cfg, "unbounded").distortion_from == 0.0
    everywhere = ReconstructionConfig(distortion_from=0.25, distortion_from_kinds=("forward", "bounded"))
    assert for_kind(everywhere, "bounded").distortion_from == 0.25
    # the ramp belongs to the delay: where the loss applies from the start it applies at once too
    ramped = ReconstructionConfig(distortion_from=0.25, distortion_ramp=0.3, distortion_from_kinds=("forward",))
    assert for_kind(ramped, "forward").distortion_ramp == 0.3
    assert for_kind(ramped, "bounded").distortion_ramp == 0.0 and for_kind(ramped, "unbounded").distortion_ramp == 0.0


def test_schedule_ramp_rises_linearly_after_its_start():
    from ovs3d.methods.reconstruction import schedule_ramp

    assert [schedule_ramp(s, 300, 1 / 3, 1 / 3) for s in (0, 99, 100, 150, 199, 200, 299)] == pytest.approx(
        [0.0, 0.0, 0.0, 0.5, 0.99, 1.0, 1.0]
    )
    assert [schedule_ramp(s, 300, 1 / 3, 0.0) for s in (99, 100, 299)] == [0.0, 1.0, 1.0]  # no ramp: a step


def test_recon_from_refuses_a_reconstruction_made_with_other_settings(tiny_scene_dir, tmp_path):
    from dataclasses import replace
    from pathlib import Path

    from ovs3d.errors import OVS3DError
    from ovs3d.methods.reconstruction import CHECKPOINT_NAME
    from ovs3d.run import FitConfig, fit

    recon = tiny_config(n_iters=4, upsample_iters=(2,), occupancy_iters=(3,), checkpoint_every=2)
    base = dict(scene=tiny_scene_dir, method="rgb")
    first = fit(FitConfig(**base, out=tmp_path / "a", recon=recon))
    # the random background (the forward-facing default) is another reconstruction: refused, nothing written
    with pytest.raises(OVS3DError, match=r"reconstructed with other settings \(background"):
        fit(FitConfig(**base, out=tmp_path / "b", recon=replace(recon, background="random"), recon_from=first))
    assert not (tmp_path / "b" / "checkpoints").exists()
    # bookkeeping settings do not change the reconstruction: copied, not retrained
    same = fit(FitConfig(**base, out=tmp_path / "c", recon=replace(recon, log_every=3), recon_from=first))
    ckpt = Path("checkpoints") / CHECKPOINT_NAME
    assert (first / ckpt).read_bytes() == (same / ckpt).read_bytes()


def test_recon_from_reads_a_run_stored_before_the_background_as_black():
    from ovs3d.run import _recon_differences

    stored = {"fit": {"scene": "s", "recon": {"n_iters": 300}}, "scene_kind": "forward"}
    changed, theirs, ours = _recon_differences(stored, ReconstructionConfig(n_iters=300))
    assert changed == ["background", "distortion_from"]
    assert (theirs["background"], ours["background"]) == ("black", "random")
    as_before = ReconstructionConfig(n_iters=300, background="black", distortion_from=0.0)
    assert _recon_differences(stored, as_before)[0] == []
    # on a kind that neither covers, the stored run and the defaults are the same reconstruction
    assert _recon_differences({**stored, "scene_kind": "bounded"}, ReconstructionConfig())[0] == []


def test_a_refused_resume_names_the_value_each_side_has():
    """After a default changes (round 18: background_from 1/3 -> 0), the refusal says what to pass."""
    from ovs3d.run import _changes, _diff, _show

    run_side = {"recon": {"background_from": 1 / 3, "n_iters": 300, "shrink_kinds": []}, "holdout": False}
    now = {"recon": {"background_from": 0.0, "n_iters": 300, "shrink_kinds": ["bounded"]}, "holdout": True}
    keys = _diff(run_side, now)
    assert keys == ["holdout", "recon.background_from", "recon.shrink_kinds"]
    assert _changes(run_side, now, keys) == (
        "holdout (run: False, now: True), recon.background_from (run: 0.3333333333333333, now: 0.0), "
        "recon.shrink_kinds (run: [], now: ['bounded'])"
    )
    assert _changes(run_side, {}, keys, limit=1) == "holdout (run: False, now: unset), and 2 more"
    # the value shown is the value a flag must pass to match the stored run exactly
    assert all(float(_show(v)) == v for v in (1 / 3, 0.1 + 0.2, 2e-5, 1.0))


def test_the_distortion_loss_applies_from_its_share_of_the_schedule(tiny_scene_dir):
    from ovs3d.methods.reconstruction import ReconstructionStage

    scene = load_scene(tiny_scene_dir)
    views = scene.train_views(False)[:4]

    def loss_at(step: int, weight: float) -> float:
        torch.manual_seed(0)  # the same field initialisation for both weights
        stage = ReconstructionStage(scene, tiny_config(distortion_weight=weight, distortion_from=0.5), views, "cpu")
        loss, _ = stage.loss(step, torch.Generator().manual_seed(1))
        return float(loss.detach())

    assert loss_at(19, 100.0) == loss_at(19, 0.0)  # before iteration 20 of 40: no distortion term
    assert loss_at(20, 100.0) > loss_at(20, 0.0)


def test_the_distortion_ramp_scales_the_term_from_zero(tiny_scene_dir):
    from ovs3d.methods.reconstruction import ReconstructionStage

    scene = load_scene(tiny_scene_dir)
    views = scene.train_views(False)[:4]

    def loss_at(step: int, weight: float, ramp: float) -> float:
        torch.manual_seed(0)
        cfg = tiny_config(distortion_weight=weight, distortion_from=0.5, distortion_ramp=ramp)
        stage = ReconstructionStage(scene, cfg, views, "cpu")
        loss, _ = stage.loss(step, torch.Generator().manual_seed(1))
        return float(loss.detach())

    # 40 iterations, from 20, over 0.25 * 40 = 10: the term's weight is 0 at 20, 1/2 at 25 and whole at 30
    assert loss_at(20, 100.0, 0.25) == pytest.approx(loss_at(20, 0.0, 0.25))
    half = loss_at(25, 100.0, 0.25) - loss_at(25, 0.0, 0.25)
    assert half > 0 and half == pytest.approx((loss_at(25, 100.0, 0.0) - loss_at(25, 0.0, 0.0)) / 2, rel=1e-4)
    assert loss_at(30, 100.0, 0.25) == pytest.approx(loss_at(30, 100.0, 0.0))
