"""Reliability of the ``ovs3d`` command line (issue 13): every setting is checked before any work.

Each case of the issue runs the real command (a subprocess, or the entry point in-process for the fuzz)
and asserts exactly one ``ovs3d: error:`` line, the exit code, no traceback and nothing written. The
fuzz test tries 0, -1, a huge number and a wrong type on every numeric and choice flag of ``fit``,
enumerated from the config dataclasses.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli_subprocess import SIGNAL_DRIVER, cli_env, signal_env
from tiny_fits import tiny_recon

# A reconstruction that takes a second or two (as tests/cli/test_cli.py).
TINY_RECON = tiny_recon(2)


def ovs3d(*args: object, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python -m ovs3d ARGS`` in ``cwd``, capturing stdout and stderr."""
    cmd = [sys.executable, "-m", "ovs3d", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=cli_env())


def ovs3d_killed(kill_in: str, kill_at: int, *args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``ovs3d ARGS``, SIGKILLed when iteration ``kill_at`` of the training loop (``loop``) or of a feature
    cache write (``cache``) is about to start."""
    env = signal_env("SIGKILL", kill_in, kill_at)
    cmd = [sys.executable, "-c", SIGNAL_DRIVER, *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def _show(res: subprocess.CompletedProcess[str]) -> str:
    return f"exit {res.returncode}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}"


def assert_ok(res: subprocess.CompletedProcess[str]) -> None:
    assert res.returncode == 0, _show(res)
    assert "Traceback" not in res.stdout + res.stderr, _show(res)


def assert_user_error(res: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 1, exactly one ``ovs3d: error:`` line on stderr mentioning ``fragments``, no traceback."""
    assert "Traceback" not in res.stdout + res.stderr, _show(res)
    assert res.returncode == 1, _show(res)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ovs3d: error: "), _show(res)
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), f"{fragment!r} missing from: {lines[0]}"
    return lines[0]


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folders``: path -> (size, mtime_ns); what "nothing written" compares."""
    out = {}
    for folder in folders:
        for p in [folder, *folder.rglob("*")]:
            st = p.stat()
            out[str(p)] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder with ``scene``: a 64x48, 6-view tabletop scene (what ``ovs3d make-scene`` writes)."""
    from ovs3d.scenegen import make_scene

    work = tmp_path_factory.mktemp("reliability")
    make_scene("tabletop", 0, work / "scene", width=64, height=48, n_views=6)
    return work


@pytest.fixture
def case(work: Path, tmp_path: Path):
    """``(cwd, scene)`` for a case: a private folder and the shared scene, checked unchanged after the test."""
    before = snapshot(work / "scene")
    yield tmp_path, work / "scene"
    assert snapshot(work / "scene") == before, "a refused command wrote into the scene folder"


def copy_scene(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".ovs3d_cache"))
    return dst


@pytest.fixture
def cli(capsys, monkeypatch):
    """``cli(*args, cwd=...)``: the ``ovs3d`` entry point run in-process in ``cwd`` (milliseconds for what is
    refused before any work), as a CompletedProcess."""
    from ovs3d.cli.main import entrypoint

    def run(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        rc = entrypoint([str(a) for a in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["ovs3d", *map(str, args)], rc, out, err)

    return run


def fit_refused(cli, cwd: Path, scene: Path, *flags: object, fragments: tuple[str, ...]) -> str:
    """``ovs3d fit --scene SCENE --out run FLAGS`` gives one error line with ``fragments`` and writes nothing."""
    before = snapshot(cwd)
    line = assert_user_error(cli("fit", "--scene", scene, "--out", "run", *TINY_RECON, *flags, cwd=cwd), *fragments)
    assert snapshot(cwd) == before, "a refused fit wrote files"
    return line


# --------------------------------------------------------------------------------------------------
# 1. a truncated JPEG


def test_truncated_jpeg_is_found_before_anything_is_written(case, cli):
    from PIL import Image

    cwd, scene = case
    jpg = copy_scene(scene, cwd / "jpg")
    for png in sorted((jpg / "images").glob("*.png")):
        Image.open(png).convert("RGB").save(png.with_suffix(".jpg"), quality=95)
        png.unlink()
    cut = jpg / "images" / "03.jpg"
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    fit_refused(cli, cwd, jpg, fragments=("03.jpg", "truncated"))


# --------------------------------------------------------------------------------------------------
# 2. backend flags are checked whether or not the method uses them


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (["--masks", "foo"], ("--masks", "'foo'")),
        (["--masks", "sam:vit_h:/nonexistent.pth"], ("--masks", "/nonexistent.pth")),
        (["--method", "rgb", "--dino", "timm:"], ("--dino",)),
        (["--method", "rgb", "--clip", "open_clip:ViT-B-16:/no/weights.bin"], ("--clip", "/no/weights.bin")),
    ],
)
def test_unused_backend_flags_are_checked(case, cli, flags, fragments):
    cwd, scene = case
    fit_refused(cli, cwd, scene, *flags, fragments=fragments)


# --------------------------------------------------------------------------------------------------
# 3.-5. counts, intervals, downscales and dtypes


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--recon.n-iters", "0"], "--recon.n-iters must be at least 1 (got 0)"),
        (["--recon.n-iters", "-3"], "--recon.n-iters must be at least 1 (got -3)"),
        (["--semantic.n-iters", "0"], "--semantic.n-iters must be at least 1 (got 0)"),
        (["--method", "lerf", "--lerf.n-iters", "0"], "--lerf.n-iters must be at least 1 (got 0)"),
        (["--recon.checkpoint-every", "0"], "--recon.checkpoint-every must be at least 1 (got 0)"),
        (["--recon.log-every", "0"], "--recon.log-every must be at least 1 (got 0)"),
        (["--recon.batch-size", "0"], "--recon.batch-size must be at least 1 (got 0)"),
        (["--features.semantic-downscale", "0"], "--features.semantic-downscale must be in (0, 1000] (got 0)"),
        (["--features.dtype", "float17"], "--features.dtype must be float16, float32, int8"),
        (["--recon.n-iters", "ten"], "--recon.n-iters must be an integer (got 'ten')"),
    ],
)
def test_bad_settings_are_refused_before_any_work(case, cli, flags, message):
    cwd, scene = case
    line = fit_refused(cli, cwd, scene, *flags, fragments=())
    assert line.startswith(f"ovs3d: error: {message}"), line


def test_refused_setting_from_the_console_script(case):
    """The same one line from the installed ``ovs3d`` (a real process), and no run folder."""
    cwd, scene = case
    res = ovs3d("fit", "--scene", scene, "--out", "run", *TINY_RECON, "--recon.n-iters", "0", cwd=cwd)
    assert assert_user_error(res) == "ovs3d: error: --recon.n-iters must be at least 1 (got 0)"
    assert not (cwd / "run").exists()


# --------------------------------------------------------------------------------------------------
# 6. --out naming a file


def test_out_naming_a_file(case, cli):
    cwd, scene = case
    (cwd / "notes.txt").write_text("keep me\n")
    before = snapshot(cwd)
    res = cli("fit", "--scene", scene, "--out", "notes.txt", *TINY_RECON, cwd=cwd)
    assert_user_error(res, "--out notes.txt is a file")
    assert snapshot(cwd) == before and (cwd / "notes.txt").read_text() == "keep me\n"


# --------------------------------------------------------------------------------------------------
# 7. a foreign run folder


def test_foreign_run_config(case, cli):
    cwd, scene = case
    (cwd / "run").mkdir()
    (cwd / "run" / "config.json").write_text(json.dumps({"version": 1}))
    before = snapshot(cwd)
    assert_user_error(cli("eval", "--run", "run", cwd=cwd), "run/config.json", "not a complete ovs3d run")
    assert_user_error(
        cli("fit", "--scene", scene, "--out", "run", *TINY_RECON, cwd=cwd), "not a complete ovs3d run", "--out"
    )
    assert snapshot(cwd) == before


# --------------------------------------------------------------------------------------------------
# 8. eval and render on an unfinished run; resume logs each step once; an unused backend is named


def test_unfinished_run_eval_render_then_resume(case, cli):
    cwd, scene = case
    flags = ["--method", "rgb", *TINY_RECON, "--recon.n-iters", "4", "--recon.checkpoint-every", "2"]
    flags += ["--recon.log-every", "1", "--masks", "superpixel"]
    killed = ovs3d_killed("loop", 3, "fit", "--scene", scene, "--out", "run", *flags, cwd=cwd)
    assert killed.returncode == -9, _show(killed)  # SIGKILL after step 3 was logged, step 2 checkpointed
    steps = [json.loads(line)["step"] for line in (cwd / "run" / "logs" / "reconstruction.jsonl").open()]
    assert steps == [1, 2, 3]

    before = snapshot(cwd)
    line = assert_user_error(cli("eval", "--run", "run", cwd=cwd), "unfinished", "step 2 of 4", "ovs3d fit")
    assert "--out run" in line
    assert snapshot(cwd) == before and not (cwd / "run" / "eval").exists()
    line = assert_user_error(cli("render", "--run", "run", cwd=cwd), "unfinished", "step 2 of 4", "then render")
    assert snapshot(cwd) == before and not (cwd / "run" / "render").exists()

    res = ovs3d("fit", "--scene", scene, "--out", "run", *flags, cwd=cwd)
    assert_ok(res)
    assert "--masks superpixel is not used by --method rgb" in res.stderr
    steps = [json.loads(line)["step"] for line in (cwd / "run" / "logs" / "reconstruction.jsonl").open()]
    assert steps == [1, 2, 3, 4], "the resumed run logged steps twice"
    assert_ok(cli("eval", "--run", "run", cwd=cwd))
    assert "psnr" in json.loads((cwd / "run" / "eval" / "metrics.json").read_text())


# --------------------------------------------------------------------------------------------------
# 9. make-scene names its flags


def test_make_scene_names_flags_as_typed(tmp_path: Path, cli):
    res = cli("make-scene", "--out", "scene", "--width", 64, "--height", 48, "--n-views", 4, cwd=tmp_path)
    line = assert_user_error(res, "--n-annotated", "--n-views")
    assert "n_annotated" not in line and "n_views" not in line, line
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------------
# smaller: a killed `ovs3d features` leaves no temporary folder; transforms.json names the --kind flag


def test_killed_features_leave_no_temporary_folder(case):
    cwd, scene = case
    mine = copy_scene(scene, cwd / "scene")
    res = ovs3d_killed("cache", 2, "features", "--scene", mine, cwd=cwd)
    assert res.returncode == -9, _show(res)
    cache = mine / ".ovs3d_cache"
    assert [p.name for p in cache.rglob(".tmp-*")], "the kill should have left a temporary folder"
    assert_ok(ovs3d("features", "--scene", mine, cwd=cwd))
    assert not list(cache.rglob(".tmp-*")), "the temporary folder of the killed run is still there"
    assert list(cache.rglob("meta.json"))


def test_transforms_without_bounds_names_the_kind_flag(case, cli):
    from ovs3d.io.loader import read_poses_bounds, write_transforms_json

    cwd, scene = case
    mine = copy_scene(scene, cwd / "tj")
    c2w, hwf, _ = read_poses_bounds(mine / "poses_bounds.npy")
    h, w, focal = (float(v) for v in hwf[0])
    names = [f"images/{p.name}" for p in sorted((mine / "images").glob("*.png"))]
    write_transforms_json(mine / "transforms.json", c2w, [focal, focal, w / 2, h / 2], int(w), int(h), names)
    (mine / "poses_bounds.npy").unlink()
    fit_refused(cli, cwd, mine, "--kind", "forward", fragments=("--kind bounded",))


# --------------------------------------------------------------------------------------------------
# fuzz: every numeric and choice flag of fit, enumerated from the dataclasses


def fit_flag_cases(scene: Path, out: Path) -> list[tuple[str, list[str], bool]]:
    """``(flag, value tokens, invalid)`` for every numeric and choice setting of ``fit`` (each method's
    ``--semantic.*`` once), with the flag spelled as typed."""
    from ovs3d.cli.main import _fit_command
    from ovs3d.methods.registry import method_names
    from ovs3d.utils.config import field_specs, flag_name, probe_values

    cases, seen = [], set()
    for method in method_names():
        cmd = _fit_command(method)(scene=scene, out=out)
        for spec in field_specs(cmd):
            own = spec.path.startswith("semantic.")
            if (spec.path, method if own else "") in seen:
                continue
            seen.add((spec.path, method if own else ""))
            for tokens, invalid in probe_values(spec):
                flag = flag_name(spec.path)
                extra = ["--method", method] if own else []
                cases.append((flag, [*extra, flag, *tokens], invalid))
    return cases


ZERO_IS_VALID = re.compile(
    r"(weight|seed|^--recon\.lr-(grid|net)|^--semantic\.lr-(grid|net|app|rgb)|joint-start|cse-start|novel-views|"
    r"semantic-components|clip-layers|balance-power|upsample-iters|occupancy-iters|purity|min-opacity|"
    r"weight-threshold|pitch-deg|cse-radius|fda-shift)"
)
"""Flags for which 0 means something (no weight, no delay, none of them): the fuzz must not flag 0."""


def test_fit_flag_fuzz(tmp_path: Path, tiny_scene_dir: Path, capsys):
    from ovs3d.cli.main import entrypoint, parse_command
    from ovs3d.utils.config import field_specs

    scene, out = tiny_scene_dir, tmp_path / "run"
    cases = fit_flag_cases(scene, out)
    assert len(cases) > 400
    before = snapshot(tmp_path, scene)
    base = ["fit", "--scene", str(scene), "--out", str(out)]
    unclean = []
    for flag, argv, invalid in cases:
        if not invalid:
            parse_command([*base, *argv])  # accepted, and nothing more is done here
            continue
        rc = entrypoint([*base, *argv])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        one = len(lines) == 1 and lines[0].startswith("ovs3d: error: ")
        named = one and (flag in lines[0] or flag.replace("--semantic.", "--") in lines[0] or "--method" in flag)
        if rc != 1 or not named or "Traceback" in err:
            unclean.append((argv, rc, err))
    assert not unclean, f"{len(unclean)} unclean: {unclean[:5]}"
    assert snapshot(tmp_path, scene) == before, "an invalid flag wrote files"

    # every numeric setting declares its range; 0 passes where it means something
    from ovs3d.cli.main import _fit_command
    from ovs3d.utils.config import probe_values

    for method in ("3dovs", "ovnerf", "lerf"):
        for spec in field_specs(_fit_command(method)(scene=scene, out=out)):
            probes = probe_values(spec)
            if probes and not spec.declared:
                assert spec.path == "method" or "Literal" in str(spec.type), f"{spec.path} declares no range"
    zero_ok = {flag for flag, argv, invalid in cases if argv[-1] == "0" and not invalid}
    zero_flagged = {flag for flag, argv, invalid in cases if argv[-1] == "0" and invalid}
    assert not {f for f in zero_flagged if ZERO_IS_VALID.search(f)}, "0 is refused where it is meaningful"
    assert {f for f in zero_ok if ZERO_IS_VALID.search(f)}


# --------------------------------------------------------------------------------------------------
# float flags take fractions as written in the docs; a bad one is one line


def test_float_flags_take_fractions(tiny_scene_dir: Path, tmp_path: Path, capsys):
    from ovs3d.cli.main import entrypoint, parse_command

    base = ["fit", "--scene", str(tiny_scene_dir), "--out", str(tmp_path / "run")]
    cmd = parse_command([*base, "--recon.distortion-from", "1/3", "--features.mask-downscale", "3/2"])
    assert cmd.recon.distortion_from == 1 / 3 and cmd.features.mask_downscale == 1.5
    cmd = parse_command([*base, "--method", "lerf", "--lerf.grid-levels", "1/4", "1", "--lerf.max-query-scale", "1/2"])
    assert cmd.semantic.grid_levels == (0.25, 1.0) and cmd.semantic.max_query_scale == 0.5
    assert entrypoint([*base, "--recon.distortion-from", "1/0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "ovs3d: error: --recon.distortion-from must be a number or a fraction (got '1/0')"
    assert not (tmp_path / "run").exists()
