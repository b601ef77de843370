"""Many scenes at once: ``ovs3d batch`` runs one fit + eval per (scene, method, variant) as Ray tasks.

Layout of a batch folder::

    RESULTS/
      runs/<scene>/rgb/                 the scene's reconstruction (``fit --method rgb``), shared by its methods
      runs/<scene>/<method>[-<variant>]/ ordinary run folders (SPEC §4): ``fit --recon-from runs/<scene>/rgb``
      status/<task>.json                what each task is doing (state, attempt, host, pid, times)
      table.csv, table.md               scenes as columns, methods × metrics as rows, a mean column
      report.html                       the table and every run's evaluation overlays, one page

Each task is what a user would type (``ovs3d fit`` with the batch's flags, then ``ovs3d eval``), run in a Ray
worker process, so every run resumes on its own: a task that dies (a killed worker, a lost node) is submitted
again and continues from its run's last checkpoint; running the same batch again skips finished runs and
resumes the others; killing the driver loses nothing but the tasks' progress since their last checkpoint.
Ray is an optional dependency (``pip install 'ovs3d[batch]'``); a local Ray instance is started unless an
address is given. On a cluster, the scenes and ``RESULTS`` must be on a filesystem every node sees (the
tasks write the run folders themselves) and ovs3d must be installed on every node.

Variants (``--ablations NAME=FLAGS``) are extra ``fit`` flags; variants whose reconstruction settings agree
share one reconstruction per scene. The planning and the tables are plain functions; only :func:`run_batch`
needs Ray.
"""

from __future__ import annotations

import csv
import dataclasses
import glob as globlib
import io
import json
import logging
import os
import re
import shlex
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovs3d.errors import OVS3DError
from ovs3d.run import FitConfig, record_command, unfinished_stages
from ovs3d.utils.console import Work, emit, format_duration, note, task
from ovs3d.utils.files import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

RECON_METHOD = "rgb"
"""The method of the per-scene reconstruction runs (reconstruction only)."""
TABLE_METRICS: tuple[tuple[str, str], ...] = (
    ("miou", "mIoU"),
    ("accuracy", "accuracy"),
    ("psnr", "PSNR"),
    ("d_relevancy", "D_relevancy"),
    ("recall", "recall"),
)
"""Metrics of the tables (key in a task's result, row name); a metric no run of a row has is left out."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ---------------------------------------------------------------------------------------------------
# planning


@dataclass(frozen=True)
class BatchTask:
    """One fit (+ eval) of a batch.

    Attributes:
        key: ``<scene>/<run name>``: unique in the batch, the run's folder below ``RESULTS/runs``.
        scene: the scene's name (a column of the tables).
        row: the run name (``3dovs``, ``3dovs-no-fda``, ``rgb``): a row group of the tables.
        fit: the run's complete configuration (its ``out`` is the run folder).
        command: the ``ovs3d fit`` command line the task is equivalent to (recorded in the run's log).
        evaluate: whether to run ``ovs3d eval`` after the fit (not for a reconstruction only shared).
        protocol: the evaluation protocol (SPEC §5).
        needs: key of the task whose reconstruction this one starts from (``--recon-from``), if any.
    """

    key: str
    scene: str
    row: str
    fit: FitConfig
    command: str
    evaluate: bool = True
    protocol: str = "3dovs"
    needs: str | None = None

    @property
    def run(self) -> Path:
        """The run folder."""
        return Path(self.fit.out)


def parse_ablation(spec: str) -> tuple[str, list[str]]:
    """``NAME=FLAGS`` (``no-fda=--semantic.no-use-fda``) as its name and its ``fit`` flags.

    Raises:
        OVS3DError: the name is missing or not a plain folder name.
    """
    name, sep, flags = spec.partition("=")
    name = name.strip()
    if not sep or not _NAME.match(name):
        raise OVS3DError(
            f"--ablations {spec!r} is not NAME=FLAGS (a name of letters, digits, '-', '_' or '.', then the fit "
            "flags of the variant, e.g. no-fda='--semantic.no-use-fda')"
        )
    return name, shlex.split(flags)


def looks_like_scene(folder: Path) -> bool:
    """Whether ``folder`` holds a scene (SPEC §1: ``poses_bounds.npy`` or ``transforms.json``)."""
    return (folder / "poses_bounds.npy").is_file() or (folder / "transforms.json").is_file()


def resolve_scenes(scenes: Sequence[Path], scenes_glob: str | None) -> list[Path]:
    """The batch's scene folders: ``scenes`` as given, then the glob's matches that are scenes (sorted).

    Raises:
        OVS3DError: no scene, a given folder that is not a scene, or two scenes with one folder name.
    """
    out = []
    for s in scenes:
        path = Path(s)
        if not path.is_dir() or not looks_like_scene(path):
            raise OVS3DError(f"--scenes {s} is not a scene folder (no poses_bounds.npy or transforms.json)")
        out.append(path.resolve())
    if scenes_glob:
        matches = sorted(Path(p) for p in globlib.glob(os.path.expanduser(scenes_glob)))
        found = [p.resolve() for p in matches if p.is_dir() and looks_like_scene(p)]
        if not found:
            raise OVS3DError(f"--scenes-glob {scenes_glob!r} matches no scene folder")
        if skipped := len(matches) - len(found):
            note(f"--scenes-glob {scenes_glob!r}: {skipped} match(es) are not scene folders and are skipped")
        out += [p for p in found if p not in out]
    if not out:
        raise OVS3DError("no scenes: give --scenes DIR [DIR ...] or --scenes-glob 'data/*'")
    names: dict[str, Path] = {}
    for p in out:
        if p.name in names:
            raise OVS3DError(
                f"two scenes are named {p.name!r} ({names[p.name]} and {p}); the run folders are named after the "
                "scene folders: rename one"
            )
        names[p.name] = p
    return out


def _select_flags(argv: Sequence[str], keep: Callable[[str], bool]) -> list[str]:
    """The flags of ``argv`` (each with the values that follow it) whose name (``--x.y``, before any ``=``)
    ``keep`` accepts."""
    out: list[str] = []
    kept = True
    for arg in argv:
        if arg.startswith("--"):
            kept = keep(arg.partition("=")[0])
        if kept:
            out.append(arg)
    return out


def _recon_flags(argv: Sequence[str]) -> list[str]:
    """The flags of ``argv`` that a reconstruction-only fit reads (``--recon.*``, ``--kind``, ``--device``)."""
    return _select_flags(argv, lambda name: name.startswith(("--recon.", "--kind", "--device")))


def _own_flags(argv: Sequence[str], method: str, methods: Sequence[str]) -> list[str]:
    """``argv`` without the flags (and their values) meant for another of the batch's methods
    (``--ovnerf.n-iters 300`` is dropped from a ``3dovs`` task; ``--semantic.*`` from ``rgb``)."""
    others = tuple(f"--{m}." for m in methods if m != method)
    if method == RECON_METHOD:
        others += ("--semantic.",)  # a reconstruction has no semantic stage
    return _select_flags(argv, lambda name: not name.startswith(others))


def _recon_key(cfg: FitConfig) -> str:
    """What a reconstruction depends on: scenes whose fits agree on it share one reconstruction."""
    return json.dumps(
        [str(cfg.scene), cfg.holdout, cfg.kind, cfg.device, dataclasses.asdict(cfg.recon)], sort_keys=True, default=str
    )


def plan_batch(
    scenes: Sequence[Path],
    methods: Sequence[str],
    ablations: Sequence[str],
    out: Path,
    make_config: Callable[[list[str]], FitConfig],
    holdout: bool = False,
    protocol: str = "3dovs",
    fit_args: Sequence[str] = (),
) -> list[BatchTask]:
    """Every task of a batch, reconstructions first: per scene, one ``rgb`` run per set of reconstruction
    settings, then each (method, variant) starting from it.

    Args:
        scenes: scene folders (:func:`resolve_scenes`).
        methods: method names (``rgb`` too: the reconstruction runs are then evaluated).
        ablations: ``NAME=FLAGS`` variants, each besides the method's defaults.
        out: the batch folder.
        make_config: ``fit`` flags -> the checked :class:`~ovs3d.run.FitConfig` (the CLI's parser).
        holdout: the novel-view protocol for every fit.
        protocol: the evaluation protocol.
        fit_args: ``fit`` flags for every task.

    Returns:
        Tasks in an order where each comes after the task it needs.

    Raises:
        OVS3DError: a flag the batch sets itself, a duplicate variant, or any flag ``fit`` refuses (one line,
            naming the task).
    """
    own = {"--scene", "--out", "--method", "--recon-from", "--holdout", "--no-holdout"}
    for arg in fit_args:
        if arg.partition("=")[0] in own:
            raise OVS3DError(f"{arg} is set by ovs3d batch itself; use the batch's own flag or drop it")
    variants: list[tuple[str, list[str]]] = [("", [])]
    for spec in ablations:
        name, flags = parse_ablation(spec)
        if name in {v for v, _ in variants}:
            raise OVS3DError(f"--ablations names {name!r} twice")
        bad = [f for f in flags if f.partition("=")[0] in own]
        if bad:
            raise OVS3DError(f"--ablations {name}: {bad[0]} is set by ovs3d batch itself")
        variants.append((name, flags))
    out = Path(out).resolve()
    recon_tasks: list[BatchTask] = []
    method_tasks: list[BatchTask] = []
    for scene in scenes:
        groups: dict[str, BatchTask] = {}
        for method in methods:
            for variant, flags in variants:
                row = method + (f"-{variant}" if variant else "")
                run = out / "runs" / scene.name / row
                argv = ["--scene", str(scene), "--out", str(run), "--method", method]
                argv += (["--holdout"] if holdout else []) + _own_flags(list(fit_args) + flags, method, methods)
                try:
                    cfg = make_config(argv)
                except OVS3DError as e:
                    raise OVS3DError(f"{scene.name} {row}: {e}") from e
                rkey = _recon_key(cfg)
                if rkey not in groups:
                    rrow = RECON_METHOD + (f"-{variant}" if variant and groups else "")
                    rrun = out / "runs" / scene.name / rrow
                    rargv = ["--scene", str(scene), "--out", str(rrun), "--method", RECON_METHOD]
                    rargv += (["--holdout"] if holdout else []) + _recon_flags(argv)
                    rcfg = dataclasses.replace(cfg, method=RECON_METHOD, semantic=None, out=rrun, recon_from=None)
                    groups[rkey] = BatchTask(
                        key=f"{scene.name}/{rrow}",
                        scene=scene.name,
                        row=rrow,
                        fit=rcfg,
                        command=shlex.join(["ovs3d", "fit", *rargv]),
                        evaluate=False,
                        protocol=protocol,
                    )
                    recon_tasks.append(groups[rkey])
                recon = groups[rkey]
                if method == RECON_METHOD:
                    i = recon_tasks.index(recon)
                    recon_tasks[i] = groups[rkey] = dataclasses.replace(recon, evaluate=True)
                    continue
                argv += ["--recon-from", str(recon.run)]
                method_tasks.append(
                    BatchTask(
                        key=f"{scene.name}/{row}",
                        scene=scene.name,
                        row=row,
                        fit=dataclasses.replace(cfg, recon_from=recon.run),
                        command=shlex.join(["ovs3d", "fit", *argv]),
                        protocol=protocol,
                        needs=recon.key,
                    )
                )
    return recon_tasks + method_tasks


# ---------------------------------------------------------------------------------------------------
# one task (in a Ray worker, or in-process)


def _metrics_row(metrics: dict[str, Any]) -> dict[str, float | None]:
    rel = metrics.get("relevancy") if isinstance(metrics.get("relevancy"), dict) else {}
    out = {k: metrics.get(k) for k in ("miou", "accuracy", "psnr")}
    out.update({k: rel.get(k) for k in ("d_relevancy", "recall")})
    return {k: float(v) if isinstance(v, (int, float)) else None for k, v in out.items()}


def finished_result(t: BatchTask) -> dict[str, Any] | None:
    """The result of a task whose run is already finished (and evaluated, when it is to be), else None."""
    run = t.run
    if not (run / "config.json").is_file():
        return None
    try:
        if unfinished_stages(run):  # reads and checks the run's config too
            return None
    except (OVS3DError, OSError, KeyError, RuntimeError):
        return None  # the task itself reports what is wrong
    metrics = {}
    if t.evaluate:
        path = run / "eval" / "metrics.json"
        if not path.is_file() or path.stat().st_mtime < max(p.stat().st_mtime for p in (run / "checkpoints").iterdir()):
            return None
        metrics = json.loads(path.read_text())
    return {"key": t.key, "state": "skipped", "metrics": _metrics_row(metrics) if metrics else {}}


def _status_path(status_dir: Path, key: str) -> Path:
    return Path(status_dir) / (key.replace("/", "__") + ".json")


def run_task(t: BatchTask, status_dir: Path, attempt: int, threads: int | None = None) -> dict[str, Any]:
    """Fit (or resume) one task's run, then evaluate it: ``ovs3d fit`` + ``ovs3d eval`` in this process.

    Args:
        t: the task.
        status_dir: where the task's status file is written (``RESULTS/status``).
        attempt: 1 for the first try, 2 after one failure...
        threads: torch threads (default: leave as is).

    Returns:
        ``{"key", "state": "done", "fit_s", "eval_s", "metrics", "host", "pid", "attempt"}``.
    """
    import torch

    from ovs3d.run import evaluate, fit
    from ovs3d.utils.console import is_quiet, set_quiet

    if threads:
        torch.set_num_threads(max(1, int(threads)))
    status = _status_path(status_dir, t.key)
    info = {"key": t.key, "host": socket.gethostname(), "pid": os.getpid(), "attempt": attempt, "run": str(t.run)}
    info["started"] = time.time()
    atomic_write_json(status, {**info, "state": "running"})
    quiet = is_quiet()
    set_quiet(True)  # a worker's bars and lines would interleave in the driver's output
    t0 = time.perf_counter()
    try:
        fit(t.fit)
        fit_s = time.perf_counter() - t0
        record_command(t.run, shlex.split(t.command)[1:], fit_s, via="ovs3d batch")
        metrics: dict[str, Any] = {}
        eval_s = 0.0
        if t.evaluate:
            t1 = time.perf_counter()
            metrics = evaluate(t.run, protocol=t.protocol)  # type: ignore[arg-type]
            eval_s = time.perf_counter() - t1
            record_command(t.run, ["eval", "--run", str(t.run), "--protocol", t.protocol], eval_s, via="ovs3d batch")
    except BaseException as e:
        atomic_write_json(
            status, {**info, "state": "failed", "error": str(e) or type(e).__name__, "ended": time.time()}
        )
        raise
    finally:
        set_quiet(quiet)
    result = {**info, "state": "done", "fit_s": fit_s, "eval_s": eval_s}
    result["metrics"] = _metrics_row(metrics) if metrics else {}
    atomic_write_json(status, {**result, "ended": time.time()})
    return result


# ---------------------------------------------------------------------------------------------------
# the driver


@dataclass
class RayConfig:
    """How :func:`run_batch` runs its tasks."""

    address: str | None = None
    """Ray cluster to join (``auto``: the one ``ray start`` made on this machine; ``ray://host:10001``); None
    starts a local Ray instance on this machine's cores for the batch."""
    cpus_per_fit: float = 1.0
    """CPU cores Ray reserves for each task (and its torch threads)."""
    gpus_per_fit: float = 0.0
    """GPUs Ray reserves for each task (0: CPU only)."""
    retries: int = 2
    """Times a task is submitted again after its worker died or it failed with an unexpected error (a user
    error, e.g. a setting ``fit`` refuses, is not retried)."""
    poll_s: float = 2.0
    """Seconds between looks at the running tasks (progress lines)."""


def _ray_init(cfg: RayConfig):
    try:
        import ray
    except ImportError as e:
        raise OVS3DError("ovs3d batch needs Ray: pip install 'ovs3d[batch]' (or pip install 'ray>=2.10')") from e
    if ray.is_initialized():
        return ray, False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        if cfg.address is None:
            ray.init(**kwargs)
        else:
            ray.init(address=cfg.address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = cfg.address or "a local instance"
        raise OVS3DError(f"could not start Ray ({where}): {str(e).splitlines()[0] if str(e) else e}") from e
    return ray, True


def _retryable(err: BaseException) -> bool:
    """A dead worker or node, or an unexpected error; not a user error of ``fit`` / ``eval``."""
    return not (isinstance(err, OVS3DError) or isinstance(getattr(err, "cause", None), OVS3DError))


def _error_line(err: BaseException) -> str:
    cause = getattr(err, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}"


def _slots(ray, cfg: RayConfig) -> int:
    res = ray.cluster_resources()
    slots = res.get("CPU", 1) / max(cfg.cpus_per_fit, 1e-9)
    if cfg.gpus_per_fit > 0:
        slots = min(slots, res.get("GPU", 0) / cfg.gpus_per_fit)
    return max(1, int(slots))


def run_batch(
    tasks: Sequence[BatchTask],
    out: Path,
    cfg: RayConfig | None = None,
    task_fn: Callable[..., dict[str, Any]] = run_task,
) -> list[dict[str, Any]]:
    """Run every task on Ray (skipping finished runs), retrying those that die; write the tables and report.

    Args:
        tasks: :func:`plan_batch`'s tasks (a task after the one it needs).
        out: the batch folder.
        cfg: Ray settings.
        task_fn: the function a Ray task runs (``run_task``'s signature; tests inject failures with it).

    Returns:
        One result per task, in ``tasks``' order: state ``done``, ``skipped`` (finished before), ``failed``
        (with ``error``) or ``blocked`` (the task it needs failed).
    """
    cfg = cfg or RayConfig()
    out = Path(out)
    status_dir = out / "status"
    results: dict[str, dict[str, Any]] = {}
    for t in tasks:
        if (r := finished_result(t)) is not None:
            results[t.key] = r
    if results:
        note(f"batch: {len(results)} of {len(tasks)} runs are finished already and are skipped")
    todo = [t for t in tasks if t.key not in results]
    t_start = time.perf_counter()
    if todo:
        ray, started = _ray_init(cfg)  # before anything is written: no Ray, no half-made batch folder
        status_dir.mkdir(parents=True, exist_ok=True)
        try:
            _drive(ray, todo, results, status_dir, cfg, task_fn, len(tasks))
        finally:
            if started:
                ray.shutdown()
    wall = time.perf_counter() - t_start
    ordered = [results[t.key] for t in tasks]
    write_results(out, tasks, ordered, wall)
    return ordered


def _drive(ray, todo, results, status_dir, cfg: RayConfig, task_fn, n_total: int) -> None:
    remote = ray.remote(num_cpus=cfg.cpus_per_fit, num_gpus=cfg.gpus_per_fit, max_retries=0)(task_fn)
    threads = max(1, int(cfg.cpus_per_fit))  # whole cores, at least one
    slots = _slots(ray, cfg)
    waiting = {t.key: t for t in todo}
    pending: dict[Any, BatchTask] = {}
    attempts: dict[str, int] = {}
    submitted_at: dict[str, float] = {}
    durations: dict[str, list[float]] = {}
    emit(
        f"batch: {len(todo)} task(s) to run on {slots} slot(s) "
        f"({cfg.cpus_per_fit:g} CPU, {cfg.gpus_per_fit:g} GPU each)"
    )

    def ready(t: BatchTask) -> bool:
        return t.needs is None or results.get(t.needs, {}).get("state") in ("done", "skipped")

    def submit(t: BatchTask) -> None:
        attempts[t.key] = attempts.get(t.key, 0) + 1
        submitted_at[t.key] = time.perf_counter()
        pending[remote.remote(t, status_dir, attempts[t.key], threads)] = t

    def block_dependents(key: str) -> None:
        for k, w in list(waiting.items()):
            if w.needs == key:
                del waiting[k]
                results[k] = {"key": k, "state": "blocked", "error": f"its reconstruction {key} failed"}
                block_dependents(k)

    def counts() -> str:
        states = [r["state"] for r in results.values()]
        done = sum(s in ("done", "skipped") for s in states)
        failed = sum(s in ("failed", "blocked") for s in states)
        running = _running(status_dir, pending.values(), attempts)
        return f"{done} done, {running} running, {len(pending) - running + len(waiting)} queued, {failed} failed"

    def eta() -> str:
        if not durations:
            return ""
        mean_all = sum(sum(v) for v in durations.values()) / sum(len(v) for v in durations.values())
        left = [*waiting.values(), *pending.values()]
        work = sum(_mean(durations.get(_kind(t)), mean_all) for t in left)
        now = time.perf_counter()
        work -= sum(min(now - submitted_at[t.key], _mean(durations.get(_kind(t)), mean_all)) for t in pending.values())
        return f", ETA {format_duration(max(work, 0.0) / slots)}"

    with task("batch", n_total, initial=n_total - len(todo), work=Work(unit="runs")) as bar:
        last_line = 0.0
        while waiting or pending:
            for key in [k for k, t in waiting.items() if ready(t)]:
                submit(waiting.pop(key))
            if not pending:
                break
            done_refs, _ = ray.wait(list(pending), num_returns=1, timeout=cfg.poll_s)
            for ref in done_refs:
                t = pending.pop(ref)
                try:
                    r = ray.get(ref)
                except Exception as err:  # noqa: BLE001 - every failure is reported, retried or recorded
                    line = _error_line(err)
                    if _retryable(err) and attempts[t.key] <= cfg.retries:
                        emit(
                            f"batch: {t.key} failed ({line}); retrying from its last checkpoint "
                            f"(attempt {attempts[t.key] + 1} of {cfg.retries + 1})"
                        )
                        submit(t)
                        continue
                    results[t.key] = {"key": t.key, "state": "failed", "error": line, "attempts": attempts[t.key]}
                    emit(f"batch: {t.key} failed: {line}")
                    block_dependents(t.key)
                    bar.update(len(results))
                    continue
                r = {**r, "attempts": attempts[t.key]}
                results[t.key] = r
                took = r.get("fit_s", 0.0) + r.get("eval_s", 0.0)
                durations.setdefault(_kind(t), []).append(took)
                bar.update(len(results))
                score = r["metrics"].get("miou")
                what = f"mIoU {score:.3f}" if score is not None else ""
                if r["metrics"].get("psnr") is not None:
                    what += (", " if what else "") + f"PSNR {r['metrics']['psnr']:.2f} dB"
                emit(
                    f"batch: {t.key} done in {format_duration(took)}"
                    + (f" ({what})" if what else "")
                    + f"; {counts()}{eta()}"
                )
            now = time.perf_counter()
            if not done_refs and now - last_line >= 30.0:
                emit(f"batch: {counts()}{eta()}")
                last_line = now


def _kind(t: BatchTask) -> str:
    return t.row.split("-")[0]


def _mean(values: list[float] | None, default: float) -> float:
    return sum(values) / len(values) if values else default


def _running(status_dir: Path, pending: Any, attempts: dict[str, int]) -> int:
    """Pending tasks whose worker has started them (their status file says so for this attempt)."""
    n = 0
    for t in pending:
        path = _status_path(status_dir, t.key)
        try:
            s = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        n += s.get("state") == "running" and s.get("attempt") == attempts.get(t.key)
    return n


# ---------------------------------------------------------------------------------------------------
# results: tables and report


@dataclass
class Table:
    """A results table in the papers' layout: scenes as columns, (row, metric) as rows, a mean column."""

    scenes: list[str]
    rows: list[tuple[str, str, list[float | None]]] = field(default_factory=list)
    """(run name, metric name, one value per scene, None where the run has none)."""

    def mean(self, values: list[float | None]) -> float | None:
        got = [v for v in values if v is not None]
        return sum(got) / len(got) if got else None


def build_table(tasks: Sequence[BatchTask], results: Sequence[dict[str, Any]]) -> Table:
    """The table of a batch: for every evaluated run name (in task order) and every metric it has."""
    scenes = list(dict.fromkeys(t.scene for t in tasks))
    row_names = list(dict.fromkeys(t.row for t in tasks if t.evaluate))
    cell: dict[tuple[str, str], dict[str, Any]] = {}
    for t, r in zip(tasks, results):
        if t.evaluate:
            cell[(t.row, t.scene)] = r.get("metrics") or {}
    table = Table(scenes)
    for row in row_names:
        for key, name in TABLE_METRICS:
            values = [cell.get((row, s), {}).get(key) for s in scenes]
            if any(v is not None for v in values):
                table.rows.append((row, name, values))
    return table


def _fmt_cell(metric: str, v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.2f}" if metric == "PSNR" else f"{v:.3f}"


def table_csv(table: Table) -> str:
    """CSV: ``method,metric,<scene>...,mean`` (empty cells where a run has no value)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "metric", *table.scenes, "mean"])
    for row, metric, values in table.rows:
        mean = table.mean(values)
        w.writerow([row, metric, *("" if v is None else repr(float(v)) for v in values), "" if mean is None else mean])
    return buf.getvalue()


def table_markdown(table: Table) -> str:
    """Markdown: the same rows, values rounded (PSNR to 0.01 dB, the rest to 0.001); '—' for a missing cell;
    a mean over fewer scenes than the table has is marked with their count."""
    head = ["method", "metric", *table.scenes, "mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(table.scenes) + 1)]
    for row, metric, values in table.rows:
        mean = table.mean(values)
        n = sum(v is not None for v in values)
        mean_text = _fmt_cell(metric, mean) + (f" ({n}/{len(values)})" if mean is not None and n < len(values) else "")
        lines.append("| " + " | ".join([row, metric, *(_fmt_cell(metric, v) for v in values), mean_text]) + " |")
    return "\n".join(lines) + "\n"


def write_results(out: Path, tasks: Sequence[BatchTask], results: Sequence[dict[str, Any]], wall_s: float) -> None:
    """``table.csv``, ``table.md``, ``report.html`` and ``batch.json`` (every task's result) in ``out``."""
    out = Path(out)
    table = build_table(tasks, results)
    atomic_write_text(out / "table.csv", table_csv(table))
    problems = [r for r in results if r["state"] in ("failed", "blocked")]
    md = table_markdown(table)
    if problems:
        md += "\n" + "\n".join(f"- {r['key']}: {r['state']} ({r.get('error', '')})" for r in problems) + "\n"
    atomic_write_text(out / "table.md", md)
    summary = {
        "wall_s": wall_s,
        "tasks": [{**r, "command": t.command, "run": str(t.run)} for t, r in zip(tasks, results)],
    }
    atomic_write_json(out / "batch.json", summary)
    atomic_write_text(out / "report.html", batch_report_html(out, tasks, results, table))


def batch_report_html(out: Path, tasks: Sequence[BatchTask], results: Sequence[dict[str, Any]], table: Table) -> str:
    """One self-contained page: the table, then per scene every evaluated run's overlays (RGB | ground truth |
    prediction) and a link to the run's own report when it has one."""
    from ovs3d.report import ReportSection, esc, file_uri, html_table, img_tag, render_page

    head = ["method", "metric", *table.scenes, "mean"]
    body_rows = [
        [row, metric, *(_fmt_cell(metric, v) for v in values), _fmt_cell(metric, table.mean(values))]
        for row, metric, values in table.rows
    ]
    sections = [ReportSection("table", "Results", html_table(head, body_rows, numeric_from=2))]
    state = {t.key: r for t, r in zip(tasks, results)}
    problems = [r for r in results if r["state"] in ("failed", "blocked")]
    if problems:
        items = "".join(f"<li>{esc(r['key'])}: {esc(r['state'])} ({esc(r.get('error', ''))})</li>" for r in problems)
        sections.append(ReportSection("problems", "Runs without a result", f"<ul>{items}</ul>"))
    for scene in table.scenes:
        parts = []
        for t in tasks:
            if t.scene != scene or not t.evaluate:
                continue
            r = state[t.key]
            score = (r.get("metrics") or {}).get("miou")
            title = f"{t.row}" + (f" — mIoU {score:.3f}" if score is not None else f" — {r['state']}")
            parts.append(f"<h3>{esc(title)}</h3>")
            own = t.run / "report" / "index.html"
            if own.is_file():
                parts.append(f'<p><a href="{esc(os.path.relpath(own, out))}">the run\'s own report</a></p>')
            overlays = (
                sorted((t.run / "eval" / "overlays").glob("*.png"))
                or sorted((t.run / "eval" / "rgb").glob("*.png"))[:3]
            )
            for p in overlays:
                parts.append(img_tag(file_uri(p), f"{scene} {t.row} view {p.stem}", "overlay"))
            if not overlays:
                parts.append('<p class="note">No pictures (the run has no evaluation).</p>')
        sections.append(ReportSection(f"scene-{scene}", f"Scene {scene}", "".join(parts)))
    return render_page(f"ovs3d batch: {out.name}", sections, subtitle=f"{len(tasks)} runs, {len(table.scenes)} scenes")
