"""Settings validation of ``ovs3d fit`` (issue 13): the fuzz counts and what validation costs at start-up.

* **fuzz**: every numeric and choice setting of ``fit`` (each method's ``--semantic.*`` once), enumerated
  from the config dataclasses (:func:`ovs3d.utils.config.field_specs`), tried with 0, -1, a huge number and
  a wrong type (:func:`ovs3d.utils.config.probe_values`). Each invalid value runs the CLI entry point
  in-process and counts as *clean* when it exits 1 with exactly one ``ovs3d: error:`` line naming the flag,
  no traceback, and nothing was written; each valid value must parse and pass validation.
* **time**: the median over ``--repeats`` runs of (a) the validation call alone (:func:`check_config` on a
  parsed ``fit`` command, backend specs and paths included; its first call in a process is also reported:
  it resolves the config classes' type hints once), (b) parsing ``fit`` with and without it (the
  difference is what validation adds before ``fit`` starts), (c) ``fit()`` up to where it would load the
  scene, with and without its own check; what validation adds to a ``fit`` process is the first (cold)
  call plus (c)'s difference; and (d) the wall time of a refused ``ovs3d fit`` process
  (Python and torch imports included), for scale.

Appends one JSON line to ``bench/results/issue13-validation.jsonl`` and prints a summary.

Usage::

    python bench/bench_validation.py [--repeats 50]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).parent
OUT = ROOT / "out" / "validation"
RESULTS = ROOT / "results" / "issue13-validation.jsonl"


def fit_cases(scene: Path, out: Path) -> list[tuple[str, list[str], bool]]:
    """``(flag, argv tail, invalid)`` for every numeric and choice setting of ``fit``."""
    from ovs3d.cli.main import _fit_command
    from ovs3d.methods.registry import method_names
    from ovs3d.utils.config import field_specs, flag_name, probe_values

    cases, seen = [], set()
    for method in method_names():
        for spec in field_specs(_fit_command(method)(scene=scene, out=out)):
            key = (spec.path, method if spec.path.startswith("semantic.") else "")
            if key in seen:
                continue
            seen.add(key)
            extra = ["--method", method] if key[1] else []
            for tokens, invalid in probe_values(spec):
                cases.append((flag_name(spec.path), [*extra, flag_name(spec.path), *tokens], invalid))
    return cases


def listing(*folders: Path) -> set[tuple[str, int]]:
    return {(str(p), p.stat().st_mtime_ns) for f in folders for p in [f, *f.rglob("*")]}


def run_fuzz(scene: Path, work: Path) -> dict:
    from ovs3d.cli.main import entrypoint, parse_command

    out = work / "run"
    base = ["fit", "--scene", str(scene), "--out", str(out)]
    cases = fit_cases(scene, out)
    before = listing(scene, work)
    clean, accepted, unclean = 0, 0, []
    t0 = time.perf_counter()
    for flag, argv, invalid in cases:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if not invalid:
                try:
                    parse_command([*base, *argv])
                    accepted += 1
                except Exception as e:  # noqa: BLE001 - counted, shown below
                    unclean.append((argv, f"valid value refused: {e}"))
                continue
            try:
                rc = entrypoint([*base, *argv])
            except BaseException as e:  # noqa: BLE001 - a crash or tyro's exit counts as unclean
                rc = f"raised {type(e).__name__}"
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        ok = rc == 1 and len(lines) == 1 and lines[0].startswith("ovs3d: error: ")
        ok = ok and (flag in lines[0] or flag == "--method") and "Traceback" not in err.getvalue()
        if ok:
            clean += 1
        else:
            unclean.append((argv, lines))
    seconds = time.perf_counter() - t0
    invalid = sum(1 for *_, bad in cases if bad)
    for argv, what in unclean[:10]:
        print("UNCLEAN", argv, what)
    return {
        "flags": len({flag for flag, *_ in cases}),
        "cases": len(cases),
        "invalid_cases": invalid,
        "clean": clean,
        "valid_cases": len(cases) - invalid,
        "valid_accepted": accepted,
        "nothing_written": listing(scene, work) == before,
        "fuzz_seconds": round(seconds, 2),
    }


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1e3, 3)


class _Stop(Exception):
    pass


def run_timing(scene: Path, work: Path, repeats: int) -> dict:
    import ovs3d.cli.main as cli
    import ovs3d.run as run_mod
    from ovs3d.utils.config import check_config, flag_name

    argv = ["fit", "--scene", str(scene), "--out", str(work / "run")]
    with mock.patch.object(cli, "check_config", lambda *a, **k: None):
        cmd = cli.parse_command(argv)  # imports and tyro warmed up, validation not yet run
    t0 = time.perf_counter()
    check_config(cmd, name=flag_name)  # cold: resolves every config class's type hints once
    check_first_ms = round((time.perf_counter() - t0) * 1e3, 3)
    check_ms = median_ms(lambda: check_config(cmd, name=flag_name), repeats * 4)
    parse_ms = median_ms(lambda: cli.parse_command(argv), repeats)
    with mock.patch.object(cli, "check_config", lambda *a, **k: None):
        parse_unchecked_ms = median_ms(lambda: cli.parse_command(argv), repeats)

    cfg = run_mod.FitConfig(**{f: getattr(cmd, f) for f in run_mod.FitConfig.__dataclass_fields__})

    def fit_until_work() -> None:
        try:
            run_mod.fit(cfg)
        except _Stop:
            pass

    with mock.patch.object(run_mod, "_load_scene", side_effect=_Stop), contextlib.redirect_stderr(io.StringIO()):
        fit_start_ms = median_ms(fit_until_work, repeats)
        with mock.patch.object(run_mod, "check_config", lambda *a, **k: None):
            fit_start_unchecked_ms = median_ms(fit_until_work, repeats)

    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    walls = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ovs3d", *argv, "--recon.n-iters", "0"], capture_output=True, env=env)
        walls.append(time.perf_counter() - t0)
    return {
        "check_first_ms": check_first_ms,
        "check_ms": check_ms,
        "parse_ms": parse_ms,
        "parse_unchecked_ms": parse_unchecked_ms,
        "parse_added_ms": round(parse_ms - parse_unchecked_ms, 3),
        "fit_start_ms": fit_start_ms,
        "fit_start_unchecked_ms": fit_start_unchecked_ms,
        "fit_start_added_ms": round(fit_start_ms - fit_start_unchecked_ms, 3),
        # a `fit` process validates twice: cold in parse_command, warm again in fit()
        "added_ms": round(check_first_ms + fit_start_ms - fit_start_unchecked_ms, 3),
        "refused_process_wall_s": round(statistics.median(walls), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()

    from ovs3d.scenegen import make_scene
    from ovs3d.utils.console import set_quiet

    set_quiet(True)
    scene = OUT / "scene"
    if not (scene / "poses_bounds.npy").exists():
        make_scene("tabletop", 0, scene, width=64, height=48, n_views=6)
    work = OUT / "work"
    work.mkdir(parents=True, exist_ok=True)
    timing = run_timing(scene, work, args.repeats)  # first: its first check_config call is cold
    fuzz = run_fuzz(scene, work)
    import torch
    import tyro

    record = {
        "bench": "validation",
        "issue": 13,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "tyro": tyro.__version__,
        "repeats": args.repeats,
        **fuzz,
        **timing,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(
        f"fuzz: {fuzz['flags']} flags, {fuzz['invalid_cases']} invalid values tried, {fuzz['clean']} clean "
        f"(one line, exit 1, no traceback), nothing written: {fuzz['nothing_written']}; "
        f"{fuzz['valid_accepted']}/{fuzz['valid_cases']} valid values accepted ({fuzz['fuzz_seconds']} s)"
    )
    print(
        f"validation alone: {timing['check_first_ms']} ms first call, {timing['check_ms']} ms after; "
        f"parse fit {timing['parse_ms']} ms vs "
        f"{timing['parse_unchecked_ms']} ms unchecked (+{timing['parse_added_ms']} ms); fit() to its start "
        f"{timing['fit_start_ms']} ms vs {timing['fit_start_unchecked_ms']} ms (+{timing['fit_start_added_ms']} ms); "
        f"added in all: {timing['added_ms']} ms (target < 50); a refused `ovs3d fit` process: "
        f"{timing['refused_process_wall_s']} s wall"
    )
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
