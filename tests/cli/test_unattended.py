"""Running unattended (issue 14): ``ovs3d fit ... > fit.log 2>&1`` tells where it is, estimates long work, and
SIGTERM (what schedulers send at a time limit) stops it like Ctrl-C: exit 143, one line on how to resume,
checkpoints and finished cache views kept, no temporary files; the same command then resumes and finishes.

Every run here is a real process writing to a real file, as under ``nohup`` or a cluster job.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_subprocess import SIGNAL_DRIVER, cli_env, signal_env
from tiny_fits import TINY_RECON, TINY_SEMANTIC

# ``ovs3d`` with the reporter's thresholds at 0: a tiny fit gets the estimate line and a line at every 10 %
# (what a long fit shows) in seconds.
EAGER_DRIVER = """
import sys
import ovs3d.utils.console as console
console.LONG_STAGE_S = console.ESTIMATE_SAMPLE_S = console.REPORT_GAP_S = 0.0
from ovs3d.cli.main import entrypoint
sys.exit(entrypoint(sys.argv[1:]))
"""

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


def run_logged(cmd: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> int:
    """``cmd > log 2>&1`` in ``cwd``; its exit code."""
    with open(log, "w") as f:
        return subprocess.run(
            cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=env or cli_env(), timeout=600
        ).returncode


def ovs3d_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "ovs3d", *map(str, args)]


def driver_cmd(driver: str, *args: object) -> list[str]:
    return [sys.executable, "-c", driver, *map(str, args)]


def temporaries(*folders: Path) -> list[Path]:
    """Temporary files and folders of writers under ``folders`` (atomic writes, cache entries)."""
    return [p for f in folders for p in f.rglob("*") if ".tmp-" in p.name]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder with ``scene``: a 64x48, 6-view tabletop scene."""
    from ovs3d.scenegen import make_scene

    work = tmp_path_factory.mktemp("unattended")
    make_scene("tabletop", 0, work / "scene", width=64, height=48, n_views=6)
    return work


def fresh_scene(work: Path, name: str) -> Path:
    """A copy of the scene without its feature cache (so features are computed, not read)."""
    return Path(shutil.copytree(work / "scene", work / name, ignore=shutil.ignore_patterns(".ovs3d_cache")))


def test_fit_to_a_log_file_reports_stages_progress_and_an_estimate(work: Path):
    scene = fresh_scene(work, "scene_log")
    log = work / "fit.log"
    rc = run_logged(
        driver_cmd(EAGER_DRIVER, "fit", "--scene", scene, "--out", "run_log", *TINY_RECON, *TINY_SEMANTIC), work, log
    )
    text = log.read_text()
    assert rc == 0, text
    lines = text.splitlines()
    stamped = [STAMP.sub("", line) for line in lines if STAMP.match(line)]
    assert len(stamped) >= 20, text
    starts = [
        "fit 3dovs: 6 training views",
        "reconstruction: 12 iterations × 64 rays on cpu",
        "pixel CLIP features: 6 views × ",
        "DINO features: 6 views at 320×240",  # enlarged: DINO keeps 30 cells across (dino_min_cells)
        "semantic (3dovs): 6 iterations × 256 rays on cpu",
    ]
    for start in starts:
        assert any(line.startswith(start) for line in stamped), f"no {start!r} line:\n{text}"
    for desc in ("reconstruction", "pixel CLIP features", "DINO features", "semantic (3dovs)"):
        assert any(re.match(rf"{re.escape(desc)}: done in [\d.]+ (s|min)", line) for line in stamped), desc
    progress = [line for line in stamped if re.match(r"reconstruction: \d+/12 iterations \(\d+%\), .*/s, ETA ", line)]
    assert len(progress) >= 5, text
    crops = [line for line in stamped if re.match(r"pixel CLIP features: [\d,]+/[\d,]+ crops \(\d+%\)", line)]
    assert crops, "the crops inside each view count in the progress of pixel CLIP features"
    estimate = [line for line in stamped if line.startswith("pixel CLIP features: 6 views × ") and ", ~" in line]
    assert estimate and "crops/s; a GPU" in estimate[0] and "--features.pixel-clip.stride-divisor 2" in estimate[0]
    assert lines[-1].startswith("fit done in "), text  # the result, on stdout


def test_quiet_and_log_level(work: Path, capsys, monkeypatch):
    from ovs3d.cli.main import entrypoint
    from ovs3d.utils import console

    args = ["fit", "--scene", "scene", "--out", "run_quiet", "--method", "rgb", *TINY_RECON]
    assert run_logged(ovs3d_cmd(*args, "--log-level", "info"), work, work / "info.log") == 0
    info = (work / "info.log").read_text()
    assert " INFO ovs3d." in info and "reconstruction: done in " in info

    monkeypatch.chdir(work)  # in-process from here: the run is finished, these only resume it
    console.set_quiet(False)
    try:
        capsys.readouterr()
        assert entrypoint(args) == 0
        assert "reconstruction: already trained (12 iterations" in capsys.readouterr().err
        assert entrypoint(["--quiet", *args]) == 0
        out, err = capsys.readouterr()
        assert err == "" and out.startswith("fit done in ")
        assert not console.is_quiet(), "--quiet lasts as long as its command"
        assert entrypoint([*args, "--log-level", "loud"]) == 1
        assert capsys.readouterr().err.startswith("ovs3d: error: --log-level must be one of debug, info, warning")
    finally:
        console.set_quiet(True)


def test_sigterm_during_a_fit_then_the_same_command_resumes(work: Path):
    from ovs3d.utils.files import HOST, load_checkpoint

    args = ["fit", "--scene", "scene", "--out", "run_term", "--method", "rgb", *TINY_RECON]
    args += ["--recon.n-iters", "60", "--recon.checkpoint-every", "2"]
    ckpt = work / "run_term" / "checkpoints" / "reconstruction.pt"
    log = work / "term.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(ovs3d_cmd(*args), cwd=work, stdout=f, stderr=subprocess.STDOUT, env=cli_env())
        deadline = time.monotonic() + 300
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
    text = log.read_text()
    assert rc == 143, text
    last = text.strip().splitlines()[-1]
    assert last.startswith("ovs3d: stopped by SIGTERM; finished checkpoints and cached views are kept"), text
    assert last.endswith("ovs3d fit --scene scene --out run_term --method rgb " + " ".join(args[7:])), last
    assert "Traceback" not in text
    assert re.search(r"reconstruction: interrupted; the next run resumes from the checkpoint of iteration \d+", text)
    step = int(load_checkpoint(ckpt, kind="reconstruction")["step"])  # intact
    assert 2 <= step < 60
    assert not temporaries(work / "run_term", work / "scene"), "SIGTERM left temporary files"

    # a temporary checkpoint a hard kill left (a process of this machine that is gone) goes on the next run
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = ckpt.parent / f".reconstruction.pt.tmp-{dead.pid}@{HOST}-abcd1234.pt"
    stale.write_bytes(b"half a checkpoint")

    assert run_logged(ovs3d_cmd(*args), work, log) == 0, log.read_text()
    text = log.read_text()
    assert f"reconstruction: resuming at iteration {step}" in text
    assert "removed 1 temporary file(s) an earlier run killed outright left" in text and not stale.exists()
    assert load_checkpoint(ckpt, kind="reconstruction")["step"] == 60


def test_sigterm_while_features_are_cached_keeps_the_finished_views(work: Path):
    scene = fresh_scene(work, "scene_term")
    log = work / "features.log"
    env = signal_env("SIGTERM", "cache", 2)
    rc = run_logged(driver_cmd(SIGNAL_DRIVER, "features", "--scene", scene), work, log, env)
    text = log.read_text()
    assert rc == 143, text
    assert "pixel CLIP features: stopped at " in text and "the 2 finished view(s) are kept" in text
    assert text.strip().splitlines()[-1].startswith("ovs3d: stopped by SIGTERM")
    cache = scene / ".ovs3d_cache"
    assert not temporaries(cache) and [p.name[:9] for p in (cache / "pixel_clip").iterdir()] == [".partial-"]

    assert run_logged(ovs3d_cmd("features", "--scene", scene), work, log) == 0
    text = log.read_text()
    assert "pixel CLIP features: 2 of 6 views from an interrupted run are reused" in text, text
    assert re.search(r"pixel CLIP features: 6 views × [\d,]+ crops on cpu, resuming at ", text), text
    entries = list((cache / "pixel_clip").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".") and not temporaries(cache)
    assert not (entries[0] / "partial.json").exists()

    from ovs3d.foundation.cache import FeatureCache

    meta = FeatureCache(cache).entries("pixel_clip")[0] / "meta.json"
    assert meta.is_file()


def test_cache_keeps_finished_views_of_interrupted_and_killed_writes(tmp_path: Path):
    """In-process: Ctrl-C or SIGTERM (KeyboardInterrupt) keeps the finished views; so does a writer killed
    outright (its temporary folder, once its process is gone); the next computation only adds the rest."""
    import numpy as np

    from ovs3d.foundation.cache import FeatureCache
    from ovs3d.utils.files import HOST

    images = tmp_path / "images"
    images.mkdir()
    views = []
    for i in range(5):
        (images / f"{i:02d}.png").write_bytes(bytes([i]) * 10)
        views.append((f"{i:02d}", images / f"{i:02d}.png"))
    calls: list[int] = []

    def compute(i: int, stop_at: int | None = None) -> np.ndarray:
        if i == stop_at:
            raise KeyboardInterrupt
        calls.append(i)
        return np.full((4, 3), i, dtype=np.float32)

    cache = FeatureCache(tmp_path / "cache")
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_compute("dino", "m", {}, views, lambda i: compute(i, stop_at=2))
    folder = tmp_path / "cache" / "dino"
    (partial,) = folder.iterdir()
    assert partial.name.startswith(".partial-") and calls == [0, 1]

    # as a writer killed outright leaves it: a temporary folder naming a process that is gone
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    key = partial.name[len(".partial-") :]
    partial.rename(folder / f".tmp-{key}-{dead.pid}@{HOST}-abcd1234")
    calls.clear()
    entry = cache.get_or_compute("dino", "m", {}, views, compute)
    assert calls == [2, 3, 4] and [e.name for e in folder.iterdir()] == [key]
    assert [float(entry[i][0, 0]) for i in range(5)] == [0, 1, 2, 3, 4]
    assert entry.verify(hash_files=True, repair=False) == []
