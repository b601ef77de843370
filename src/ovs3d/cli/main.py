"""``ovs3d``: one entry point, subcommands (SPEC §3). Parses flags and calls library functions."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shlex
import signal
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from ovs3d.errors import OVS3DError
from ovs3d.export import ExportConfig
from ovs3d.foundation.features import FeatureConfig
from ovs3d.foundation.registry import spec_rule
from ovs3d.io.colmap import CAMERA_MODELS
from ovs3d.methods.registry import DEFAULT_METHOD, check_method
from ovs3d.run import FitConfig, check_device
from ovs3d.utils.config import check_config, deferred_checks, flag_name, parse_number, rule
from ovs3d.utils.console import TIME_FORMAT, is_quiet, on_terminal, set_quiet


def _console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


LogLevel = Literal["debug", "info", "warning", "error"]
LOG_LEVELS: tuple[str, ...] = typing.get_args(LogLevel)


def default_log_level() -> str:
    """``$OVS3D_LOG`` when it names a level of :data:`LOG_LEVELS`, else ``warning``."""
    level = os.environ.get("OVS3D_LOG", "warning").lower()
    return level if level in LOG_LEVELS else "warning"


@dataclass
class Output:
    """What every command reports besides its result: the flags ``--quiet`` and ``--log-level`` (given before or
    after the command's name)."""

    quiet: Annotated[bool, tyro.conf.arg(aliases=("-q",))] = field(default=False, kw_only=True)
    """No progress bars or lines, no stage, estimate or note lines (warnings, errors and results still show)."""
    log_level: LogLevel = field(default_factory=default_log_level, kw_only=True)
    """Library messages to show: debug, info, warning, or only errors (default: $OVS3D_LOG, else warning)."""


OUTPUT_FLAGS = ("quiet", "log_level")
"""The fields of :class:`Output`, which every command has."""


@dataclass
class MakeScene(Output):
    """Write a synthetic scene in the SPEC §1 layout."""

    out: Path
    """Scene folder to create."""
    preset: Literal["tabletop", "room", "orbit"] = "tabletop"
    """Scene preset (tabletop: forward-facing table with objects in front of a wall; room: inside-out room;
    orbit: a 360° capture circling a table in the middle of a room with distant walls)."""
    seed: int = 0
    """Layout and label seed."""
    width: int | None = None
    """Image width (default: the preset's)."""
    height: int | None = None
    """Image height (default: the preset's)."""
    n_views: int | None = None
    """Number of views (default: the preset's)."""
    n_annotated: int | None = None
    """Number of annotated (test) views (default: the preset's)."""
    n_objects: tuple[int, int] | None = None
    """Inclusive range of the number of objects (default: the preset's)."""
    n_small: tuple[int, int] | None = None
    """Hard cases: inclusive range of extra small objects (about 0.3-1 % of the image each)."""
    small_touch_prob: float | None = None
    """Hard cases: probability that a small object stands against a larger one."""
    small_confused: bool | None = None
    """Hard cases: small objects' simulated CLIP confusers are labels of larger surfaces."""
    hub_labels: int | None = None
    """Hard cases: number of larger surfaces whose labels are strong simulated CLIP hubs."""
    camouflage: int | None = None
    """Hard cases: number of objects coloured like the wall or the table (the nearest colours of the pool)."""
    occluded: int | None = None
    """Hard cases: number of objects standing partly hidden behind a larger one (far side from the cameras)."""
    min_size_factor: float | None = None
    """Minimum short side of every object, in smallest CLIP patches (default: the preset's)."""

    def main(self) -> None:
        from dataclasses import fields

        from ovs3d.scenegen import make_scene
        from ovs3d.scenegen.presets import scene_config

        flags = {f.name for f in fields(self)}
        own = flags - {"out", "preset", "seed", *OUTPUT_FLAGS}
        overrides = {n: getattr(self, n) for n in own if getattr(self, n) is not None}
        # the preset's settings, checked first with the flags named as typed (settings without a flag by name)
        scene_config(self.preset, self.seed, **overrides).validate(lambda n: flag_name(n) if n in flags else n)
        t0 = time.perf_counter()
        path = make_scene(self.preset, self.seed, self.out, **overrides)
        _console().print(f"wrote {self.preset} scene (seed {self.seed}) to {path} in {time.perf_counter() - t0:.1f}s")


@dataclass
class FitCommand(FitConfig, Output):
    """Scene -> trained (semantic) radiance field: reconstruction, cached features, the method's training.

    The flags are :class:`~ovs3d.run.FitConfig`'s; ``--semantic.*`` are the chosen ``--method``'s own
    settings (``ovs3d fit --method ovnerf --help`` lists them).
    """

    def fit_config(self) -> FitConfig:
        """The :class:`~ovs3d.run.FitConfig` these flags make (without the output flags)."""
        from dataclasses import fields

        return FitConfig(**{f.name: getattr(self, f.name) for f in fields(FitConfig)})

    def main(self) -> None:
        from ovs3d.run import fit

        t0 = time.perf_counter()
        run = fit(self.fit_config())
        _console().print(f"fit done in {time.perf_counter() - t0:.0f}s: {run}")


def _fit_command(method: str) -> type:
    """The ``fit`` command for ``method``: FitConfig's flags, ``semantic`` typed as that method's config."""
    from dataclasses import field, make_dataclass

    from ovs3d.methods.registry import method_config_type, method_names

    sem_type = method_config_type(method)
    methods = Literal[tuple(method_names())]  # type: ignore[valid-type]
    method_help = (
        "semantic method (3dovs: 3D-OVS; ovnerf: OV-NeRF; lerf: LERF + panoptic prior) or rgb (reconstruction only)"
    )
    fields_ = [("method", Annotated[methods, tyro.conf.arg(help=method_help)], field(default=method))]
    if sem_type is None:
        fields_.append(("semantic", tyro.conf.Suppress[Any], field(default=None)))
    else:
        help_ = f"settings of the {method} semantic stage"
        fields_.append(("semantic", Annotated[sem_type, tyro.conf.arg(help=help_)], field(default_factory=sem_type)))
    return make_dataclass("Fit", fields_, bases=(FitCommand,))


def _method_flag(argv: list[str]) -> str | None:
    """The value of ``--method`` in ``argv`` (``--method X`` or ``--method=X``), if given."""
    for i, arg in enumerate(argv):
        if arg == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--method="):
            return arg.partition("=")[2]
    return None


def _method_aliases(argv: list[str], method: str) -> list[str]:
    """``--<method>.<setting>`` (e.g. ``--lerf.prior none``) is another spelling of ``--semantic.<setting>``."""
    prefix = f"--{method}."
    return [f"--semantic.{a[len(prefix) :]}" if a.startswith(prefix) else a for a in argv]


@dataclass
class Eval(Output):
    """Render every annotated view of a run and score it (SPEC §4-§5); PSNR for reconstruction runs.

    Only a finished run is scored: on a run whose fit was interrupted, eval writes nothing, names the stage
    and the step it stopped at, and exits 1 (running the same ``ovs3d fit`` command again finishes it).
    """

    run: Path
    """Run folder."""
    protocol: Literal["3dovs", "ovnerf"] = "3dovs"
    """Scoring (SPEC §5): 3dovs (every label of every annotated view; absent labels score 0) or ovnerf
    (void pixels ignored, labels absent from a view skipped, as OV-NeRF's Replica tables)."""

    def main(self) -> None:
        from ovs3d.run import evaluate

        _print_metrics(evaluate(self.run, protocol=self.protocol), self.run / "eval")


@dataclass
class Render(Output):
    """Render RGB, depth (and segmentation, relevancy) for views and along a camera path (images + MP4)."""

    run: Path
    """Run folder."""
    views: list[int] | None = field(default=None, metadata=rule(ge=0))
    """Views to render (default: the annotated views)."""
    frames: int = field(default=60, metadata=rule(ge=0, le=100_000))
    """Frames of the camera-path video (0: none)."""
    query: list[str] | None = None
    """Texts to render relevancy maps for (default: the scene's labels)."""
    out: Path | None = None
    """Output folder (default RUN/render)."""

    def main(self) -> None:
        from ovs3d.run import render

        out = render(self.run, self.views, self.frames, self.query, self.out)
        _console().print(f"rendered into {out}")


@dataclass
class Query(Output):
    """Relevancy of free text on a semantic run (any words, not only its labels): maps and heat maps per view."""

    run: Path
    """Run folder (a finished lerf, 3dovs or ovnerf fit)."""
    text: Annotated[list[str], tyro.conf.UseAppendAction] = field(default_factory=list)
    """A query text (any words); repeat --text for several."""
    views: list[int] | None = field(default=None, metadata=rule(ge=0))
    """Views to query (default: the annotated views)."""
    out: Path | None = field(default=None, metadata=rule(path="not_file"))
    """Output folder (default RUN/query)."""
    path: int = field(default=0, metadata=rule(ge=0, le=100_000))
    """Also render a heat-map video of each text along the camera path, with this many frames (0: none)."""

    def main(self) -> None:
        from ovs3d.query import query

        t0 = time.perf_counter()
        out = query(self.run, self.text, self.views, self.out, self.path)
        _console().print(f"{len(self.text)} queries in {time.perf_counter() - t0:.1f}s: {out}")


@dataclass
class Import(Output):
    """The user's own photos to a scene folder (SPEC §1): poses from COLMAP (pycolmap), undistorted to pinhole."""

    images: Path
    """Folder of photos (jpg/png; EXIF orientation applied; mixed sizes brought to one)."""
    out: Path
    """Scene folder to create (must not exist or be empty)."""
    classes: list[str] | None = None
    """Text labels of the things in the scene (segmentations/classes.txt), e.g. --classes 'a red mug' 'lime wall'."""
    matcher: Literal["exhaustive", "sequential"] = "exhaustive"
    """Feature matching: exhaustive (every pair; up to a few hundred photos) or sequential (video frames)."""
    camera_model: str = field(default="SIMPLE_RADIAL", metadata=rule(choices=CAMERA_MODELS))
    """COLMAP camera model of the photos (SIMPLE_RADIAL, OPENCV, PINHOLE, ...); images are undistorted to pinhole."""
    max_image_size: int | None = field(default=None, metadata=rule(ge=16))
    """Longest side of the written images in pixels (default: the photos' own size)."""
    threads: int = field(default=-1, metadata=rule(ge=-1))
    """COLMAP threads (-1: all cores)."""

    def main(self) -> None:
        from ovs3d.io.colmap import import_scene

        t0 = time.perf_counter()
        out = import_scene(
            self.images, self.out, self.classes, self.matcher, self.camera_model, self.max_image_size, self.threads
        )
        _console().print(f"imported {self.images} in {time.perf_counter() - t0:.0f}s: {out}")


@dataclass
class Export(ExportConfig, Output):
    """Every 3D point labelled (SPEC §6): the run baked to points.ply, labels.json and per-label meshes, in the
    frame of the scene's input poses (reconstruction-only runs: RGB points without labels)."""

    run: Path = field(kw_only=True)
    """Run folder (a finished fit)."""
    out: Path | None = field(default=None, kw_only=True)
    """Output folder (default RUN/export); it must not exist unless --overwrite."""
    texts: Annotated[list[str], tyro.conf.arg(name="text"), tyro.conf.UseAppendAction] = field(default_factory=list)
    """A free text whose relevancy becomes a per-point property rel_<slug>; repeat --text for several."""
    overwrite: bool = field(default=False, kw_only=True)
    """Replace an existing output folder (only once the new export is complete)."""

    def main(self) -> None:
        from dataclasses import fields

        from ovs3d.export import export_run

        cfg = ExportConfig(**{f.name: getattr(self, f.name) for f in fields(ExportConfig)})
        t0 = time.perf_counter()
        meta = export_run(self.run, self.out, cfg, overwrite=self.overwrite)
        info, con = meta["info"], _console()
        if not info["semantic"]:
            con.print(f"{self.run} is a reconstruction-only run: exported RGB points only (no labels, no meshes)")
        mib = sum(info["bytes"].values()) / 2**20
        con.print(
            f"exported {info['points']:,} points from {len(info['views'])} views and {len(meta['meshes'])} meshes "
            f"({mib:.1f} MiB) in {time.perf_counter() - t0:.1f}s: {meta['out']}"
        )


@dataclass
class View(Output):
    """A live viewer in the browser (viser): cameras, the exported points, live renders, a text box for queries."""

    run: Path
    """Run folder (a finished fit)."""
    host: str = "127.0.0.1"
    """Address to serve on (loopback: only this machine; 0.0.0.0: every network interface)."""
    port: int = field(default=8080, metadata=rule(ge=0, le=65535))
    """Port to serve on."""
    threads: int | None = field(default=None, metadata=rule(ge=1))
    """Torch threads for the live renders (default: torch's; 1 keeps frames steady on a busy machine)."""

    def main(self) -> None:
        from ovs3d.viewer import serve

        viewer = serve(self.run, host=self.host, port=self.port, block=False, threads=self.threads)
        _console().print(f"viewer of {self.run} at {viewer.url} (Ctrl-C stops it)")
        viewer.wait()


@dataclass
class Report(Output):
    """One self-contained HTML page of a run: scene, overlays, relevancy maps, metrics, curves, timings, commands."""

    run: Path
    """Run folder (evaluated first if it has no RUN/eval)."""
    out: Path | None = None
    """Output folder (default RUN/report)."""

    def main(self) -> None:
        from ovs3d.report import build_report

        t0 = time.perf_counter()
        path = build_report(self.run, self.out)
        _console().print(f"report written in {time.perf_counter() - t0:.1f}s: {path}")


@dataclass
class Batch(Output):
    """Many fits at once on Ray: one task per (scene, method, variant), each ``ovs3d fit`` + ``ovs3d eval`` into
    ``OUT/runs/<scene>/<method>[-<variant>]``, one shared reconstruction per scene; then ``OUT/table.csv``,
    ``OUT/table.md`` and ``OUT/report.html``. Flags after ``--`` are given to every fit (e.g.
    ``-- --recon.n-iters 200 --ovnerf.n-iters 300``). Running the same command again skips finished runs and
    resumes the others.
    """

    out: Path = field(metadata=rule(path="not_file"))
    """Batch folder (created or resumed)."""
    scenes: list[Path] = field(default_factory=list)
    """Scene folders."""
    scenes_glob: str | None = None
    """A glob of scene folders, e.g. 'data/*' (quote it); folders that are not scenes are skipped."""
    methods: list[str] = field(default_factory=lambda: [DEFAULT_METHOD])
    """Methods to fit on every scene (3dovs, ovnerf, lerf; rgb also scores the shared reconstructions)."""
    ablations: list[str] = field(default_factory=list)
    """Variants besides each method's defaults, NAME=FLAGS, e.g. no-fda='--semantic.no-use-fda'."""
    holdout: bool = False
    """Novel-view protocol for every fit (annotated views held out)."""
    protocol: Literal["3dovs", "ovnerf"] = "3dovs"
    """Evaluation protocol (SPEC §5)."""
    address: str | None = None
    """Ray cluster: none (default) starts a local Ray instance; auto joins the one `ray start` made here;
    ray://host:10001 joins a remote cluster (scenes and --out on a filesystem every node sees)."""
    cpus_per_fit: float = field(default=1.0, metadata=rule(gt=0))
    """CPU cores reserved per fit (and its torch threads)."""
    gpus_per_fit: float = field(default=0.0, metadata=rule(ge=0))
    """GPUs reserved per fit (0: CPU only)."""
    retries: int = field(default=2, metadata=rule(ge=0, le=100))
    """Times a fit whose worker died (or that failed unexpectedly) is resumed again."""
    fit_args: tyro.conf.Suppress[list[str]] = field(default_factory=list)
    """The flags after ``--``."""

    def main(self) -> None:
        from ovs3d.batch import RayConfig, plan_batch, resolve_scenes, run_batch

        for m in self.methods:
            check_method(m)
        scenes = resolve_scenes(self.scenes, self.scenes_glob)
        tasks = plan_batch(
            scenes, self.methods, self.ablations, self.out, _fit_config, self.holdout, self.protocol, self.fit_args
        )
        ray_cfg = RayConfig(self.address, self.cpus_per_fit, self.gpus_per_fit, self.retries)
        t0 = time.perf_counter()
        results = run_batch(tasks, self.out, ray_cfg)
        bad = [r for r in results if r["state"] in ("failed", "blocked")]
        con = _console()
        con.print((self.out / "table.md").read_text())
        con.print(
            f"batch: {len(results) - len(bad)} of {len(results)} runs finished in {time.perf_counter() - t0:.0f}s; "
            f"tables and report in {self.out}"
        )
        if bad:
            raise OVS3DError(
                f"{len(bad)} run(s) failed ({bad[0]['key']}: {bad[0].get('error')}); see {self.out}/table.md"
            )


def _fit_config(argv: list[str]) -> FitConfig:
    """The checked :class:`FitConfig` of ``ovs3d fit ARGV`` (a flag fit does not know: one line)."""
    import io

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            cmd = parse_command(["fit", *argv])
    except SystemExit as e:
        lines = [ln.strip(" │╭╰─") for ln in err.getvalue().splitlines()]
        why = next((ln for ln in lines if ln.lower().startswith(("unrecognized options:", "required"))), "")
        meant = [ln for ln in lines if ln.startswith("--")][:1]
        hint = f" (perhaps {meant[0].split()[0]})" if meant else ""
        raise OVS3DError(f"ovs3d fit refuses these flags: {why or shlex.join(argv)}{hint}; see ovs3d fit --help") from e
    return cmd.fit_config()


def _masks_or_none(spec: str, flag: str) -> None:
    if spec != "none":
        spec_rule("masks")(spec, flag)


@dataclass
class Features(Output):
    """Extract and cache the foundation-model features of a scene (what fit reuses)."""

    scene: Path
    """Scene folder."""
    clip: str = field(default="auto", metadata=rule(custom=spec_rule("clip")))
    """CLIP backend (see fit)."""
    dino: str = field(default="auto", metadata=rule(custom=spec_rule("dino")))
    """DINO backend (see fit)."""
    masks: str = field(default="none", metadata=rule(custom=_masks_or_none))
    """Mask backend to also cache proposals for (none | sim | superpixel | sam:...)."""
    holdout: bool = False
    """Only the training views of the novel-view protocol."""
    allow_download: bool = False
    """Allow backends to download missing weights."""
    cache_dir: Path | None = field(default=None, metadata=rule(path="not_file"))
    """Cache folder (default <scene>/.ovs3d_cache)."""
    device: str = field(default="auto", metadata=rule(custom=check_device))
    """auto | cpu | cuda | cuda:N."""
    features: FeatureConfig = field(default_factory=FeatureConfig)

    def main(self) -> None:
        from ovs3d.foundation.extract import extract_features

        report = extract_features(
            self.scene,
            self.clip,
            self.dino,
            self.masks,
            self.features,
            self.holdout,
            self.cache_dir,
            self.device,
            self.allow_download,
        )
        con = _console()
        for name, (path, nbytes, n) in report.items():
            con.print(f"{name}: {n} views, {nbytes / 2**20:.1f} MiB in {path}")


@dataclass
class Baseline(Output):
    """The 2D baseline: per annotated view, argmax of that view's own CLIP relevancy (no 3D)."""

    scene: Path
    """Scene folder."""
    out: Path
    """Output folder (written like RUN/eval)."""
    clip: str = field(default="auto", metadata=rule(custom=spec_rule("clip")))
    """CLIP backend (see fit)."""
    normalize: bool = False
    """Min-max normalise each label's relevancy over the view before the argmax (3D-OVS Eq. 7)."""
    allow_download: bool = False
    """Allow backends to download missing weights."""
    cache_dir: Path | None = field(default=None, metadata=rule(path="not_file"))
    """Cache folder (default <scene>/.ovs3d_cache)."""
    device: str = field(default="auto", metadata=rule(custom=check_device))
    """auto | cpu | cuda | cuda:N."""
    scales: tuple[int, ...] | None = field(default=None, metadata=rule(ge=0))
    """Alg. 1 scales to average (indices into features.pixel-clip.patch-divisors, largest patch first; default all)."""
    features: FeatureConfig = field(default_factory=FeatureConfig)

    def main(self) -> None:
        from ovs3d.eval.baseline import run_baseline

        metrics = run_baseline(
            self.scene,
            self.out,
            self.clip,
            self.features,
            self.normalize,
            self.cache_dir,
            self.device,
            self.allow_download,
            self.scales,
        )
        _print_metrics(metrics, self.out)


@dataclass
class Demo(Output):
    """make-scene + fit + eval + render on the embedded default scene; prints the metrics."""

    out: Path = Path("ovs3d-demo")
    """Folder for the scene and the run."""
    seed: int = 0
    """Scene seed."""
    method: str = field(default="3dovs", metadata=rule(custom=lambda name, flag: check_method(name)))
    """Method to fit (3dovs, ovnerf or rgb)."""
    frames: int = field(default=30, metadata=rule(ge=0, le=100_000))
    """Frames of the rendered camera path."""

    def main(self) -> None:
        from ovs3d.run import demo

        t0 = time.perf_counter()
        metrics = demo(self.out, self.seed, self.method, self.frames)
        _print_metrics(metrics, self.out / "run" / "eval")
        con = _console()
        con.print(f"demo finished in {time.perf_counter() - t0:.0f}s; pictures in {self.out / 'run'}")
        con.print(f"report (open it in a browser): {metrics['report']}")


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.3f}"


def _print_metrics(metrics: dict, where: Path) -> None:
    from rich.table import Table

    con = _console()
    table = Table(title=f"metrics ({metrics.get('protocol', '?')} protocol)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in ("miou", "accuracy", "macc", "psnr"):
        if k in metrics and isinstance(metrics[k], (int, float)):
            fmt = f"{metrics[k]:.2f} dB" if k == "psnr" else f"{metrics[k]:.3f}"
            table.add_row(k, fmt)
    rel = metrics.get("relevancy")
    if isinstance(rel, dict):
        for k in ("d_relevancy", "recall", "localization"):
            if isinstance(rel.get(k), (int, float)):
                table.add_row(f"{k} (relevancy)", f"{rel[k]:.3f}")
    con.print(table)
    if "per_view" in metrics and "classes" in metrics:
        per = Table(title="per-view mIoU")
        per.add_column("view")
        per.add_column("mIoU", justify="right")
        per.add_column("accuracy", justify="right")
        for v, m in metrics["per_view"].items():
            if "miou" in m:  # None: a view with nothing to score (OV-NeRF protocol, all void)
                per.add_row(str(v), _fmt(m["miou"]), _fmt(m.get("accuracy")))
        con.print(per)
    con.print(f"written to {where}")


def _commands(fit_type: type):
    return (
        Annotated[MakeScene, tyro.conf.subcommand("make-scene")]
        | Annotated[fit_type, tyro.conf.subcommand("fit")]
        | Annotated[Eval, tyro.conf.subcommand("eval")]
        | Annotated[Render, tyro.conf.subcommand("render")]
        | Annotated[Query, tyro.conf.subcommand("query")]
        | Annotated[Import, tyro.conf.subcommand("import")]
        | Annotated[Export, tyro.conf.subcommand("export")]
        | Annotated[View, tyro.conf.subcommand("view")]
        | Annotated[Report, tyro.conf.subcommand("report")]
        | Annotated[Features, tyro.conf.subcommand("features")]
        | Annotated[Baseline, tyro.conf.subcommand("baseline")]
        | Annotated[Demo, tyro.conf.subcommand("demo")]
        | Annotated[Batch, tyro.conf.subcommand("batch")]
    )


def _record_command(cmd, argv: list[str], seconds: float) -> None:
    """Append a finished command to its run's ``logs/commands.jsonl`` (:func:`ovs3d.run.record_command`)."""
    from ovs3d.run import record_command

    run = getattr(cmd, "run", None) or (getattr(cmd, "out", None) if isinstance(cmd, FitCommand) else None)
    if run is not None:
        record_command(Path(run), argv, seconds)


def parse_command(argv: list[str]) -> Any:
    """The command ``argv`` names, with every setting checked (:func:`~ovs3d.utils.config.check_config`)
    before anything is read, written or computed.

    Raises:
        OVS3DError: one line naming the flag as typed: a value of the wrong type or outside its range, an
            unknown choice, a malformed backend spec or a missing weights file. (Missing or unknown flags
            keep tyro's usage message and exit 2.)
    """
    argv, fit_args = _split_fit_args(argv)
    method = _method_flag(argv) or DEFAULT_METHOD
    check_method(method)
    aliased = any(a.startswith(f"--{method}.") for a in argv)

    def name(path: str) -> str:
        flag = flag_name(path)
        return f"--{method}." + flag[len("--semantic.") :] if aliased and flag.startswith("--semantic.") else flag

    with deferred_checks(), _one_line_parse_errors(name):
        cmd = tyro.cli(
            _commands(_fit_command(method)),
            args=_method_aliases(argv, method),
            prog="ovs3d",
            registry=_flag_registry(),
        )
    check_config(cmd, name=name)
    if isinstance(cmd, Batch):
        cmd.fit_args = fit_args
    elif fit_args:
        raise OVS3DError("flags after -- are only for ovs3d batch (the flags of its fits)")
    return cmd


@functools.cache
def _flag_registry() -> tyro.constructors.ConstructorRegistry:
    """How flags read their values where tyro's own reading is not enough: a float flag takes a fraction
    too (``--recon.distortion-from 1/3``, :func:`~ovs3d.utils.config.parse_number`), so that a setting
    documented as a fraction can be typed as written and matches a default of ``1 / 3`` exactly."""
    from tyro.constructors import ConstructorRegistry, PrimitiveConstructorSpec, PrimitiveTypeInfo

    registry = ConstructorRegistry()

    @registry.primitive_rule
    def _float_or_fraction(info: PrimitiveTypeInfo) -> PrimitiveConstructorSpec | None:
        if info.type is not float:
            return None
        return PrimitiveConstructorSpec(
            nargs=1,
            metavar="FLOAT",
            instance_from_str=lambda args: parse_number(args[0]),
            is_instance=lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
            str_from_instance=lambda x: [repr(float(x))],
        )

    return registry


def _split_fit_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """``ovs3d batch ... -- FIT FLAGS``: the batch's own flags and those after ``--``."""
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1 :]


@contextlib.contextmanager
def _one_line_parse_errors(name):
    """tyro's errors about one flag's value (wrong type, unknown choice, missing value) as one
    :class:`OVS3DError` line; other parse errors (unknown or missing flags) keep tyro's usage box.

    Uses tyro's parse-error hook (``tyro._errors.on_parse_error``, private): without it, tyro's own
    messages are shown.
    """
    hook_api = getattr(getattr(tyro, "_errors", None), "on_parse_error", None)
    if hook_api is None:
        yield
        return
    with hook_api(lambda event: _raise_one_line(event, name)):
        yield


def _raise_one_line(event: Any, name) -> None:
    """Raise the one-line error of a tyro parse-error event about one flag's value; return for others."""
    kind = type(event).__name__
    if kind not in ("InstantiationFailure", "InvalidChoice", "BadValue"):
        return
    try:
        arg = event.argument
        if arg is None:
            return
        flag = arg.lowered.name_or_flags[0]
        tp = arg.field.type_stripped
    except (AttributeError, IndexError, TypeError):
        return
    if flag.startswith("--semantic."):
        flag = name("semantic." + flag[len("--semantic.") :].replace("-", "_"))
    if kind == "InvalidChoice":
        raise OVS3DError(f"{flag} must be one of {', '.join(map(str, event.choices))} (got {event.value!r})")
    if kind == "BadValue":
        if getattr(event, "reason", "") == "too_few_values":
            raise OVS3DError(f"{flag} needs {_type_words(tp)}")
        raise OVS3DError(f"{flag} takes no value (got {getattr(event, 'offending_value', None)!r})")
    message = str(getattr(event, "message", "")).strip().splitlines()
    got = re.findall(r"'([^']*)'", message[-1] if message else "")
    got_text = f" (got {' '.join(repr(g) for g in got)})" if got else f" ({message[-1]})" if message else ""
    raise OVS3DError(f"{flag} must be {_type_words(tp)}{got_text}")


def _type_words(tp: Any) -> str:
    """What a flag's type takes, in words: ``an integer``, ``3 numbers``, ``a path``."""
    import typing

    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return _type_words(args[0])  # Optional
    words = {int: ("an integer", "integers"), float: ("a number or a fraction", "numbers"), Path: ("a path", "paths")}
    if typing.get_origin(tp) in (tuple, list):
        elems = [a for a in typing.get_args(tp) if a is not Ellipsis]
        one = words.get(elems[0], ("a value", "values"))[1] if elems else "values"
        fixed = typing.get_origin(tp) is tuple and Ellipsis not in typing.get_args(tp)
        return f"{len(elems)} {one}" if fixed else f"one or more {one}"
    return words.get(tp, ("a value", "values"))[0]


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers send at a time limit), raised in the main thread as Ctrl-C raises
    KeyboardInterrupt: whatever cleans up after Ctrl-C (temporary files, kept views) cleans up after it."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> typing.Iterator[None]:
    """Within: SIGTERM raises :class:`Terminated` (once; a second SIGTERM does not cut the clean-up short)."""

    def raise_terminated(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    try:
        before = signal.signal(signal.SIGTERM, raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _is_output_flag(arg: str) -> bool:
    return arg in ("-q", "--quiet", "--no-quiet", "--log-level") or arg.startswith("--log-level=")


def hoist_output_flags(argv: list[str]) -> list[str]:
    """``ovs3d --quiet fit ...`` as ``ovs3d fit ... --quiet``: :class:`Output`'s flags may come before the
    command's name."""
    i = 0
    while i < len(argv) and _is_output_flag(argv[i]):
        i += 2 if argv[i] == "--log-level" else 1
    return [*argv[i:], *argv[:i]]


def _setup_logging() -> None:
    """Library messages on stderr (timestamped without a terminal, as the progress lines), at the default level."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not on_terminal():
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=default_log_level().upper(), format=fmt, datefmt=TIME_FORMAT)


@contextlib.contextmanager
def _output_settings(cmd: Any) -> typing.Iterator[None]:
    """The command's ``--quiet`` and ``--log-level`` while it runs (restored after: the entry point may run
    in-process, e.g. in tests)."""
    root = logging.getLogger()
    level, quiet = root.level, is_quiet()
    root.setLevel(str(getattr(cmd, "log_level", None) or default_log_level()).upper())
    set_quiet(quiet or bool(getattr(cmd, "quiet", False)))
    try:
        yield
    finally:
        root.setLevel(level)
        set_quiet(quiet)


def _stopped_line(argv: list[str], terminated: bool) -> str:
    """The one line after Ctrl-C or SIGTERM: what is kept and how to resume."""
    import shlex

    how = "stopped by SIGTERM" if terminated else "interrupted (Ctrl-C)"
    return (
        f"ovs3d: {how}; finished checkpoints and cached views are kept and temporary files removed: "
        f"run the same command again to resume: {shlex.join(['ovs3d', *argv])}"
    )


def entrypoint(argv: list[str] | None = None) -> int:
    """Console script ``ovs3d``: user errors print one line and exit 1, without a traceback; Ctrl-C exits 130
    and SIGTERM 143, each with one line on how to resume."""
    _setup_logging()
    given = sys.argv[1:] if argv is None else list(argv)
    try:
        with sigterm_as_interrupt():
            cmd = parse_command(hoist_output_flags(given))
            with _output_settings(cmd):
                t0 = time.perf_counter()
                cmd.main()
                _record_command(cmd, given, time.perf_counter() - t0)
    except OVS3DError as e:
        print(f"ovs3d: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated)
        print(_stopped_line(given, terminated), file=sys.stderr, flush=True)
        return 128 + signal.SIGTERM if terminated else 128 + signal.SIGINT
    return 0


def main() -> None:
    """``python -m ovs3d.cli.main``."""
    sys.exit(entrypoint())


if __name__ == "__main__":
    main()
