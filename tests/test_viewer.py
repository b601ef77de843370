"""``ovs3d view`` (:mod:`ovs3d.viewer`): camera conversions, the resolution rule, frames of tiny runs, the
frame scheduler, the server on loopback, a port in use, and (when Chromium is installed) a browser typing a
query."""

from __future__ import annotations

import importlib.util
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from ovs3d.errors import OVS3DError
from ovs3d.export import PointCloud
from ovs3d.viewer import (
    FrameOptions,
    FrameScheduler,
    c2w_to_viser,
    camera_intrinsics,
    frame_size,
    interactive_pixels,
    load_state,
    matrix_to_quat,
    quat_to_matrix,
    render_frame,
    training_camera,
    up_direction,
    viser_to_c2w,
)

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_viewer.py"


@pytest.fixture(scope="module")
def tiny_runs(tiny_scene_dir, tmp_path_factory) -> dict[str, Path]:
    """A 20-iteration reconstruction-only run and a 3-iteration LERF run on it (3 query scales): ~3 s."""
    from ovs3d.foundation.features import FeatureConfig
    from ovs3d.methods.lerf.config import LERFConfig
    from ovs3d.methods.reconstruction import ReconstructionConfig
    from ovs3d.run import FitConfig, fit

    tmp = tmp_path_factory.mktemp("viewer")
    recon = ReconstructionConfig(
        n_iters=20, batch_size=512, init_voxels=16**3, final_voxels=20**3, upsample_iters=(10,), occupancy_iters=()
    )
    fit(FitConfig(scene=tiny_scene_dir, out=tmp / "rgb", method="rgb", recon=recon, cache_dir=tmp / "cache"))
    lerf = LERFConfig(n_iters=3, batch_size=64, samples_per_ray=4, query_scales=3)
    fit(
        FitConfig(
            scene=tiny_scene_dir,
            out=tmp / "lerf",
            method="lerf",
            recon=recon,
            recon_from=tmp / "rgb",
            semantic=lerf,
            features=FeatureConfig(semantic_downscale=4.0),
            cache_dir=tmp / "cache",
        )
    )
    return {"rgb": tmp / "rgb", "lerf": tmp / "lerf"}


@pytest.fixture(scope="module")
def orbit_rgb_state(tmp_path_factory):
    """A 20-iteration reconstruction of a tiny 360° orbit scene (kind ``unbounded``: contracted space): ~3 s."""
    from ovs3d.methods.reconstruction import ReconstructionConfig
    from ovs3d.run import FitConfig, fit
    from ovs3d.scenegen import make_scene

    tmp = tmp_path_factory.mktemp("viewer_orbit")
    scene = make_scene("orbit", 0, tmp / "scene", width=64, height=48, n_views=9, n_annotated=2, supersample=1)
    recon = ReconstructionConfig(
        n_iters=20, batch_size=512, init_voxels=16**3, final_voxels=20**3, upsample_iters=(10,), occupancy_iters=()
    )
    fit(FitConfig(scene=scene, out=tmp / "rgb", method="rgb", recon=recon, cache_dir=tmp / "cache"))
    state = load_state(tmp / "rgb")
    assert state.scene.kind == "unbounded"
    return state


@pytest.fixture(scope="module")
def lerf_state(tiny_runs):
    return load_state(tiny_runs["lerf"])


@pytest.fixture(scope="module")
def rgb_state(tiny_runs):
    return load_state(tiny_runs["rgb"])


def stand_in_points(state, n: int = 500) -> PointCloud:
    """Points in front of the training cameras, in the input frame, with random labels."""
    from ovs3d.eval.visualize import label_palette
    from ovs3d.render.scene_rays import c2w_to_input, input_scale

    rng = np.random.default_rng(0)
    scene = state.scene
    cams = c2w_to_input(scene, np.asarray(scene.c2w))
    view = rng.integers(0, len(cams), n)
    depth = float(np.mean(scene.near_far)) * input_scale(scene)
    xyz = cams[view, :, 3] + cams[view, :, 2] * depth + rng.normal(scale=0.1 * depth, size=(n, 3))
    c = len(scene.classes)
    return PointCloud(
        xyz=xyz.astype(np.float32),
        rgb=rng.integers(0, 256, (n, 3)).astype(np.uint8),
        label=rng.integers(-1, c, n).astype(np.int16),
        score=rng.random(n).astype(np.float32),
        radius=np.full(n, 0.005 * depth, np.float32),
        classes=list(scene.classes),
        colors=label_palette(c),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------
# cameras and resolution


def test_quaternion_round_trip_and_viser_convention():
    rng = np.random.default_rng(1)
    for _ in range(50):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        rot = quat_to_matrix(q)
        assert np.allclose(rot @ rot.T, np.eye(3), atol=1e-12) and np.isclose(np.linalg.det(rot), 1.0)
        q2 = matrix_to_quat(rot)
        assert np.allclose(q2, q if q[0] >= 0 else -q, atol=1e-9)
    viser_tf = pytest.importorskip("viser.transforms")
    q = np.array([0.3, -0.5, 0.7, 0.2])
    q /= np.linalg.norm(q)
    assert np.allclose(quat_to_matrix(q), viser_tf.SO3(q).as_matrix(), atol=1e-9)


def test_viser_camera_to_input_frame_to_world_round_trip(lerf_state):
    from ovs3d.render.scene_rays import c2w_from_input, c2w_to_input

    scene = lerf_state.scene
    assert not np.allclose(scene.world_from_file, np.eye(4))  # the loader moved the world: a real test
    for view in range(scene.n_views):
        c2w_in, fov, aspect = training_camera(scene, view)
        wxyz, pos = c2w_to_viser(c2w_in)
        back = viser_to_c2w(wxyz, pos)
        assert np.allclose(back, c2w_in, atol=1e-6)  # the poses are float32-orthonormal
        assert np.allclose(c2w_from_input(scene, back), scene.c2w[view], atol=1e-5)
        assert np.allclose(c2w_to_input(scene, scene.c2w[view]), back, atol=1e-5)
        w, h = scene.image_size(1.0)
        assert np.isclose(aspect, w / h) and 0 < fov < np.pi
    up = up_direction(c2w_to_input(scene, np.asarray(scene.c2w)))
    assert np.isclose(np.linalg.norm(up), 1.0)
    assert (up @ -c2w_to_input(scene, np.asarray(scene.c2w))[:, :3, 1].T > 0.5).all()  # every camera's up


def test_camera_intrinsics_match_the_training_views(lerf_state):
    scene = lerf_state.scene
    for ds in (1.0, 4.0):
        w, h = scene.image_size(ds)
        _, fov, aspect = training_camera(scene, 0)
        w2, h2, intr = camera_intrinsics(fov, aspect, w)
        assert (w2, h2) == (w, h)
        assert np.allclose(intr, scene.intrinsics_at(ds)[0], rtol=1e-3)


def test_resolution_rule():
    assert frame_size(4 / 3, 4800) == (80, 60)
    w, h = frame_size(2.0, 1000)
    assert abs(w / h - 2.0) < 0.1 and abs(w * h - 1000) < 100
    assert interactive_pixels(None, 4800) == 192  # unmeasured: the smallest frame
    assert interactive_pixels(None, 100) == 100
    assert interactive_pixels(1e-4, 4800, budget_s=0.3) == 3000  # 0.3 s worth of pixels
    assert interactive_pixels(1e-6, 4800) == 4800  # never above the still frame
    assert interactive_pixels(1.0, 4800) == 192  # never below the floor


# ---------------------------------------------------------------------------------------------------
# frames


@pytest.mark.parametrize("which", ["forward", "unbounded"])
def test_frame_at_a_training_camera_is_that_view_rendered(which, request):
    """The whole chain (viser camera -> input frame -> normalised world -> NDC or contracted rays) reproduces
    the view."""
    from ovs3d.methods.reconstruction import render_rays_chunked
    from ovs3d.render.scene_rays import ray_near, view_rays

    rgb_state = request.getfixturevalue("rgb_state" if which == "forward" else "orbit_rgb_state")
    scene, ds = rgb_state.scene, 2.0
    assert scene.kind == which
    view = 3
    c2w_in, fov, aspect = training_camera(scene, view)
    wxyz, pos = c2w_to_viser(c2w_in)
    w, h = scene.image_size(ds)
    img = render_frame(rgb_state, viser_to_c2w(wxyz, pos), fov, aspect, w)
    o, d = view_rays(scene, view, ds)
    ref = render_rays_chunked(rgb_state.trained, o, d, ray_near(scene), (h, w))["rgb"]
    ref = (np.clip(ref, 0, 1) * 255 + 0.5).astype(np.uint8)
    assert img.shape == (h, w, 3) and img.dtype == np.uint8
    assert np.abs(img.astype(int) - ref.astype(int)).max() <= 2


def test_frames_of_every_mode(lerf_state):
    scene = lerf_state.scene
    c2w, fov, aspect = training_camera(scene, 1)
    shapes = set()
    for opt in [
        FrameOptions("RGB"),
        FrameOptions("depth"),
        FrameOptions("segmentation"),
        FrameOptions("relevancy", "a red mug"),
        FrameOptions("relevancy", "a red mug", scale=2),
    ]:
        img = render_frame(lerf_state, c2w, fov, aspect, 24, opt)
        assert img.dtype == np.uint8 and img.ndim == 3
        shapes.add(img.shape)
    assert shapes == {(18, 24, 3)}
    rgb = render_frame(lerf_state, c2w, fov, aspect, 24, FrameOptions("RGB"))
    # every label hidden: the overlay leaves the RGB render as it is (the method's own colour render, which
    # composites the heaviest samples only: within rounding of the field's)
    hidden = FrameOptions("segmentation", hidden=frozenset(range(len(scene.classes))))
    seg_hidden = render_frame(lerf_state, c2w, fov, aspect, 24, hidden)
    assert np.abs(seg_hidden.astype(int) - rgb.astype(int)).max() <= 2
    seg = render_frame(lerf_state, c2w, fov, aspect, 24, FrameOptions("segmentation"))
    assert np.abs(seg.astype(int) - rgb.astype(int)).max() > 20  # while the overlay itself is coloured
    # an empty query draws the RGB render
    assert np.array_equal(render_frame(lerf_state, c2w, fov, aspect, 24, FrameOptions("relevancy", "  ")), rgb)


def test_one_scale_render_equals_that_scale_of_the_full_render(lerf_state):
    from ovs3d.render.scene_rays import ray_near, view_rays

    scene, method = lerf_state.scene, lerf_state.method
    o, d = view_rays(scene, 0, 8.0)
    full = method.render_rays(o, d, ray_near(scene))
    for s in range(len(lerf_state.scales)):
        one = lerf_state.method_at_scale(s).render_rays(o, d, ray_near(scene))
        assert one["language"].shape[-2] == 1
        assert torch.allclose(one["language"][:, 0].float(), full["language"][:, s].float(), atol=1e-2)
    assert len(method.scales) == 3  # the original is untouched


def test_rgb_runs_draw_rgb_and_depth_only(rgb_state):
    assert rgb_state.modes == ("RGB", "depth") and not rgb_state.semantic
    c2w, fov, aspect = training_camera(rgb_state.scene, 0)
    assert render_frame(rgb_state, c2w, fov, aspect, 16, FrameOptions("depth")).shape == (12, 16, 3)
    with pytest.raises(OVS3DError, match="not available"):
        render_frame(rgb_state, c2w, fov, aspect, 16, FrameOptions("segmentation"))


def test_a_forward_scene_seen_from_behind_is_black(rgb_state):
    c2w, fov, aspect = training_camera(rgb_state.scene, 0)
    back = c2w.copy()
    back[:, 0], back[:, 2] = -back[:, 0], -back[:, 2]  # turned around
    assert render_frame(rgb_state, back, fov, aspect, 16).max() == 0


# ---------------------------------------------------------------------------------------------------
# scheduling


def test_scheduler_draws_interactive_then_still_and_drops_stale_poses(rgb_state):
    sent = []
    sched = FrameScheduler(rgb_state, FrameOptions, lambda k, img, rec: sent.append(rec), still_delay_s=0.3)
    sched.start()
    try:
        c2w, fov, aspect = training_camera(rgb_state.scene, 0)
        for i in range(20):  # a camera moving faster than frames can be drawn
            moved = c2w.copy()
            moved[:, 3] += 0.001 * i
            last = sched.request(7, moved, fov, aspect)
        t0 = time.monotonic()
        while not any(r.quality == "still" and r.version == last for r in sent) and time.monotonic() - t0 < 60:
            time.sleep(0.05)
    finally:
        sched.stop()
    assert any(r.quality == "still" and r.version == last for r in sent), sent
    assert len(sent) < 10  # most of the 20 poses were superseded, not queued
    still = [r for r in sent if r.quality == "still"][-1]
    assert still.width * still.height == pytest.approx(rgb_state.still_pixels, rel=0.1)
    assert all(r.client == 7 for r in sent)


# ---------------------------------------------------------------------------------------------------
# the server


def test_server_answers_on_loopback_and_shows_the_run(tiny_runs, lerf_state, monkeypatch):
    pytest.importorskip("viser")
    import ovs3d.viewer as viewer_mod

    points = stand_in_points(lerf_state)
    monkeypatch.setattr(viewer_mod, "_load_points", lambda run: points)
    port = free_port()
    v = viewer_mod.serve(tiny_runs["lerf"], port=port, block=False)
    try:
        assert v.url == f"http://127.0.0.1:{port}"
        assert v.server.get_host() == "127.0.0.1" and v.server.get_port() == port
        with urllib.request.urlopen(v.url, timeout=10) as res:
            assert res.status == 200 and b"<html" in res.read().lower()
        assert len(v._frustums) == lerf_state.scene.n_views
        assert sum(len(xyz) for xyz, _ in v._point_data.values()) == len(points.xyz)
        assert len(v._label_boxes) == len(lerf_state.classes)
        v._label_boxes[0].value = False  # hides that label's points and its overlay
        assert v.options().hidden == frozenset({0}) and not v._point_nodes[0].visible
        v._gui["point_colour"].value = "label"  # points coloured by label: the overlay's palette
        lab = max(k for k in v._point_nodes)
        assert (v._point_nodes[lab].colors == lerf_state.palette[lab]).all()
        v._gui["point_colour"].value = "RGB"
        assert np.array_equal(v._point_nodes[lab].colors, v._point_data[lab][1])
        v._gui["query"].value = "a red mug"  # typing a query switches to the relevancy mode
        assert v.options().mode == "relevancy" and v.options().query == "a red mug"
        v._gui["scale"].value = 2
        assert v.options().scale == 1
    finally:
        v.stop()


def test_rgb_run_viewer_has_no_query_box(tiny_runs, rgb_state, monkeypatch):
    pytest.importorskip("viser")
    import ovs3d.viewer as viewer_mod

    monkeypatch.setattr(viewer_mod, "_load_points", lambda run: stand_in_points(rgb_state, 50))
    v = viewer_mod.serve(tiny_runs["rgb"], port=0, block=False)
    try:
        assert "query" not in v._gui and "scale" not in v._gui and "point_colour" not in v._gui
        assert list(v._gui["mode"].options) == ["RGB", "depth"]
        assert set(v._point_nodes) == {-1}  # RGB-only points
    finally:
        v.stop()


def test_port_in_use_is_one_clear_error_before_anything_loads(tmp_path):
    pytest.importorskip("viser")
    from ovs3d.viewer import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(OVS3DError) as err:
            serve(tmp_path / "not-a-run", port=port, block=False)  # the run is not even looked at
    msg = str(err.value)
    assert msg == f"port {port} on 127.0.0.1 is in use; pass --port N or stop the other program"
    assert "\n" not in msg


def test_real_export_points(tiny_runs, tmp_path):
    """With ``ovs3d.export`` present, the viewer shows the run's own exported points (baked into a copy)."""
    pytest.importorskip("viser")
    pytest.importorskip("ovs3d.export")
    from ovs3d.viewer import serve

    run = shutil.copytree(tiny_runs["lerf"], tmp_path / "lerf")
    v = serve(run, port=0, block=False)
    try:
        assert v.points is not None and len(v.points.xyz) > 0
        assert sum(len(xyz) for xyz, _ in v._point_data.values()) == min(len(v.points.xyz), 500_000)
    finally:
        v.stop()


# ---------------------------------------------------------------------------------------------------
# a real browser


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_viewer", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_browser_typing_a_query_changes_the_rendered_image(tiny_runs, lerf_state, monkeypatch, tmp_path):
    pytest.importorskip("viser")
    pytest.importorskip("selenium")
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        pytest.skip("needs /usr/bin/chromium and /usr/bin/chromedriver")
    import ovs3d.viewer as viewer_mod

    monkeypatch.setattr(viewer_mod, "_load_points", lambda run: stand_in_points(lerf_state))
    v = viewer_mod.serve(tiny_runs["lerf"], port=0, block=False)
    try:
        res = _bench_module().browser_query_check(v, "a red mug", tmp_path, drag=False)
    finally:
        v.stop()
    assert res["first_frame_s"] is not None, res
    assert res["query_frame_s"] is not None, res  # the server saw the text and sent a relevancy frame
    assert res["screenshot_diff"] > 1.0, res  # and the browser shows another picture
