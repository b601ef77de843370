"""The one progress reporter of every stage (:mod:`ovs3d.utils.console`): plain lines without a terminal
(start, every ~10 % or 30 s with rate and ETA, end), the estimate before long work, sub-steps of weighted
items, quiet, and stale temporary files of killed writers (:mod:`ovs3d.utils.files`)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ovs3d.utils import console
from ovs3d.utils.console import Work, advance, cost_hint, format_duration, format_rate, progress, stage, task


class Clock:
    """A stand-in for the ``time`` module of the console: ``perf_counter`` moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now

    def strftime(self, fmt: str) -> str:
        return time.strftime(fmt)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """Reports on (the test session is quiet), no terminal, a clock the test moves."""
    c = Clock()
    monkeypatch.setattr(console, "time", c)
    monkeypatch.setattr(console, "on_terminal", lambda: False)
    console.set_quiet(False)
    yield c
    console.set_quiet(True)


def lines(capsys) -> list[str]:
    """The report lines written to stderr, timestamps removed."""
    err = capsys.readouterr().err
    return [re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", "", line) for line in err.splitlines() if line.strip()]


def test_lines_at_start_every_tenth_and_end(clock: Clock, capsys):
    for _ in progress(range(20), desc="rendering views", work=Work("views", device="cpu")):
        clock.now += 1.0
    out = lines(capsys)
    assert out[0] == "rendering views: 20 views on cpu"
    assert out[1] == "rendering views: 2/20 views (10%), 1.0 views/s, ETA 18 s"
    assert out[-1] == "rendering views: done in 20 s (20 views, 1.0 views/s)"
    assert len(out) == 2 + 9  # 10 %, 20 %, ..., 90 %: the end line says 100 %


def test_a_short_loop_says_only_where_it_starts_and_ends(clock: Clock, capsys):
    for _ in progress(range(6), desc="caching rays", work=Work("views")):
        clock.now += 0.01
    assert lines(capsys) == ["caching rays: 6 views", "caching rays: done in 0.1 s (6 views, 100 views/s)"]


def test_a_line_every_30_s_when_tenths_are_slow(clock: Clock, capsys):
    with task("mapping", None, work=Work("photos")) as t:
        for _ in range(4):
            clock.now += 20.0
            t.advance(1)
    out = lines(capsys)
    assert out[0] == "mapping ..."
    assert out[1:] == [
        "mapping: 2 photos, 20 s per photo",
        "mapping: 4 photos, 20 s per photo",
        "mapping: done in 1 min 20 s (4 photos, 20 s per photo)",
    ]


def test_estimate_before_long_work_names_the_settings(clock: Clock, capsys):
    hint = cost_hint("cpu", "--features.views-fraction 0.5 (half the views)")
    work = Work("crops", [3000] * 8, "8 views × 3,000 crops", "cpu", hint)
    for _ in progress(range(8), desc="pixel CLIP features", work=work):
        for _ in range(3000 // 60):
            clock.now += 30.0  # a batch of 60 crops every 30 s: 2 crops/s
            advance(60)
        if clock.now > 1000 + 120:
            break
    out = lines(capsys)
    estimate = [line for line in out if "~" in line]
    assert estimate == [
        "pixel CLIP features: 8 views × 3,000 crops, ~3 h 20 min on cpu at 2.0 crops/s; a GPU or "
        "--features.views-fraction 0.5 (half the views) would cut it"
    ]
    assert out.index(estimate[0]) == 1  # right after the start line: after the first batch
    assert out[-1].startswith("pixel CLIP features: stopped at 3,000/24,000 crops after")


def test_estimate_leaves_the_warm_up_out(clock: Clock, capsys):
    it = progress(range(1000), desc="reconstruction", work=Work("iterations"))
    next(it)
    clock.now += 5.0  # the first iteration loads the rays
    for _ in it:
        clock.now += 0.1
    out = [line for line in lines(capsys) if "~" in line]
    assert out == ["reconstruction: 1,000 iterations, ~1 min 45 s at 10 iterations/s"]


def test_no_estimate_for_short_work(clock: Clock, capsys):
    for _ in progress(range(50), desc="evaluating views", work=Work("views")):
        clock.now += 1.0
    assert not [line for line in lines(capsys) if "~" in line]


def test_sub_steps_move_a_weighted_item_on_but_not_past_it(clock: Clock):
    seen = []
    with console.task("outer", 10) as outer:
        for _ in progress(range(2), desc="crops", work=Work("crops", [100, 50])):
            advance(30)
            advance(500)  # capped at the item's end
            seen.append(console._OPEN[-1].done)
        advance(5)  # the outer loop has no weights: ignored
        assert outer.done == 0
    assert seen == [100, 150]


def test_resumed_loop_counts_from_where_it_was(clock: Clock, capsys):
    for _ in progress(range(60, 100), desc="semantic", total=100, initial=60, work=Work("iterations")):
        clock.now += 1.0
    out = lines(capsys)
    assert out[0] == "semantic: 100 iterations, resuming at 60/100 iterations"
    assert out[1].startswith("semantic: 70/100 iterations (70%)")
    assert out[-1] == "semantic: done in 40 s (40 iterations, 1.0 iterations/s)"


def test_interrupted_loop_says_where_it_stopped(clock: Clock, capsys):
    with pytest.raises(KeyboardInterrupt):
        for i in progress(range(10), desc="fusing views", work=Work("views")):
            clock.now += 1.0
            if i == 3:
                raise KeyboardInterrupt
    assert lines(capsys)[-1] == "fusing views: stopped at 3/10 views after 4.0 s"


def test_stage_lines(clock: Clock, capsys):
    with stage("matching", "exhaustive, 45 pairs"):
        clock.now += 75.0
    with pytest.raises(RuntimeError), stage("mapping"):
        raise RuntimeError
    assert lines(capsys) == [
        "matching: exhaustive, 45 pairs ...",
        "matching: done in 1 min 15 s",
        "mapping ...",
        "mapping: stopped after 0.0 s",
    ]


def test_quiet_writes_nothing(clock: Clock, capsys):
    console.set_quiet(True)
    for _ in progress(range(5), desc="x", work=Work("views")):
        clock.now += 100.0
    console.note("a note")
    with stage("a stage"):
        pass
    assert capsys.readouterr().err == ""


def test_nested_bars_on_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(console, "on_terminal", lambda: True)
    console.set_quiet(False)
    try:
        total = 0
        for _ in progress(range(3), desc="outer"):
            for j in progress(range(4), desc="inner"):
                total += j
        console.note("above the bars")
    finally:
        console.set_quiet(True)
    assert total == 18 and console._BARS.progress is None


def test_formatting():
    assert [format_duration(s) for s in (0.42, 12.4, 155, 13200, 7200)] == [
        "0.4 s",
        "12 s",
        "2 min 35 s",
        "3 h 40 min",
        "2 h",
    ]
    assert format_rate(1.9, "crops") == "1.9 crops/s"
    assert format_rate(1234.0, "iterations") == "1,234 iterations/s"
    assert format_rate(0.04, "views") == "25 s per view"
    assert cost_hint("cuda:0", "--a 1") == "--a 1 would cut it"
    assert cost_hint("cpu", "--a 1", "--b 2") == "a GPU, --a 1 or --b 2 would cut it"
    assert cost_hint("cuda") == ""


def test_progress_overhead_is_negligible(clock: Clock, monkeypatch):
    """The reporter costs a few microseconds per item (a training iteration takes milliseconds)."""
    monkeypatch.setattr(console, "time", time)
    n = 100_000
    t0 = time.perf_counter()
    for _ in range(n):
        pass
    bare = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in progress(range(n), desc="overhead", work=Work("items")):
        pass
    reported = time.perf_counter() - t0
    assert (reported - bare) / n < 50e-6


# --------------------------------------------------------------------------------------------------
# temporary files of writers killed outright


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path: Path):
    from ovs3d.utils.files import HOST, atomic_path, remove_stale_temps

    with atomic_path(tmp_path / "checkpoints" / "semantic.pt") as tmp:
        mine = tmp.name
        tmp.write_bytes(b"x")
    assert mine.startswith(".semantic.pt.tmp-") and not (tmp_path / "checkpoints" / mine).exists()
    folder = tmp_path / "checkpoints"
    dead = folder / f".semantic.pt.tmp-{dead_pid()}@{HOST}-abcd1234.pt"
    alive = folder / f".reconstruction.pt.tmp-{__import__('os').getpid()}@{HOST}-abcd1234.pt"
    other = folder / f".semantic.pt.tmp-{dead_pid()}@another-host-abcd1234.pt"
    plain = folder / ".notes.tmp-keep"
    for p in (dead, alive, other, plain):
        p.write_bytes(b"partial")
    assert remove_stale_temps(tmp_path) == 0  # not below the folder unless asked
    assert remove_stale_temps(tmp_path, recursive=True) == 1
    assert not dead.exists() and alive.exists() and other.exists() and plain.exists()


def test_stale_temporary_folders_go_with_their_contents_and_only_matching_names(tmp_path):
    import os
    import subprocess
    import sys

    from ovs3d.utils.files import HOST, remove_stale_temps

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f".scene.tmp-{dead.pid}@{HOST}-ab12"  # a killed scene write
    (left / "images").mkdir(parents=True)
    (left / "images" / f".x.png.tmp-{dead.pid}@{HOST}-cd34").write_text("partial")  # inside it: goes with it
    other = tmp_path / f".other.tmp-{dead.pid}@{HOST}-ef56"
    other.mkdir()
    alive = tmp_path / f".scene.tmp-{os.getpid()}@{HOST}-gh78"  # a running writer's: kept
    alive.mkdir()
    assert remove_stale_temps(tmp_path, recursive=True, pattern=".scene.tmp-*") == 1
    assert not left.exists() and other.exists() and alive.exists()
    assert remove_stale_temps(tmp_path) == 1 and not other.exists() and alive.exists()
