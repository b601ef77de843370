"""``ovs3d batch`` on a local Ray against the same fits one after another, and a worker killed mid-fit (issue 15).

Scenes: ``--n-scenes`` tabletop scenes (seeds 0, 1, ...) at 96x72, 12 views, 2 annotated, in
``bench/out/batch/scenes``; methods ``3dovs`` and ``ovnerf``; a short schedule for every fit (``FIT`` below),
the same in every mode. Three modes, each in its own folder with its own feature cache (``--cache-dir``), so
none reads what another computed:

* ``sequential``: the batch's own commands (``ovs3d fit`` of the scene's reconstruction, then each method's
  ``ovs3d fit --recon-from`` and ``ovs3d eval``), run one after another as separate processes with the default
  torch threads (all cores): what a user without ``batch`` types. Reported: the wall time, and the sum of the
  commands' own times (``RUN/logs/commands.jsonl``, without process start-up).
* ``sequential-1t``: the same with one torch thread per command (``OMP_NUM_THREADS=1``), the per-fit setting
  the batch uses: the batch's speed-up over it is what running fits side by side brings, apart from how well one
  fit uses both cores.
* ``batch``: ``ovs3d batch --cpus-per-fit 1`` (local Ray, one torch thread per fit). Reported: the wall
  time; the sum of the tasks' own fit + eval times (``RESULTS/batch.json``); the overhead, i.e. the slot-seconds
  not spent inside a task, ``slots x wall - sum of task times``, over the sum of task times; and its parts: the
  time from the command's start to its first task's start (Ray start-up and imports) and from the last
  task's end to the command's exit (tables, report, Ray shut-down); and the wall time over the makespan of
  the same task times scheduled greedily on the same slots with the same dependencies (what the batch would
  take if Ray cost nothing: the overhead Ray adds, apart from the idle slots the work's shape leaves).
* ``kill``: the same batch; once the ``--kill-task`` run has logged ``--kill-step`` semantic steps its worker
  process is SIGKILLed. Reported: whether every cell is filled, the killed task's attempts, and whether its
  metrics equal the uninterrupted ``batch`` mode's.

Results are appended to ``bench/results/issue15-batch.jsonl`` and printed as markdown.

Usage::

    python bench/bench_batch.py                    # all three modes (about 15 min on 2 idle cores)
    python bench/bench_batch.py --modes batch kill
    python bench/bench_batch.py --schedule defaults --modes sequential batch   # the library's CPU defaults
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "out" / "batch"
RESULTS = ROOT / "results" / "issue15-batch.jsonl"
METHODS = ["3dovs", "ovnerf"]
FIT = [
    "--recon.n-iters", "150", "--recon.batch-size", "1024",
    "--recon.init-voxels", "32768", "--recon.final-voxels", "373248",
    "--recon.upsample-iters", "30", "60", "90", "--recon.occupancy-iters", "50", "100",
    "--recon.checkpoint-every", "50",
    "--semantic.n-iters", "200", "--semantic.joint-start", "100", "--semantic.batch-size", "512",
    "--semantic.patch-cells", "6", "--semantic.checkpoint-every", "50",
]  # fmt: skip
SCENE = {"width": 96, "height": 72, "n_views": 12, "n_annotated": 2}
OVS3D = [sys.executable, "-m", "ovs3d"]


def make_scenes(n: int) -> list[Path]:
    from ovs3d.scenegen import make_scene

    out = []
    for seed in range(n):
        path = ROOT / "out" / "batch" / "scenes" / f"tabletop{seed}"
        if not (path / "poses_bounds.npy").is_file():
            make_scene("tabletop", seed, path, **SCENE)
        out.append(path)
    return out


SCHEDULES = {"short": FIT, "defaults": ["--semantic.checkpoint-every", "100"]}
"""Fit flags of the two schedules: ``short`` (above: fits of ~10 s on this CPU) and ``defaults`` (the library's
CPU-sized defaults, a checkpoint every 100 semantic steps)."""
_SCHEDULE = "short"


def _fit_args(mode: str) -> list[str]:
    return [*SCHEDULES[_SCHEDULE], "--cache-dir", str(OUT / mode / "cache")]


def run_sequential(scenes: list[Path], threads: int | None = None) -> dict:
    from ovs3d.batch import plan_batch
    from ovs3d.cli.main import _fit_config

    mode = "sequential" if threads is None else f"sequential-{threads}t"
    mode_dir = OUT / mode
    shutil.rmtree(mode_dir, ignore_errors=True)
    tasks = plan_batch(scenes, METHODS, [], mode_dir, _fit_config, fit_args=_fit_args(mode))
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads, as the batch gives each fit
    t0 = time.perf_counter()
    for t in tasks:
        cmds = [shlex.split(t.command)[1:]]
        if t.evaluate:
            cmds.append(["eval", "--run", str(t.run), "--protocol", t.protocol])
        for argv in cmds:
            subprocess.run([*OVS3D, *argv, "--quiet"], check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    own = 0.0
    for t in tasks:
        for line in (t.run / "logs" / "commands.jsonl").read_text().splitlines():
            own += json.loads(line)["seconds"]
    metrics = {t.key: json.loads((t.run / "eval" / "metrics.json").read_text()) for t in tasks if t.evaluate}
    return {
        "mode": mode,
        "wall_s": wall,
        "commands_own_s": own,
        "n_commands": sum(1 + t.evaluate for t in tasks),
        "miou": {k: m["miou"] for k, m in metrics.items()},
    }


def _batch_cmd(scenes: list[Path], mode: str) -> list[str]:
    out = OUT / mode
    return [*OVS3D, "batch", "--out", str(out), "--scenes", *map(str, scenes), "--methods", *METHODS,
            "--cpus-per-fit", "1", "--", *_fit_args(mode)]  # fmt: skip


def _summarise_batch(mode: str, wall: float, t_start: float) -> dict:
    out = OUT / mode
    data = json.loads((out / "batch.json").read_text())
    tasks = data["tasks"]
    own = sum(t.get("fit_s", 0.0) + t.get("eval_s", 0.0) for t in tasks)
    status = [json.loads(p.read_text()) for p in sorted((out / "status").glob("*.json"))]
    first_start = min(s["started"] for s in status if "started" in s) if any("started" in s for s in status) else None
    last_end = max(s.get("ended", 0.0) for s in status)
    slots = 2
    ideal = list_schedule(tasks, slots)
    return {
        "mode": mode,
        "wall_s": wall,
        "tasks_own_s": own,
        "n_tasks": len(tasks),
        "slots": slots,
        "overhead": (slots * wall - own) / own,
        "scheduled_s": ideal,
        "overhead_vs_schedule": wall / ideal - 1.0,
        "startup_s": (first_start - t_start) if first_start else None,
        "teardown_s": t_start + wall - last_end,
        "states": {t["key"]: t["state"] for t in tasks},
        "attempts": {t["key"]: t.get("attempts") for t in tasks},
        "miou": {t["key"]: (t.get("metrics") or {}).get("miou") for t in tasks if t.get("metrics")},
        "metrics": {t["key"]: t.get("metrics") for t in tasks},
    }


def list_schedule(tasks: list[dict], slots: int) -> float:
    """Makespan of the tasks' own times on ``slots`` slots, each task started as soon as a slot is free and the
    reconstruction it needs has finished, in the batch's order (the best any scheduler does greedily): the
    wall time the batch would take if Ray cost nothing."""
    durations = {t["key"]: t.get("fit_s", 0.0) + t.get("eval_s", 0.0) for t in tasks}
    needs = {t["key"]: ("/".join([t["key"].split("/")[0], "rgb"]) if not t["key"].endswith("/rgb") else None)
             for t in tasks}  # fmt: skip
    free = [0.0] * slots
    end: dict[str, float] = {}
    todo = [t["key"] for t in tasks]
    while todo:
        ready = [k for k in todo if needs[k] is None or needs[k] in end]
        # the ready task that can start first
        k = min(ready, key=lambda k: max(min(free), end.get(needs[k], 0.0) if needs[k] else 0.0))
        slot = min(range(slots), key=lambda i: free[i])
        start = max(free[slot], end.get(needs[k], 0.0) if needs[k] else 0.0)
        end[k] = free[slot] = start + durations[k]
        todo.remove(k)
    return max(end.values())


def run_batch_mode(scenes: list[Path], mode: str = "batch") -> dict:
    shutil.rmtree(OUT / mode, ignore_errors=True)
    t_start = time.time()
    t0 = time.perf_counter()
    subprocess.run(_batch_cmd(scenes, mode), check=True, stdout=subprocess.DEVNULL)
    return _summarise_batch(mode, time.perf_counter() - t0, t_start)


def run_kill(scenes: list[Path], kill_task: str, kill_step: int) -> dict:
    mode = "kill"
    out = OUT / mode
    shutil.rmtree(out, ignore_errors=True)
    t_start = time.time()
    t0 = time.perf_counter()
    proc = subprocess.Popen(_batch_cmd(scenes, mode), stdout=subprocess.DEVNULL)
    status = out / "status" / (kill_task.replace("/", "__") + ".json")
    log = out / "runs" / kill_task / "logs" / "semantic.jsonl"
    killed = None
    while proc.poll() is None and killed is None:
        time.sleep(0.5)
        try:
            steps = [json.loads(x)["step"] for x in log.read_text().splitlines() if x.strip()]
            s = json.loads(status.read_text())
        except (OSError, json.JSONDecodeError, KeyError):
            continue
        if s.get("state") == "running" and steps and max(steps) >= kill_step:
            os.kill(int(s["pid"]), signal.SIGKILL)
            killed = {"pid": s["pid"], "at_step": max(steps), "after_s": time.perf_counter() - t0}
    proc.wait()
    row = _summarise_batch(mode, time.perf_counter() - t0, t_start)
    row["killed"] = killed
    row["kill_task"] = kill_task
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-scenes", type=int, default=4)
    ap.add_argument("--modes", nargs="+", default=["sequential", "batch", "kill"])
    ap.add_argument("--kill-task", default="tabletop1/3dovs")
    ap.add_argument("--kill-step", type=int, default=100)
    ap.add_argument("--no-save", action="store_true", help="do not append to the results file")
    ap.add_argument("--schedule", choices=sorted(SCHEDULES), default="short", help="fit flags (see SCHEDULES)")
    args = ap.parse_args()
    global OUT, _SCHEDULE
    _SCHEDULE = args.schedule
    if args.schedule != "short":
        OUT = OUT.parent / f"batch-{args.schedule}"
    scenes = make_scenes(args.n_scenes)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs"
    rows = []
    for mode in args.modes:
        if mode == "sequential":
            row = run_sequential(scenes)
        elif mode == "sequential-1t":
            row = run_sequential(scenes, threads=1)
        elif mode == "batch":
            row = run_batch_mode(scenes)
        else:
            row = run_kill(scenes, args.kill_task, args.kill_step)
        row.update(
            machine=machine, n_scenes=len(scenes), methods=METHODS, schedule=args.schedule,
            time=time.strftime("%Y-%m-%d %H:%M"),
        )  # fmt: skip
        rows.append(row)
        if not args.no_save:
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            with RESULTS.open("a") as f:
                f.write(json.dumps(row) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k not in ("metrics", "miou", "states", "attempts")}))
    by = {r["mode"]: r for r in rows}
    if "sequential" in by and "batch" in by:
        s, b = by["sequential"], by["batch"]
        print(f"\nspeed-up (sequential wall / batch wall): {s['wall_s'] / b['wall_s']:.2f}x")
        print(f"batch overhead (slot-seconds outside tasks / task seconds): {100 * b['overhead']:.1f} %")
        print(f"batch wall over the ideal schedule of its own task times: +{100 * b['overhead_vs_schedule']:.1f} %")
    if "sequential-1t" in by and "batch" in by:
        print(f"speed-up over one-thread sequential: {by['sequential-1t']['wall_s'] / by['batch']['wall_s']:.2f}x")
    if "kill" in by and "batch" in by:
        k, b = by["kill"], by["batch"]
        same = k["metrics"].get(args.kill_task) == b["metrics"].get(args.kill_task)
        filled = all(v in ("done",) for v in k["states"].values())
        print(f"kill: {k['killed']}; every cell filled: {filled}; attempts {k['attempts'].get(args.kill_task)}; "
              f"metrics equal to the uninterrupted batch: {same}")  # fmt: skip


if __name__ == "__main__":
    main()
