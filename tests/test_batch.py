"""``ovs3d batch`` (ovs3d.batch): planning, tables, and two-scene batches on a local Ray (skip, resume, retry)."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
from pathlib import Path

import pytest

from ovs3d.batch import (
    BatchTask,
    RayConfig,
    build_table,
    parse_ablation,
    plan_batch,
    resolve_scenes,
    run_batch,
    run_task,
    table_csv,
    table_markdown,
)
from ovs3d.cli.main import _fit_config
from ovs3d.errors import OVS3DError
from ovs3d.run import FitConfig
from tiny_fits import TINY_RECON, TINY_SEMANTIC

TINY_FIT = TINY_RECON + TINY_SEMANTIC  # fits of a second or two on the 64x48 test scenes


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> list[Path]:
    """Two 64x48, 8-view tabletop scenes (seeds 0 and 1) in one folder."""
    from ovs3d.scenegen import make_scene

    root = tmp_path_factory.mktemp("batch_scenes")
    tiny = {"width": 64, "height": 48, "n_views": 8, "n_annotated": 2, "supersample": 1}
    return [make_scene("tabletop", s, root / f"scene{s}", **tiny) for s in (0, 1)]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance (2 CPUs) for the module's batches; run_batch leaves an instance it did not start."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _task(scene: str, row: str, evaluate: bool = True) -> BatchTask:
    cfg = FitConfig(scene=Path(scene), out=Path("runs") / scene / row, method="rgb" if row == "rgb" else "3dovs")
    return BatchTask(key=f"{scene}/{row}", scene=scene, row=row, fit=cfg, command="ovs3d fit", evaluate=evaluate)


# --------------------------------------------------------------------------------------------------
# tables


def test_table_from_hand_built_metrics():
    tasks = [_task("a", "rgb", False), _task("b", "rgb", False), _task("a", "3dovs"), _task("b", "3dovs")]
    results = [
        {"key": "a/rgb", "state": "done", "metrics": {}},
        {"key": "b/rgb", "state": "done", "metrics": {}},
        {"key": "a/3dovs", "state": "done", "metrics": {"miou": 0.5, "accuracy": 0.75, "psnr": 20.0}},
        {"key": "b/3dovs", "state": "failed", "error": "boom"},
    ]
    table = build_table(tasks, results)
    assert table.scenes == ["a", "b"]
    assert [(r, m) for r, m, _ in table.rows] == [("3dovs", "mIoU"), ("3dovs", "accuracy"), ("3dovs", "PSNR")]
    rows = list(csv.reader(io.StringIO(table_csv(table))))
    assert rows[0] == ["method", "metric", "a", "b", "mean"]
    assert rows[1] == ["3dovs", "mIoU", "0.5", "", "0.5"]
    md = table_markdown(table).splitlines()
    assert md[0] == "| method | metric | a | b | mean |"
    assert md[2] == "| 3dovs | mIoU | 0.500 | — | 0.500 (1/2) |"
    assert md[4] == "| 3dovs | PSNR | 20.00 | — | 20.00 (1/2) |"


def test_table_mean_over_scenes():
    tasks = [_task("a", "3dovs"), _task("b", "3dovs")]
    results = [{"state": "done", "metrics": {"miou": 0.2}}, {"state": "done", "metrics": {"miou": 0.4}}]
    md = table_markdown(build_table(tasks, results))
    assert "| 3dovs | mIoU | 0.200 | 0.400 | 0.300 |" in md


# --------------------------------------------------------------------------------------------------
# planning


def test_plan_shares_one_reconstruction_per_scene_and_recon_settings(scenes, tmp_path):
    out = tmp_path / "res"
    ablations = ["nofda=--semantic.no-use-fda", "short=--recon.n-iters 5"]
    fit_args = [*TINY_FIT, "--ovnerf.n-iters", "7"]
    tasks = plan_batch(scenes, ["3dovs", "ovnerf", "rgb"], ablations, out, _fit_config, fit_args=fit_args)
    keys = [t.key for t in tasks]
    assert keys[:4] == ["scene0/rgb", "scene0/rgb-short", "scene1/rgb", "scene1/rgb-short"]
    by_key = {t.key: t for t in tasks}
    assert by_key["scene0/rgb"].evaluate and by_key["scene0/rgb-short"].evaluate  # rgb is one of the methods
    assert by_key["scene0/3dovs"].needs == "scene0/rgb"
    assert by_key["scene0/3dovs-nofda"].needs == "scene0/rgb"
    assert by_key["scene0/3dovs-short"].needs == "scene0/rgb-short"
    assert by_key["scene0/3dovs-nofda"].fit.semantic.use_fda is False
    assert by_key["scene0/3dovs-short"].fit.recon.n_iters == 5
    assert by_key["scene0/rgb-short"].fit.recon.n_iters == 5 and by_key["scene0/rgb"].fit.recon.n_iters == 12
    assert by_key["scene0/3dovs"].fit.recon_from == out.resolve() / "runs" / "scene0" / "rgb"
    assert by_key["scene0/ovnerf"].fit.semantic.n_iters == 7 and by_key["scene0/3dovs"].fit.semantic.n_iters == 6
    assert "--ovnerf." not in by_key["scene0/3dovs"].command
    assert "--recon-from" in by_key["scene1/ovnerf"].command
    assert by_key["scene1/rgb"].command.count("--semantic") == 0  # a reconstruction takes only its own flags
    assert len(tasks) == 2 * (2 + 3 * 2)
    for t in tasks:
        assert t.needs is None or keys.index(t.needs) < keys.index(t.key)


@pytest.mark.parametrize(
    ("ablations", "fit_args", "fragment"),
    [
        (["nofda"], [], "is not NAME=FLAGS"),
        (["a=", "a=--semantic.no-use-fda"], [], "names 'a' twice"),
        ([], ["--out", "x"], "--out is set by ovs3d batch itself"),
        (["x=--recon-from y"], [], "--recon-from is set by ovs3d batch itself"),
        (["x=--semantic.n-iters 0"], [], "scene0 3dovs-x: --semantic.n-iters must be at least 1"),
    ],
)
def test_plan_refuses_bad_variants(scenes, tmp_path, ablations, fit_args, fragment):
    with pytest.raises(OVS3DError, match=None) as e:
        plan_batch(scenes[:1], ["3dovs"], ablations, tmp_path, _fit_config, fit_args=fit_args)
    assert fragment in str(e.value)


def test_parse_ablation():
    assert parse_ablation("no-fda=--semantic.no-use-fda") == ("no-fda", ["--semantic.no-use-fda"])
    assert parse_ablation("k=--a 1 --b 'x y'") == ("k", ["--a", "1", "--b", "x y"])


def test_resolve_scenes(scenes, tmp_path):
    root = scenes[0].parent
    (root / "notes").mkdir(exist_ok=True)
    assert resolve_scenes([], str(root / "*")) == [s.resolve() for s in scenes]
    with pytest.raises(OVS3DError, match="matches no scene folder"):
        resolve_scenes([], str(tmp_path / "nothing*"))
    with pytest.raises(OVS3DError, match="is not a scene folder"):
        resolve_scenes([root / "notes"], None)
    twin = tmp_path / "other" / "scene0"
    twin.mkdir(parents=True)
    (twin / "transforms.json").write_text("{}")
    with pytest.raises(OVS3DError, match="two scenes are named 'scene0'"):
        resolve_scenes([scenes[0], twin], None)
    with pytest.raises(OVS3DError, match="no scenes"):
        resolve_scenes([], None)


# --------------------------------------------------------------------------------------------------
# batches on a local Ray


def _metrics(out: Path) -> dict[str, dict]:
    data = json.loads((out / "batch.json").read_text())
    return {t["key"]: t for t in data["tasks"]}


def test_two_scene_batch_then_the_same_batch_skips_every_run(scenes, tmp_path, local_ray):
    out = tmp_path / "res"
    tasks = plan_batch(scenes, ["3dovs"], [], out, _fit_config, fit_args=TINY_FIT)
    results = run_batch(tasks, out, RayConfig(poll_s=0.2))
    assert [r["state"] for r in results] == ["done"] * 4
    for t in tasks:
        assert (t.run / "checkpoints" / "reconstruction.pt").is_file()
        assert (t.run / "eval" / "metrics.json").is_file() == t.evaluate
    rows = list(csv.reader(io.StringIO((out / "table.csv").read_text())))
    assert rows[0] == ["method", "metric", "scene0", "scene1", "mean"]
    miou = next(r for r in rows if r[:2] == ["3dovs", "mIoU"])
    stored = json.loads((out / "runs" / "scene1" / "3dovs" / "eval" / "metrics.json").read_text())
    assert float(miou[3]) == pytest.approx(stored["miou"])
    html = (out / "report.html").read_text()
    assert "Scene scene0" in html and html.count("<img") == 4  # 2 scenes x 2 annotated views
    log = (out / "runs" / "scene0" / "3dovs" / "logs" / "commands.jsonl").read_text().splitlines()
    assert [json.loads(x)["argv"][1] for x in log] == ["fit", "eval"]
    assert "--recon-from" in json.loads(log[0])["command"]

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished run was fitted again")

    again = run_batch(tasks, out, RayConfig(poll_s=0.2), task_fn=must_not_run)
    assert [r["state"] for r in again] == ["skipped"] * 4
    assert [r["metrics"] for r in again] == [r["metrics"] for r in results]


def test_a_failed_task_resumes_when_the_batch_runs_again(scenes, tmp_path, local_ray):
    out = tmp_path / "res"
    tasks = plan_batch(scenes[:1], ["3dovs", "ovnerf"], [], out, _fit_config, fit_args=TINY_FIT)

    def ovnerf_refused(t, status_dir, attempt, threads=None):
        if t.row == "ovnerf":
            raise OVS3DError("simulated user error")
        return run_task(t, status_dir, attempt, threads)

    first = run_batch(tasks, out, RayConfig(poll_s=0.2), task_fn=ovnerf_refused)
    states = {r["key"]: r for r in first}
    assert states["scene0/ovnerf"]["state"] == "failed" and states["scene0/ovnerf"]["attempts"] == 1  # not retried
    assert "simulated user error" in states["scene0/ovnerf"]["error"]
    assert "scene0/ovnerf: failed" in (out / "table.md").read_text()
    recon = out / "runs" / "scene0" / "rgb" / "checkpoints" / "reconstruction.pt"
    stamp = recon.stat().st_mtime_ns
    second = run_batch(tasks, out, RayConfig(poll_s=0.2))
    assert {r["key"]: r["state"] for r in second} == {"scene0/rgb": "skipped", "scene0/3dovs": "skipped",
                                                     "scene0/ovnerf": "done"}  # fmt: skip
    assert recon.stat().st_mtime_ns == stamp  # the reconstruction was not made again
    assert "failed" not in (out / "table.md").read_text()


def test_a_task_whose_worker_dies_is_retried_and_its_dependents_wait(scenes, tmp_path, local_ray):
    out = tmp_path / "res"
    tasks = plan_batch(scenes[:1], ["3dovs"], [], out, _fit_config, fit_args=TINY_FIT)
    marker = tmp_path / "killed"

    def dies_once(t, status_dir, attempt, threads=None):
        if t.row == "rgb" and not marker.exists():
            marker.write_text("x")
            os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies, as when a node is lost
        return run_task(t, status_dir, attempt, threads)

    results = run_batch(tasks, out, RayConfig(poll_s=0.2), task_fn=dies_once)
    assert [(r["key"], r["state"], r["attempts"]) for r in results] == [
        ("scene0/rgb", "done", 2),
        ("scene0/3dovs", "done", 1),
    ]


def test_a_reconstruction_that_keeps_failing_blocks_its_methods(scenes, tmp_path, local_ray):
    out = tmp_path / "res"
    tasks = plan_batch(scenes[:1], ["3dovs"], [], out, _fit_config, fit_args=TINY_FIT)
    calls = tmp_path / "calls"

    def always_fails(t, status_dir, attempt, threads=None):
        with calls.open("a") as f:
            f.write(f"{t.key} {attempt}\n")
        raise RuntimeError("disk on fire")

    results = run_batch(tasks, out, RayConfig(poll_s=0.2, retries=1), task_fn=always_fails)
    assert [r["state"] for r in results] == ["failed", "blocked"]
    assert calls.read_text().splitlines() == ["scene0/rgb 1", "scene0/rgb 2"]
    assert "RuntimeError: disk on fire" in results[0]["error"]


# --------------------------------------------------------------------------------------------------
# the command


def test_cli_batch_runs_fit_flags_after_the_double_dash(scenes, tmp_path, local_ray, capsys):
    from ovs3d.cli.main import entrypoint

    out = tmp_path / "res"
    args = ["batch", "--out", str(out), "--scenes", str(scenes[0]), "--methods", "3dovs", "-q", "--", *TINY_FIT]
    assert entrypoint(args) == 0
    printed = capsys.readouterr().out
    assert "| 3dovs | mIoU |" in printed and "2 of 2 runs finished" in printed
    cfg = json.loads((out / "runs" / "scene0" / "3dovs" / "config.json").read_text())["fit"]
    assert cfg["recon"]["n_iters"] == 12 and cfg["semantic"]["n_iters"] == 6


def test_cli_batch_without_ray_says_how_to_install_it(scenes, tmp_path, monkeypatch, capsys):
    import sys

    from ovs3d.cli.main import entrypoint

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    out = tmp_path / "res"
    assert entrypoint(["batch", "--out", str(out), "--scenes", str(scenes[0]), "--", *TINY_FIT]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ovs3d: error: ovs3d batch needs Ray: pip install 'ovs3d[batch]' (or pip install 'ray>=2.10')"]
    assert not out.exists()


def test_cli_fit_flags_after_double_dash_only_for_batch(tmp_path, capsys):
    from ovs3d.cli.main import entrypoint

    assert entrypoint(["fit", "--scene", str(tmp_path), "--out", str(tmp_path / "r"), "--", "--x"]) == 1
    assert "flags after -- are only for ovs3d batch" in capsys.readouterr().err
