"""``ovs3d``: one entry point, subcommands (SPEC §3). Parses flags and calls library functions."""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from ovs3d.errors import OVS3DError
from ovs3d.foundation.features import FeatureConfig
from ovs3d.methods.reconstruction import ReconstructionConfig
from ovs3d.methods.threedovs.trainer import SemanticConfig


def _console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


@dataclass
class MakeScene:
    """Write a synthetic scene in the SPEC §1 layout."""

    out: Path
    """Scene folder to create."""
    preset: Literal["tabletop"] = "tabletop"
    """Scene preset (tabletop: forward-facing table with objects in front of a wall)."""
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
    min_size_factor: float | None = None
    """Minimum short side of every object, in smallest CLIP patches (default: the preset's)."""

    def main(self) -> None:
        from dataclasses import fields

        from ovs3d.scenegen import make_scene

        fixed = {"out", "preset", "seed"}
        overrides = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in fixed and getattr(self, f.name) is not None
        }
        t0 = time.perf_counter()
        path = make_scene(self.preset, self.seed, self.out, **overrides)
        _console().print(f"wrote {self.preset} scene (seed {self.seed}) to {path} in {time.perf_counter() - t0:.1f}s")


@dataclass
class Fit:
    """Scene -> trained (semantic) radiance field: reconstruction, cached features, semantic training."""

    scene: Path
    """Scene folder (SPEC §1)."""
    out: Path
    """Run folder (created, or resumed if it exists)."""
    method: Literal["3dovs", "rgb"] = "3dovs"
    """3dovs: the full 3D-OVS method; rgb: reconstruction only."""
    holdout: bool = False
    """Novel-view protocol: annotated views take no part in training."""
    kind: Literal["auto", "forward", "bounded"] = "auto"
    """Scene kind override (auto: detected from the poses)."""
    clip: str = "auto"
    """CLIP backend: sim | open_clip:<arch>:<tag or weights file> (auto: sim on synthetic scenes)."""
    dino: str = "auto"
    """DINO backend: sim | timm:<name>[:<weights file>] (auto: sim on synthetic scenes)."""
    masks: str = "auto"
    """Mask backend: sim | superpixel | sam:<vit_h|vit_l|vit_b>:<checkpoint>."""
    allow_download: bool = False
    """Allow backends to download missing weights."""
    cache_dir: Path | None = None
    """Feature cache folder (default <scene>/.ovs3d_cache)."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N."""
    recon_from: Path | None = None
    """Start from the finished reconstruction of another run of the same scene and protocol."""
    recon: ReconstructionConfig = field(default_factory=ReconstructionConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)

    def main(self) -> None:
        from ovs3d.run import FitConfig, fit

        cfg = FitConfig(**{k: getattr(self, k) for k in FitConfig.__dataclass_fields__})
        t0 = time.perf_counter()
        run = fit(cfg)
        _console().print(f"fit done in {time.perf_counter() - t0:.0f}s: {run}")


@dataclass
class Eval:
    """Render every annotated view of a run and score it (SPEC §4-§5); PSNR for reconstruction runs."""

    run: Path
    """Run folder."""

    def main(self) -> None:
        from ovs3d.run import evaluate

        _print_metrics(evaluate(self.run), self.run / "eval")


@dataclass
class Render:
    """Render RGB, depth (and segmentation, relevancy) for views and along a camera path (images + MP4)."""

    run: Path
    """Run folder."""
    views: list[int] | None = None
    """Views to render (default: the annotated views)."""
    frames: int = 60
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
class Features:
    """Extract and cache the foundation-model features of a scene (what fit reuses)."""

    scene: Path
    """Scene folder."""
    clip: str = "auto"
    """CLIP backend (see fit)."""
    dino: str = "auto"
    """DINO backend (see fit)."""
    masks: str = "none"
    """Mask backend to also cache proposals for (none | sim | superpixel | sam:...)."""
    holdout: bool = False
    """Only the training views of the novel-view protocol."""
    allow_download: bool = False
    """Allow backends to download missing weights."""
    cache_dir: Path | None = None
    """Cache folder (default <scene>/.ovs3d_cache)."""
    device: str = "auto"
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
class Baseline:
    """The 2D baseline: per annotated view, argmax of that view's own CLIP relevancy (no 3D)."""

    scene: Path
    """Scene folder."""
    out: Path
    """Output folder (written like RUN/eval)."""
    clip: str = "auto"
    """CLIP backend (see fit)."""
    normalize: bool = False
    """Min-max normalise each label's relevancy over the view before the argmax (3D-OVS Eq. 7)."""
    allow_download: bool = False
    """Allow backends to download missing weights."""
    cache_dir: Path | None = None
    """Cache folder (default <scene>/.ovs3d_cache)."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N."""
    scales: tuple[int, ...] | None = None
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
class Demo:
    """make-scene + fit + eval + render on the embedded default scene; prints the metrics."""

    out: Path = Path("ovs3d-demo")
    """Folder for the scene and the run."""
    seed: int = 0
    """Scene seed."""
    method: Literal["3dovs", "rgb"] = "3dovs"
    """Method to fit."""
    frames: int = 30
    """Frames of the rendered camera path."""

    def main(self) -> None:
        from ovs3d.run import demo

        t0 = time.perf_counter()
        metrics = demo(self.out, self.seed, self.method, self.frames)
        _print_metrics(metrics, self.out / "run" / "eval")
        _console().print(f"demo finished in {time.perf_counter() - t0:.0f}s; pictures in {self.out / 'run'}")


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
    con.print(table)
    if "per_view" in metrics and "classes" in metrics:
        per = Table(title="per-view mIoU")
        per.add_column("view")
        per.add_column("mIoU", justify="right")
        per.add_column("accuracy", justify="right")
        for v, m in metrics["per_view"].items():
            if "miou" in m:
                per.add_row(str(v), f"{m['miou']:.3f}", f"{m['accuracy']:.3f}")
        con.print(per)
    con.print(f"written to {where}")


Commands = (
    Annotated[MakeScene, tyro.conf.subcommand("make-scene")]
    | Annotated[Fit, tyro.conf.subcommand("fit")]
    | Annotated[Eval, tyro.conf.subcommand("eval")]
    | Annotated[Render, tyro.conf.subcommand("render")]
    | Annotated[Features, tyro.conf.subcommand("features")]
    | Annotated[Baseline, tyro.conf.subcommand("baseline")]
    | Annotated[Demo, tyro.conf.subcommand("demo")]
)


def entrypoint(argv: list[str] | None = None) -> int:
    """Console script ``ovs3d``: user errors print one line and exit 1, without a traceback."""
    logging.basicConfig(
        level=os.environ.get("OVS3D_LOG", "WARNING").upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    cmd = tyro.cli(Commands, args=argv, prog="ovs3d")
    try:
        cmd.main()
    except OVS3DError as e:
        print(f"ovs3d: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ovs3d: interrupted (checkpoints are intact; run the same command again to resume)", file=sys.stderr)
        return 130
    return 0


def main() -> None:
    """``python -m ovs3d.cli.main``."""
    sys.exit(entrypoint())


if __name__ == "__main__":
    main()
