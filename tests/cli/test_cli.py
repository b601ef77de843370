"""The ``ovs3d`` console script, run for real in a subprocess (SPEC §3).

User errors must end with exactly one ``ovs3d: error: ...`` line on stderr, a non-zero exit and no
traceback; tyro's own argument errors keep tyro's usage box (non-zero exit, no traceback). The happy
path (make-scene -> fit -> eval -> render) runs once on a tiny scene with a 2-iteration reconstruction.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from cli_subprocess import cli_env
from tiny_fits import tiny_recon

# A reconstruction that takes a second or two: enough to write a run folder and a checkpoint.
TINY_RECON = tiny_recon(2)


def ovs3d(*args: object, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """``python -m ovs3d ARGS`` in ``cwd``, capturing stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "ovs3d", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
    )


def _show(res: subprocess.CompletedProcess[str]) -> str:
    return f"exit {res.returncode}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}"


def assert_no_traceback(res: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in res.stdout + res.stderr, _show(res)


def assert_ok(res: subprocess.CompletedProcess[str]) -> None:
    assert res.returncode == 0, _show(res)
    assert_no_traceback(res)


def assert_user_error(res: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Non-zero exit, one ``ovs3d: error:`` line on stderr mentioning ``fragments``, no traceback."""
    assert_no_traceback(res)
    assert res.returncode != 0, _show(res)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, _show(res)
    assert lines[0].startswith("ovs3d: error: "), _show(res)
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), f"{fragment!r} missing from: {lines[0]}"
    return lines[0]


def assert_tyro_error(res: subprocess.CompletedProcess[str]) -> None:
    assert res.returncode != 0, _show(res)
    assert_no_traceback(res)


def copy_scene(src: Path, dst: Path) -> Path:
    """A private copy of a scene (without its feature cache) that a test may break."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".ovs3d_cache"))
    return dst


# --------------------------------------------------------------------------------------------------
# happy path: make-scene -> fit (rgb) -> eval -> render


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory) -> Path:
    """A scene written by ``ovs3d make-scene`` and a 2-iteration ``fit --method rgb`` run on it."""
    work = tmp_path_factory.mktemp("cli_run")
    res = ovs3d("make-scene", "--out", "scene", "--width", 64, "--height", 48, "--n-views", 6, cwd=work)
    assert_ok(res)
    scene = work / "scene"
    assert (scene / "poses_bounds.npy").is_file()
    assert len(list((scene / "images").glob("*.png"))) == 6
    res = ovs3d("fit", "--scene", "scene", "--out", "run", "--method", "rgb", *TINY_RECON, cwd=work)
    assert_ok(res)
    run = work / "run"
    assert (run / "config.json").is_file()
    assert any((run / "checkpoints").glob("*.pt"))
    return run


def test_make_scene_fit_eval(rgb_run: Path):
    import json

    res = ovs3d("eval", "--run", rgb_run.name, cwd=rgb_run.parent)
    assert_ok(res)
    metrics = json.loads((rgb_run / "eval" / "metrics.json").read_text())
    assert "psnr" in metrics
    assert isinstance(metrics["psnr"], float) and metrics["psnr"] > 0
    assert (rgb_run / "config.json").is_file()


def test_render(rgb_run: Path, tmp_path: Path):
    res = ovs3d("render", "--run", rgb_run, "--frames", 4, cwd=tmp_path)
    assert_ok(res)
    assert list((rgb_run / "render" / "views").glob("*.png"))
    video = rgb_run / "render" / "path_rgb.mp4"
    assert video.is_file() and video.stat().st_size > 0


def test_fit_resume_with_other_settings(rgb_run: Path):
    before = (rgb_run / "config.json").read_bytes()
    res = ovs3d(
        "fit", "--scene", "scene", "--out", "run", "--method", "rgb", *TINY_RECON, "--holdout", cwd=rgb_run.parent
    )
    assert_user_error(res, "holdout (run: False, now: True)")
    assert (rgb_run / "config.json").read_bytes() == before, "a refused resume must not touch the run"
    # settings a reconstruction-only run never reads do not block resuming it
    res = ovs3d(
        "fit",
        "--scene",
        "scene",
        "--out",
        "run",
        "--method",
        "rgb",
        *TINY_RECON,
        "--dino",
        "sim:7",
        cwd=rgb_run.parent,
    )
    assert_ok(res)
    # a reconstruction-only run has no semantic settings at all
    res = ovs3d(
        "fit", "--scene", "scene", "--out", "run", "--method", "rgb", "--semantic.fda-w-pos", "3", cwd=rgb_run.parent
    )
    assert res.returncode != 0 and "fda-w-pos" in res.stderr


def test_eval_corrupt_checkpoint(rgb_run: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(rgb_run, run, ignore=shutil.ignore_patterns("eval", "render"))
    ckpts = sorted((run / "checkpoints").glob("*.pt"))
    assert ckpts
    for ckpt in ckpts:
        data = ckpt.read_bytes()
        ckpt.write_bytes(data[: len(data) // 3])
    assert_user_error(ovs3d("eval", "--run", "run", cwd=tmp_path), "checkpoint")


# --------------------------------------------------------------------------------------------------
# user errors


def test_make_scene_into_foreign_folder(tmp_path: Path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("not a scene\n")
    res = ovs3d("make-scene", "--out", "stuff", "--width", 64, "--height", 48, "--n-views", 6, cwd=tmp_path)
    assert_user_error(res, "stuff")
    assert sorted(p.name for p in (tmp_path / "stuff").iterdir()) == ["notes.txt"]


def test_make_scene_bad_size(tmp_path: Path):
    res = ovs3d("make-scene", "--out", "scene", "--width", 0, "--height", 48, "--n-views", 6, cwd=tmp_path)
    assert_user_error(res)


def test_make_scene_unknown_preset(tmp_path: Path):
    assert_tyro_error(ovs3d("make-scene", "--out", "scene", "--preset", "no-such-preset", cwd=tmp_path))


def _missing(tmp: Path, tiny: Path) -> list[object]:
    return ["--scene", "no_such_scene"]


def _no_poses(tmp: Path, tiny: Path) -> list[object]:
    scene = copy_scene(tiny, tmp / "noposes")
    for p in scene.glob("poses_bounds.npy"):
        p.unlink()
    for p in scene.glob("transforms*.json"):
        p.unlink()
    assert list((scene / "images").glob("*.png"))
    return ["--scene", "noposes"]


def _image_missing(tmp: Path, tiny: Path) -> list[object]:
    scene = copy_scene(tiny, tmp / "short")
    images = sorted((scene / "images").glob("*.png"))
    images[len(images) // 2].unlink()
    return ["--scene", "short"]


def _scene(*extra: object) -> Callable[[Path, Path], list[object]]:
    def build(tmp: Path, tiny: Path) -> list[object]:
        return ["--scene", tiny, *extra]

    return build


def _foreign_out(tmp: Path, tiny: Path) -> list[object]:
    (tmp / "run").mkdir(exist_ok=True)
    (tmp / "run" / "important.txt").write_text("keep me\n")
    return ["--scene", tiny]


NO_CLIP = "/nonexistent/weights.bin"
NO_DINO = "/nope.pth"
NO_SAM = "/no/sam_vit_b.pth"
FIT_ERRORS: dict[str, tuple[Callable[[Path, Path], list[object]], tuple[str, ...]]] = {
    "missing-scene": (_missing, ("no_such_scene",)),
    "no-poses": (_no_poses, ("noposes",)),
    "image-pose-count": (_image_missing, ("short",)),
    "clip-missing-weights": (_scene("--clip", f"open_clip:ViT-B-16:{NO_CLIP}"), (NO_CLIP,)),
    "clip-unknown-backend": (_scene("--clip", "nonsense"), ("nonsense",)),
    "dino-missing-weights": (_scene("--dino", f"timm:vit_small_patch8_224.dino:{NO_DINO}"), (NO_DINO,)),
    "out-not-a-run": (_foreign_out, ("run",)),
    "unknown-method": (_scene("--method", "nerfacto"), ("nerfacto", "3dovs", "ovnerf", "rgb")),
    "sam-missing-checkpoint": (_scene("--method", "ovnerf", "--masks", f"sam:vit_b:{NO_SAM}"), (NO_SAM, "--masks")),
}


@pytest.mark.parametrize("case", list(FIT_ERRORS))
def test_fit_user_errors(case: str, tmp_path: Path, tiny_scene_dir: Path):
    build, fragments = FIT_ERRORS[case]
    args = build(tmp_path, tiny_scene_dir)
    res = ovs3d("fit", *args, "--out", "run", *TINY_RECON, cwd=tmp_path)
    assert_user_error(res, *fragments)
    if case == "out-not-a-run":
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["important.txt"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_fit_cuda_unavailable(tmp_path: Path, tiny_scene_dir: Path):
    res = ovs3d("fit", "--scene", tiny_scene_dir, "--out", "run", "--device", "cuda", *TINY_RECON, cwd=tmp_path)
    assert_user_error(res, "cuda")


def test_eval_not_a_run(tmp_path: Path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.txt").write_text("x\n")
    assert_user_error(ovs3d("eval", "--run", "folder", cwd=tmp_path), "folder")


def test_render_missing_run(tmp_path: Path):
    assert_user_error(ovs3d("render", "--run", "no_such_run", "--frames", 2, cwd=tmp_path), "no_such_run")


def test_features_bad_scene(tmp_path: Path, tiny_scene_dir: Path):
    _no_poses(tmp_path, tiny_scene_dir)
    assert_user_error(ovs3d("features", "--scene", "noposes", cwd=tmp_path), "noposes")


def test_baseline_without_segmentations(tmp_path: Path, tiny_scene_dir: Path):
    scene = copy_scene(tiny_scene_dir, tmp_path / "noseg")
    shutil.rmtree(scene / "segmentations")
    res = ovs3d("baseline", "--scene", "noseg", "--out", "out", cwd=tmp_path)
    assert_user_error(res, "noseg")


# --------------------------------------------------------------------------------------------------
# query (SPEC §3-§4) on a tiny lerf run


TINY_LERF = [
    "--method", "lerf",
    "--lerf.n-iters", "3",
    "--lerf.batch-size", "64",
    "--lerf.samples-per-ray", "4",
    "--lerf.query-scales", "3",
    "--features.semantic-downscale", "4",
]  # fmt: skip


@pytest.fixture(scope="module")
def lerf_run(tmp_path_factory) -> Path:
    """A 3-iteration ``fit --method lerf`` run on a 64x48 scene (``--lerf.*`` spells ``--semantic.*``)."""
    work = tmp_path_factory.mktemp("cli_lerf")
    assert_ok(ovs3d("make-scene", "--out", "scene", "--width", 64, "--height", 48, "--n-views", 6, cwd=work))
    res = ovs3d("fit", "--scene", "scene", "--out", "run", *TINY_RECON, *TINY_LERF, cwd=work)
    assert_ok(res)
    return work / "run"


def test_query_writes_maps_heatmaps_and_index(lerf_run: Path):
    import json

    import numpy as np

    texts = ["a red mug", "the mug's handle!", "the mug's handle?"]  # any text; two slugs collide
    res = ovs3d("query", "--run", lerf_run, *[x for t in texts for x in ("--text", t)], "--views", 0, 2, "--out", "q",
                cwd=lerf_run.parent)  # fmt: skip
    assert_ok(res)
    out = lerf_run.parent / "q"
    index = json.loads((out / "queries.json").read_text())
    assert [q["text"] for q in index["queries"]] == texts
    slugs = [q["slug"] for q in index["queries"]]
    assert len(set(slugs)) == 3 and index["views"] == ["00", "02"]
    cfg = json.loads((lerf_run / "config.json").read_text())["fit"]
    assert cfg["semantic"]["n_iters"] == 3 and cfg["method"] == "lerf"
    for view in ("00", "02"):
        for slug in slugs:
            rel = np.load(out / view / f"{slug}.npy")
            assert rel.dtype == np.float32 and rel.shape == (12, 16)  # 64x48 at 1/4
            assert 0.0 <= rel.min() and rel.max() <= 1.0
            assert (out / view / f"{slug}.png").is_file()


def test_query_path_video(lerf_run: Path):
    res = ovs3d("query", "--run", lerf_run, "--text", "a mug", "--views", 1, "--path", 3, "--out", "qp",
                cwd=lerf_run.parent)  # fmt: skip
    assert_ok(res)
    video = lerf_run.parent / "qp" / "path" / "a_mug.mp4"
    assert video.is_file() and video.stat().st_size > 0


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--text", " "], ("empty --text",)),
        ([], ("no --text",)),
        (["--text", "mug", "--views", "99"], ("view 99", "6 views")),
    ],
)
def test_query_user_errors(lerf_run: Path, args: list[str], fragments: tuple[str, ...]):
    res = ovs3d("query", "--run", lerf_run, *args, "--out", "bad", cwd=lerf_run.parent)
    assert_user_error(res, *fragments)
    assert not (lerf_run.parent / "bad" / "queries.json").exists()


def test_query_on_a_reconstruction_only_run(rgb_run: Path):
    res = ovs3d("query", "--run", rgb_run, "--text", "a mug", cwd=rgb_run.parent)
    assert_user_error(res, "reconstruction-only")


def test_fit_recomputes_a_truncated_pyramid_cache(lerf_run: Path):
    """A truncated pyramid file is found on open, recomputed with one warning, and the fit succeeds."""
    work = lerf_run.parent
    files = sorted((work / "scene" / ".ovs3d_cache" / "clip_pyramid").glob("*/view_*.npy"))
    assert files
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])
    res = ovs3d("fit", "--scene", "scene", "--out", "run2", *TINY_RECON, *TINY_LERF, cwd=work)
    assert_ok(res)
    assert "recomput" in res.stderr.lower(), _show(res)
    assert files[0].stat().st_size == len(data)


# --------------------------------------------------------------------------------------------------
# export, report and the commands a run records


def test_export_then_report_of_a_semantic_run(lerf_run: Path):
    import json

    work = lerf_run.parent
    # a 2-iteration reconstruction is nearly transparent: --min-opacity 0 keeps every ray's surface
    args = ["--run", lerf_run, "--out", "exp", "--min-opacity", "0", "--mesh-resolution", "16", "--text", "a mug"]
    res = ovs3d("export", *args, cwd=work)
    assert_ok(res)
    assert "exported" in res.stdout
    labels = json.loads((work / "exp" / "labels.json").read_text())
    assert labels["frame"] == "input poses" and labels["texts"][0]["property"] == "rel_a_mug"
    assert (work / "exp" / "points.ply").stat().st_size > 0
    before = (work / "exp" / "points.ply").read_bytes()
    assert_user_error(ovs3d("export", *args, cwd=work), "already exists", "--overwrite")
    assert (work / "exp" / "points.ply").read_bytes() == before
    res = ovs3d("report", "--run", lerf_run, cwd=work)
    assert_ok(res)
    page = (lerf_run / "report" / "index.html").read_text()
    assert "<img" in page and "ovs3d export" in page  # the recorded command is on the page
    logged = [json.loads(line) for line in (lerf_run / "logs" / "commands.jsonl").read_text().splitlines()]
    commands = [e["argv"][1] for e in logged]  # earlier tests of this module may have queried the run
    assert commands[0] == "fit" and "export" in commands and commands[-1] == "report"  # recorded when finished
    assert all(e["seconds"] >= 0 and e["cwd"] for e in logged)


def test_export_user_errors(rgb_run: Path, tmp_path: Path):
    res = ovs3d("export", "--run", rgb_run, "--text", "a mug", "--out", tmp_path / "e", cwd=rgb_run.parent)
    assert_user_error(res, "reconstruction-only")
    assert not (tmp_path / "e").exists()
    assert_user_error(ovs3d("export", "--run", tmp_path, cwd=tmp_path), "not an ovs3d run folder")
    (tmp_path / "f").write_text("x")
    res = ovs3d("export", "--run", rgb_run, "--out", tmp_path / "f", cwd=rgb_run.parent)
    assert_user_error(res, "is a file")
    res = ovs3d("export", "--run", rgb_run, "--min-opacity", "0", "--out", tmp_path / "ok", cwd=rgb_run.parent)
    assert_ok(res)
    assert "reconstruction-only run: exported RGB points only" in res.stdout


def test_view_on_a_taken_port_says_so_in_one_line(rgb_run: Path):
    import socket

    pytest.importorskip("viser")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        res = ovs3d("view", "--run", rgb_run, "--port", port, cwd=rgb_run.parent, timeout=120)
    assert_user_error(res, f"port {port}", "in use", "--port")
