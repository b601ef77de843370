"""Run folders: fit, evaluate and render, as importable functions (the CLI only parses and calls these).

A run folder (SPEC §4)::

    RUN/
      config.json                 self-describing run configuration (scene, method, backends, every stage)
      checkpoints/*.pt            atomic, self-describing checkpoints (version, kind, config, step, state)
      logs/*.jsonl                training curves
      eval/metrics.json           scores (SPEC §4/§5), eval/pred/NN/<label>.png, eval/overlays/NN.png
      render/                     images and videos of `ovs3d render`

``fit`` on an existing run resumes it with the stored configuration.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ovs3d.errors import OVS3DError
from ovs3d.foundation.features import FeatureConfig
from ovs3d.foundation.registry import spec_rule
from ovs3d.methods.reconstruction import (
    CHECKPOINT_NAME,
    ITERS_FACTOR_FIELDS,
    ReconstructionConfig,
    box_shrinks,
    for_kind,
    load_trained_field,
    render_view,
    train_reconstruction,
)
from ovs3d.methods.registry import DEFAULT_METHOD, RECONSTRUCTION_ONLY, check_method, method_config_type
from ovs3d.utils.config import check_config, config_from_dict, field_name, rule
from ovs3d.utils.console import Work, note, progress
from ovs3d.utils.device import resolve_device
from ovs3d.utils.files import atomic_write_json, remove_stale_temps, run_lock

logger = logging.getLogger(__name__)

RUN_VERSION = 1
Protocol = Literal["3dovs", "ovnerf"]


def check_device(name: str, flag: str = "--device") -> None:
    """Raise a one-line :class:`OVS3DError` unless ``name`` is ``auto`` or a torch device name (``cpu``,
    ``cuda``, ``cuda:N``); whether CUDA is there is checked when the device is used."""
    import torch

    if name == "auto":
        return
    try:
        torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise OVS3DError(f"{flag} {name!r} is not a device; use auto, cpu, cuda or cuda:N") from e


@dataclass
class FitConfig:
    """Everything ``ovs3d fit`` needs to go from a scene folder to a trained (semantic) field."""

    scene: Path = field(metadata=rule(path="dir"))
    """Scene folder (SPEC §1)."""
    out: Path = field(metadata=rule(path="not_file"))
    """Run folder to create or resume."""
    method: str = DEFAULT_METHOD
    """A semantic method of :mod:`ovs3d.methods.registry` (``3dovs``, ``ovnerf``) after the reconstruction, or
    ``rgb``: reconstruction only."""
    holdout: bool = False
    """Novel-view protocol: annotated views take no part in training (no RGB, features or masks)."""
    kind: Literal["auto", "forward", "bounded", "unbounded"] = "auto"
    """Scene kind; ``auto`` detects it from the poses and bounds (``unbounded``: 360° captures with distant
    background, marched in mip-NeRF 360's contracted space)."""
    device: str = field(default="auto", metadata=rule(custom=check_device))
    """Torch device: auto (CUDA if available), cpu, cuda, cuda:N."""
    clip: str = field(default="auto", metadata=rule(custom=spec_rule("clip")))
    """CLIP backend: sim, open_clip:<arch>:<tag or weights file>; auto = sim on synthetic scenes, else
    open_clip:ViT-B-16:openai (what 3D-OVS used)."""
    dino: str = field(default="auto", metadata=rule(custom=spec_rule("dino")))
    """DINO backend: sim, timm:<name>[:<weights file>]; auto = sim on synthetic scenes, else
    timm:vit_base_patch8_224.dino (DINO v1 ViT-B/8, as 3D-OVS)."""
    masks: str = field(default="auto", metadata=rule(custom=spec_rule("masks")))
    """Mask proposals: sim, superpixel, sam:<vit_h|vit_l|vit_b>:<checkpoint> (not used by 3dovs)."""
    allow_download: bool = False
    """Let backends download weights that are not cached (never needed with explicit weight files)."""
    cache_dir: Path | None = field(default=None, metadata=rule(path="not_file"))
    """Feature cache folder (default: <scene>/.ovs3d_cache)."""
    recon_from: Path | None = field(default=None, metadata=rule(path="dir"))
    """Start from the finished reconstruction of another run of the same scene, protocol and ``--recon.*``
    settings (e.g. to train several semantic variants on one field); a run made with other settings is refused."""
    recon: ReconstructionConfig = field(default_factory=ReconstructionConfig)
    """RGB reconstruction stage."""
    features: FeatureConfig = field(default_factory=FeatureConfig)
    """Foundation-model features (pixel CLIP, DINO)."""
    semantic: Any = None
    """The method's own config (its class is the registry's ``method_config_type(method)``); None = its
    defaults; unused by ``rgb``."""

    def __post_init__(self) -> None:
        check_method(self.method)
        cls = method_config_type(self.method)
        if cls is None:
            self.semantic = None
        elif self.semantic is None:
            self.semantic = cls()
        elif isinstance(self.semantic, dict):
            self.semantic = _method_config(self.method, self.semantic)
        elif not isinstance(self.semantic, cls):
            raise TypeError(f"method {self.method!r} takes a {cls.__name__}, not a {type(self.semantic).__name__}")


def _method_config(method: str, data: dict) -> Any:
    """A method's config from its stored dictionary (the method reads settings older runs lack)."""
    from ovs3d.methods.registry import get_method

    return get_method(method).config_from_dict(data)


def _load_scene(path: Path, kind: str):
    from ovs3d.io.loader import load_scene

    return load_scene(path, kind=kind)


def _config_dict(cfg: FitConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["scene"] = str(Path(cfg.scene).resolve())
    d["out"] = str(Path(cfg.out).resolve())
    if cfg.recon_from is not None:
        d["recon_from"] = str(Path(cfg.recon_from).resolve())
    return json.loads(json.dumps(d, default=str))  # plain JSON types, as stored


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        a, b = list(a), list(b)
    return [] if a == b else [prefix.rstrip(".")]


def _at(tree: Any, dotted: str) -> Any:
    """The value at a dotted key of nested dicts (None where a level is missing)."""
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _show(value: Any) -> str:
    """A stored value as a flag takes it back: floats in full (``repr``), so that passing it matches exactly."""
    return "unset" if value is None else repr(value) if isinstance(value, float) else str(value)


def _changes(run_side: dict[str, Any], now: dict[str, Any], keys: list[str], limit: int = 4) -> str:
    """``key (run: X, now: Y)`` for the first ``limit`` differing ``keys``, so that a refused resume after a
    default changed says which value to pass."""
    shown = [f"{k} (run: {_show(_at(run_side, k))}, now: {_show(_at(now, k))})" for k in keys[:limit]]
    more = f", and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(shown) + more


def read_run_config(run: Path) -> dict[str, Any]:
    """The stored ``config.json`` of a run folder (one clear error if it is not a run)."""
    path = Path(run) / "config.json"
    if not path.is_file():
        raise OVS3DError(f"{run} is not an ovs3d run folder (no config.json); create one with `ovs3d fit`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise OVS3DError(f"{path} is not valid JSON ({e.msg}); delete the run folder and fit again") from e
    if not isinstance(data, dict) or data.get("version") != RUN_VERSION:
        raise OVS3DError(f"{path} is from another ovs3d version; fit into a new --out folder")
    fit_cfg = data.get("fit")
    missing = [k for k in ("scene", "out") if not isinstance(fit_cfg, dict) or k not in fit_cfg]
    if missing:
        raise OVS3DError(
            f"{path} is not a complete ovs3d run configuration (no fit {'/'.join(missing)}); it was not written "
            "by `ovs3d fit`: fit into a new --out folder"
        )
    return data


def fit(cfg: FitConfig) -> Path:
    """Create or resume a run: reconstruction, then the method's features and semantic training.

    Every setting is checked first (:func:`~ovs3d.utils.config.check_config`: ranges, choices, backend specs
    and their weight files, paths), then the run folder and the scene; nothing is written before all pass.

    Returns:
        The run folder.

    Raises:
        OVS3DError: a setting, the run folder or the scene is not usable (one line).
    """
    check_config(cfg)  # every setting, before anything is read, written or computed
    run = Path(cfg.out)
    new = _config_dict(cfg)
    used = _used_backends(cfg)
    if (run / "config.json").exists():
        stored_run = read_run_config(run)
        stored = _with_legacy_settings(stored_run["fit"], stored_run.get("scene_kind"), cfg.recon)
        stored_method = stored.get("method", DEFAULT_METHOD)
        if stored_method != RECONSTRUCTION_ONLY and isinstance(stored.get("semantic"), dict):
            # settings added since the run was made mean what they did
            stored = {**stored, "semantic": asdict(_method_config(stored_method, stored["semantic"]))}
        # Settings the method never reads (a reconstruction-only run: the semantic stage; any method: the
        # backends it does not use) do not stop it from resuming.
        unused: set[str] = set()
        if stored_method == cfg.method:
            unused = {"clip", "dino", "masks"} - used
            if cfg.method == RECONSTRUCTION_ONLY:
                unused |= {"semantic", "features"}
        changed = [k for k in _diff(stored, new) if k != "out" and k.split(".")[0] not in unused]
        if changed:
            raise OVS3DError(
                f"{run} was created with other settings ({_changes(stored, new, changed)}); "
                "resume it with the same flags or choose a new --out"
            )
        note(f"resuming run {run} (its finished stages are kept)")
    elif run.exists() and any(run.iterdir()):
        raise OVS3DError(f"{run} exists and is not an ovs3d run folder; choose a new --out")
    scene = _load_scene(cfg.scene, cfg.kind)
    device = resolve_device(cfg.device)
    views = scene.train_views(cfg.holdout)
    if not views:
        raise OVS3DError("no training views are left (every view is annotated and --holdout is set)")
    method_cls, backends = None, None
    if cfg.method != RECONSTRUCTION_ONLY:
        from ovs3d.methods.registry import get_method

        method_cls = get_method(cfg.method)
        method_cls.check_scene(scene)
        # Build (and so validate) the foundation models before writing anything or spending minutes on the
        # reconstruction: a bad flag leaves no half-made run behind.
        backends = _backends(cfg, scene, device, used)
    run.mkdir(parents=True, exist_ok=True)
    with run_lock(run):
        if removed := remove_stale_temps(run, recursive=True):
            note(f"removed {removed} temporary file(s) an earlier run killed outright left in {run}")
        atomic_write_json(
            run / "config.json",
            {"version": RUN_VERSION, "fit": new, "scene_kind": scene.kind, "classes": scene.classes},
        )
        note(f"fit {cfg.method}: {len(views)} training views of {scene.root} ({scene.kind}) on {device} into {run}")
        ckpt = run / "checkpoints" / CHECKPOINT_NAME
        if cfg.recon_from is not None and not ckpt.exists():
            _copy_reconstruction(Path(cfg.recon_from), cfg, ckpt)
        train_reconstruction(scene, run, cfg.recon, views, device=device)
        if method_cls is not None:
            from ovs3d.methods.base import fit_method

            fit_method(method_cls, scene, run, cfg, device, backends)
    return run


def _with_legacy_settings(
    fit_cfg: dict[str, Any], scene_kind: str | None, recon: ReconstructionConfig
) -> dict[str, Any]:
    """A stored ``fit`` config with the settings added since it was written, as they were then: no DINO grid floor
    (``features.dino_min_cells`` None), and for the reconstruction a black background (``background``) or one
    that came in at once (``background_ramp`` 0), the distortion loss from the start (``distortion_from`` 0) and
    at once (``distortion_ramp`` 0),
    ``unbounded_iters_factor`` 1 for an unbounded scene and ``bounded_iters_factor`` 1 for a room (older runs
    trained every kind alike), and no box
    shrink (``shrink_kinds`` empty) where ``recon`` would shrink the run's kind; where a setting changes
    nothing for the run's kind it takes ``recon``'s value and never blocks a resume."""
    features = fit_cfg.get("features")
    if isinstance(features, dict) and "dino_min_cells" not in features:  # DINO saw the image as dino_downscale said
        fit_cfg = {**fit_cfg, "features": {**features, "dino_min_cells": None}}
    stored_recon = fit_cfg.get("recon")
    if not isinstance(stored_recon, dict):
        return fit_cfg
    added: dict[str, Any] = {}
    black_kind = for_kind(recon, str(scene_kind)).background == "black"  # recon trains this kind over black
    if "background" not in stored_recon:  # every ray ended on black: so does recon's on a kind it does not cover
        added["background"] = recon.background if black_kind else "black"
        added["background_kinds"] = list(recon.background_kinds)
        added["background_from"] = recon.background_from
    if "background_ramp" not in stored_recon:  # the background came in at once (changes nothing over black)
        stored_black = {**stored_recon, **added}.get("background") == "black"
        added["background_ramp"] = recon.background_ramp if stored_black or black_kind else 0.0
    if "distortion_from" not in stored_recon:  # the distortion loss applied from the start
        added["distortion_from"] = 0.0
        added["distortion_from_kinds"] = list(recon.distortion_from_kinds)
    if "distortion_ramp" not in stored_recon:  # the distortion loss came in at once
        added["distortion_ramp"] = 0.0
    for kind, factor_name in ITERS_FACTOR_FIELDS.items():  # the kind trained n_iters; elsewhere it changes nothing
        if factor_name not in stored_recon:
            added[factor_name] = 1.0 if scene_kind == kind else getattr(recon, factor_name)
    if "shrink_kinds" not in stored_recon:
        added["shrink_kinds"] = [] if box_shrinks(recon, str(scene_kind)) else list(recon.shrink_kinds)
        added["shrink_iter"] = recon.shrink_iter
        added["shrink_margin"] = recon.shrink_margin
    return {**fit_cfg, "recon": {**stored_recon, **added}} if added else fit_cfg


def _used_backends(cfg: FitConfig) -> set[str]:
    """The backend families the run's method reads; a warning names each backend flag it ignores."""
    if cfg.method == RECONSTRUCTION_ONLY:
        used: set[str] = set()
    else:
        from ovs3d.methods.registry import get_method

        used = set(get_method(cfg.method).needs(cfg.semantic))
    for family in ("clip", "dino", "masks"):
        spec = getattr(cfg, family)
        if family not in used and spec != "auto":
            logger.warning("--%s %s is not used by --method %s (checked, then ignored)", family, spec, cfg.method)
    return used


def _backends(cfg: FitConfig, scene, device, families: set[str]) -> dict[str, Any]:
    """The foundation models a method needs, from the run's flags (``auto``: simulated on synthetic scenes)."""
    from ovs3d.foundation.registry import build_backends

    specs = {"clip": cfg.clip, "dino": cfg.dino, "masks": cfg.masks}
    return build_backends(families, specs, scene.root, scene.has_sim, device, cfg.allow_download)


def _copy_reconstruction(source_run: Path, cfg: FitConfig, dest: Path) -> None:
    """Copy a finished reconstruction checkpoint of a compatible run (same scene and protocol)."""
    import shutil

    src_run = read_run_config(source_run)
    src_cfg = src_run["fit"]
    if src_cfg["scene"] != str(Path(cfg.scene).resolve()) or bool(src_cfg["holdout"]) != cfg.holdout:
        raise OVS3DError(f"--recon-from {source_run} was fitted on another scene or protocol")
    kind = str(src_run.get("scene_kind"))
    changed, theirs, ours = _recon_differences(src_run, cfg.recon)
    if changed:
        raise OVS3DError(
            f"--recon-from {source_run} was reconstructed with other settings ({_changes(theirs, ours, changed)}); "
            "pass its --recon.* flags too, or leave out --recon-from to reconstruct anew"
        )
    src = Path(source_run) / "checkpoints" / CHECKPOINT_NAME
    from ovs3d.utils.files import atomic_path, load_checkpoint

    n_iters = for_kind(cfg.recon, kind).n_iters
    if load_checkpoint(src, kind="reconstruction")["step"] < n_iters:
        raise OVS3DError(f"--recon-from {source_run} has not finished its reconstruction; fit it first")
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


_RECON_BOOKKEEPING = ("checkpoint_every", "log_every")
"""Reconstruction settings that do not change the reconstruction (a copied one may differ in them)."""


def _recon_differences(
    src_run: dict[str, Any], recon: ReconstructionConfig
) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
    """The reconstruction settings (as the run's scene kind applies them) in which a stored run differs from
    ``recon``, with both sides as dicts; a run stored before a setting existed reads as it trained then
    (:func:`_with_legacy_settings`)."""
    kind = str(src_run.get("scene_kind"))
    stored = _with_legacy_settings(src_run["fit"], src_run.get("scene_kind"), recon).get("recon")
    ours = asdict(for_kind(recon, kind))
    if not isinstance(stored, dict):
        return ["recon"], {}, ours
    theirs = asdict(for_kind(config_from_dict(ReconstructionConfig, stored), kind))
    return [k for k in _diff(theirs, ours) if k.split(".")[0] not in _RECON_BOOKKEEPING], theirs, ours


COMMANDS_LOG = "commands.jsonl"
"""A run's ``logs/`` file of the commands that made and used it (what ``ovs3d report`` shows)."""


def record_command(run: Path, argv: list[str], seconds: float, via: str | None = None) -> None:
    """Append a finished ``ovs3d`` command to ``RUN/logs/commands.jsonl``: its time, working folder, argv,
    shell-quoted command line, duration, and what ran it (``via``, e.g. ``ovs3d batch``). Nothing is written
    for a folder that is not a run."""
    import datetime
    import os
    import shlex

    from ovs3d.utils.files import atomic_write_text

    if not (Path(run) / "config.json").is_file():
        return
    log = Path(run) / "logs" / COMMANDS_LOG
    entry = {
        "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cwd": os.getcwd(),
        "argv": ["ovs3d", *argv],
        "command": shlex.join(["ovs3d", *argv]),
        "seconds": round(seconds, 2),
    }
    if via:
        entry["via"] = via
    old = log.read_text() if log.is_file() else ""
    atomic_write_text(log, old + json.dumps(entry) + "\n")


def fit_config_from_run(run: Path) -> FitConfig:
    """Rebuild the :class:`FitConfig` a run was created with."""
    stored = read_run_config(run)
    d = dict(_with_legacy_settings(stored["fit"], stored.get("scene_kind"), ReconstructionConfig()))
    method = d.get("method", DEFAULT_METHOD)
    semantic = d.pop("semantic", None)
    try:
        cfg = config_from_dict(FitConfig, {**d, "method": RECONSTRUCTION_ONLY})
        cfg.method = method
        cfg.semantic = None if method == RECONSTRUCTION_ONLY else _method_config(method, semantic or {})
        check_config(cfg, name=field_name, outside=False)
    except OVS3DError as e:
        raise OVS3DError(f"{Path(run) / 'config.json'} holds settings ovs3d cannot use ({e}); fit a new run") from e
    except (TypeError, ValueError, AttributeError) as e:
        raise OVS3DError(f"{Path(run) / 'config.json'} is damaged ({e}); fit a new run") from e
    return cfg


def unfinished_stages(run: Path, cfg: FitConfig | None = None) -> list[str]:
    """What a run still has to train, e.g. ``["the reconstruction stopped at step 10 of 40"]``; empty when
    every stage of its method has finished.

    Args:
        run: run folder.
        cfg: its configuration (default: read from ``run``).
    """
    from ovs3d.methods.base import semantic_checkpoint
    from ovs3d.utils.files import load_checkpoint

    cfg = cfg or fit_config_from_run(run)
    kind = str(read_run_config(run).get("scene_kind"))
    stages = [("reconstruction", Path(run) / "checkpoints" / CHECKPOINT_NAME, for_kind(cfg.recon, kind).n_iters)]
    if cfg.method != RECONSTRUCTION_ONLY:
        stages.append((f"{cfg.method} semantic stage", semantic_checkpoint(run), cfg.semantic.n_iters))
    out = []
    for name, ckpt, n_iters in stages:
        if not ckpt.exists():
            out.append(f"the {name} has not started" if out else f"the {name} has no checkpoint yet")
            continue
        step = int(load_checkpoint(ckpt)["step"])
        if step < n_iters:
            out.append(f"the {name} stopped at step {step} of {n_iters}")
    return out


def require_finished(run: Path, cfg: FitConfig, then: str) -> None:
    """Raise one line naming where an unfinished run stopped and the command that finishes it (scoring or
    rendering a half-trained field would pass for the method's result).

    Args:
        run: run folder.
        cfg: its configuration.
        then: what to do after the fit (``evaluate``, ``render``), for the message.
    """
    unfinished = unfinished_stages(run, cfg)
    if unfinished:
        raise OVS3DError(
            f"run {run} is unfinished ({'; '.join(unfinished)}): finish it by running its `ovs3d fit --scene "
            f"{cfg.scene} --out {run} ...` command again with the same flags (it resumes), then {then}"
        )


def psnr_views(run: Path) -> tuple[list[int], str]:
    """Views PSNR is reported on (SPEC §4): held-out views under --holdout, else the training views."""
    cfg = fit_config_from_run(run)
    scene = _load_scene(cfg.scene, cfg.kind)
    if cfg.holdout:
        return list(scene.annotated), "held-out views"
    return scene.train_views(False), "training views"


def _load_method(cfg: FitConfig, trained, run: Path, device):
    from ovs3d.methods.registry import get_method

    return get_method(cfg.method).load(trained, Path(run), device)


def evaluate(run: Path, max_psnr_views: int = 8, protocol: Protocol = "3dovs") -> dict[str, Any]:
    """Score a run (SPEC §4/§5): segmentation of every annotated view, and PSNR; writes ``RUN/eval/``.

    Only a finished run is scored: a run whose fit was interrupted (a stage short of its ``n_iters``, or
    without a checkpoint) raises :class:`OVS3DError` naming the stage and the step it stopped at, and how
    to finish it (the same ``ovs3d fit`` command resumes it); nothing is written.

    Args:
        run: run folder.
        max_psnr_views: PSNR over the training views uses at most this many, evenly spread (speed).
        protocol: how segmentation is scored (SPEC §5): ``3dovs`` (every label of every annotated view,
            absent ones score 0) or ``ovnerf`` (void ignored, labels absent from a view skipped). Whether
            the annotated views trained is the run's own choice (``--holdout``), recorded as ``split``.

    Returns:
        The metrics dictionary written to ``RUN/eval/metrics.json``.
    """
    from ovs3d.eval.metrics import psnr

    t0 = time.perf_counter()
    if protocol not in ("3dovs", "ovnerf"):
        raise OVS3DError(f"unknown protocol {protocol!r}; choose 3dovs or ovnerf")
    cfg = fit_config_from_run(run)
    require_finished(run, cfg, "evaluate")
    scene = _load_scene(cfg.scene, cfg.kind)
    device = resolve_device(cfg.device)
    trained = load_trained_field(Path(run) / "checkpoints" / CHECKPOINT_NAME, device)
    segmentation = cfg.method != RECONSTRUCTION_ONLY and bool(scene.classes)
    semantic = None
    if segmentation:
        # The joint phase fine-tunes the appearance: PSNR is measured on the field the run ends with.
        semantic = _load_method(cfg, trained, Path(run), device)
    views = list(scene.annotated) if cfg.holdout else scene.train_views(False)
    if not cfg.holdout and len(views) > max_psnr_views:
        views = [views[i] for i in np.linspace(0, len(views) - 1, max_psnr_views).round().astype(int)]
    ds = cfg.recon.rgb_downscale
    per_view, images = {}, {}
    which = "held-out" if cfg.holdout else "training"
    for v in progress(views, desc=f"PSNR of the {which} views", work=Work("views")):
        out = render_view(trained, scene, v, ds)
        gt = scene.load_image(v, ds)
        per_view[v] = float(psnr(out["rgb"], gt))
        images[v] = (out["rgb"], gt)
    split = "novel-view" if cfg.holdout else "3dovs"
    mean_psnr = float(np.mean(list(per_view.values()))) if per_view else float("nan")
    extra = {
        "psnr": mean_psnr,
        "psnr_views": "held-out views" if cfg.holdout else "training views",
        "psnr_per_view": {f"{v:02d}": p for v, p in per_view.items()},
        "method": cfg.method,
        "rgb_resolution": list(scene.image_size(ds)),
        "psnr_field": "after the semantic stage" if semantic else "reconstruction",
    }
    extra["seconds_psnr"] = time.perf_counter() - t0  # loading and PSNR renders; segmentation adds its own
    eval_dir = Path(run) / "eval"
    if not segmentation:
        from ovs3d.eval.report import write_rgb_eval

        preds = {v: pred for v, (pred, _) in images.items()}
        gts = {v: gt for v, (_, gt) in images.items()}
        rgb_extra = {k: val for k, val in extra.items() if k != "psnr"}  # write_rgb_eval computes it
        return write_rgb_eval(eval_dir, per_view, preds, gts, split, rgb_extra)
    return _evaluate_segmentation(scene, cfg, semantic, eval_dir, split, protocol, extra)


def _evaluate_segmentation(scene, cfg: FitConfig, method, eval_dir: Path, split: str, protocol: str, extra: dict):
    """Render every annotated view at the semantic resolution, let the method predict, score (SPEC §5), write."""
    from ovs3d.eval.metrics import relevancy_metrics, view_key
    from ovs3d.eval.report import write_segmentation_eval
    from ovs3d.eval.visualize import relevancy_heatmap
    from ovs3d.utils.files import atomic_write_image

    t0 = time.perf_counter()
    ds = cfg.features.semantic_downscale
    negatives = method_negatives(cfg, scene, method)
    preds, gts, rgbs, rels = {}, {}, {}, {}
    for v in progress(list(scene.annotated), desc="evaluating views", work=Work("views")):
        out = method.render_view(scene, v, ds)
        preds[v] = method.predict_labels(out).cpu().numpy().astype(np.int64)
        gts[v] = scene.load_masks(v, ds)
        rgbs[v] = scene.load_image(v, ds)
        rel = method.relevancy(out, method.text, negatives).cpu().numpy()  # [h, w, C]
        rels[v] = np.moveaxis(rel, -1, 0)
        for c, name in enumerate(scene.classes):
            heat = relevancy_heatmap(rels[v][c], out["rgb"].cpu().numpy() if "rgb" in out else None)
            atomic_write_image(eval_dir / "relevancy" / view_key(v) / f"{slugify(name)}.png", heat)
    w, h = scene.image_size(ds)
    extra = {**extra, "resolution": [w, h], "holdout": cfg.holdout, "seconds_segmentation": time.perf_counter() - t0}
    extra["semantic"] = {k: getattr(method.cfg, k) for k in method.summary_settings}
    extra["relevancy"] = relevancy_metrics(rels, gts, list(scene.classes))
    return write_segmentation_eval(eval_dir, list(scene.classes), preds, gts, rgbs, split, extra, metric=protocol)


def method_negatives(cfg: FitConfig, scene, method, clip=None):
    """``[N, D]`` unit embeddings of LERF's canonical negatives for a method: its own (LERF stores the ones it
    trained with), else encoded by ``clip`` (default: the run's CLIP backend, built here)."""
    import torch

    from ovs3d.relevancy import CANONICAL_NEGATIVES

    own = getattr(method, "negatives", None)
    if own is not None:
        return own
    clip = clip or _backends(cfg, scene, method.device, {"clip"})["clip"]
    return torch.nn.functional.normalize(clip.encode_text(list(CANONICAL_NEGATIVES)).float(), dim=-1)


def render(
    run: Path,
    views: list[int] | None = None,
    path_frames: int = 60,
    labels: list[str] | None = None,
    out: Path | None = None,
    fps: int = 24,
) -> Path:
    """Render RGB and depth (and, after a semantic fit, segmentation and per-label relevancy) of chosen
    views and along a smooth camera path; writes images and MP4 videos.

    Args:
        run: run folder.
        views: views to render (default: the annotated views, else the first, middle and last).
        path_frames: frames of the camera path video (0: no video).
        labels: texts to render relevancy for (any text; default: the scene's labels).
        out: output folder (default ``RUN/render``).
        fps: video frame rate.

    Returns:
        The output folder.
    """
    import torch

    from ovs3d.eval.visualize import depth_colormap, label_palette, overlay_segmentation, relevancy_heatmap
    from ovs3d.io.video import write_video
    from ovs3d.methods.base import as_view
    from ovs3d.render.rays import pixel_grid
    from ovs3d.render.scene_rays import camera_rays_in_field, ray_near
    from ovs3d.utils.files import atomic_write_image

    cfg = fit_config_from_run(run)
    require_finished(run, cfg, "render")
    scene = _load_scene(cfg.scene, cfg.kind)
    device = resolve_device(cfg.device)
    trained = load_trained_field(Path(run) / "checkpoints" / CHECKPOINT_NAME, device)
    semantic = None
    sem_ckpt = Path(run) / "checkpoints" / "semantic.pt"
    if cfg.method != RECONSTRUCTION_ONLY and sem_ckpt.exists():
        method = _load_method(cfg, trained, Path(run), device)
        queries = list(labels or scene.classes)
        needs_clip = bool(labels) or getattr(method, "negatives", None) is None
        clip = _backends(cfg, scene, device, {"clip"})["clip"] if needs_clip else None  # built once
        if labels:
            qtext = torch.nn.functional.normalize(clip.encode_text(queries).float(), dim=-1)
        else:
            qtext = method.text
        semantic = (method, queries, qtext)
        negatives = method_negatives(cfg, scene, method, clip)
    out = Path(out or Path(run) / "render")
    ds = cfg.features.semantic_downscale if semantic else cfg.recon.rgb_downscale
    w, h = scene.image_size(ds)
    u, v = pixel_grid(w, h)
    near = ray_near(scene)
    palette = label_palette(len(scene.classes))
    depth_range = (float(np.percentile(scene.near_far[:, 0], 5)), float(np.percentile(scene.near_far[:, 1], 95)))

    def frame(c2w: np.ndarray, intr: np.ndarray) -> dict[str, np.ndarray]:
        o, d = camera_rays_in_field(scene, c2w, intr, ds, u, v)
        if semantic is None:
            from ovs3d.methods.reconstruction import render_rays_chunked

            r = render_rays_chunked(trained, o, d, near, (h, w))
            rgb, depth = r["rgb"], r["depth"]
        else:
            method, queries, qtext = semantic
            r = method.render_rays(o, d, near)
            rgb = r["rgb"].reshape(h, w, 3).numpy()
            depth = r["depth"].reshape(h, w).numpy()
        res = {"rgb": (np.clip(rgb, 0, 1) * 255).astype(np.uint8)}
        res["depth"] = depth_colormap(_depth_to_metric(scene, depth), *depth_range)
        if semantic is not None:
            labels_map = method.predict_labels(as_view(r, h, w)).cpu().numpy()  # a whole view, as eval
            res["segmentation"] = overlay_segmentation(rgb, labels_map, palette)
            rel = method.relevancy(r, qtext, negatives).cpu()  # [h*w, Q] LERF relevancy in [0, 1]
            for qi, q in enumerate(queries):
                res[f"relevancy_{slugify(q)}"] = relevancy_heatmap(rel[:, qi].reshape(h, w).numpy(), rgb)
        return res

    intr_all = scene.intrinsics_at(ds)
    if views is None:
        views = list(scene.annotated) or sorted({0, scene.n_views // 2, scene.n_views - 1})
    for view in progress(views, desc="rendering views", work=Work("views")):
        for kind, img in frame(scene.c2w[view], intr_all[view]).items():
            atomic_write_image(out / "views" / f"{view:02d}_{kind}.png", img)
    if path_frames > 0:
        cams = camera_path(scene, path_frames)
        videos: dict[str, list[np.ndarray]] = {}
        for c2w in progress(list(cams), desc="rendering camera path", work=Work("frames")):
            for kind, img in frame(c2w, intr_all[0]).items():
                videos.setdefault(kind, []).append(img)
        for kind, frames in videos.items():
            write_video(out / f"path_{kind}.mp4", frames, fps=fps)
    return out


def camera_path(scene, n_frames: int) -> np.ndarray:
    """``[n_frames, 3, 4]`` a smooth camera path of a scene: a spiral for forward-facing scenes, else an orbit."""
    from ovs3d.render.paths import orbit_path, spiral_path

    if scene.kind == "forward":
        return np.asarray(spiral_path(scene.c2w, scene.near_far, n_frames))
    # bounded: the box's centre; unbounded: the contracted box is centred on the object
    center = (np.asarray(scene.aabb)[0] + np.asarray(scene.aabb)[1]) / 2
    return np.asarray(orbit_path(scene.c2w, center, n_frames))


def slugify(text: str) -> str:
    """A file-name slug of a text: lower case, runs of other characters as ``_``, at most 40 characters."""
    out, prev = [], "_"
    for c in text.lower():
        c = c if c.isalnum() else "_"
        if c != "_" or prev != "_":
            out.append(c)
        prev = c
    return "".join(out).strip("_")[:40] or "query"


def _depth_to_metric(scene, depth: np.ndarray) -> np.ndarray:
    """Camera depth from the ray parameter: NDC t in [0, 1) maps to depth near / (1 - t)."""
    if scene.kind == "forward":
        return 1.0 / np.clip(1.0 - depth, 1e-3, None)
    return depth


def demo(out: Path = Path("ovs3d-demo"), seed: int = 0, method: str = DEFAULT_METHOD, frames: int = 30) -> dict:
    """``ovs3d demo``: write the default synthetic scene, fit it, evaluate, render and write the report; returns
    the metrics (with ``"report"``: the path of ``RUN/report/index.html``).

    The scene goes to ``out/scene`` and the run to ``out/run``; an existing demo folder is reused
    (the scene is kept and the run resumes).
    """
    from ovs3d.scenegen import make_scene

    out = Path(out)
    scene_dir = out / "scene"
    if not (scene_dir / "poses_bounds.npy").exists():
        make_scene("tabletop", seed, scene_dir)
    fit(FitConfig(scene=scene_dir, out=out / "run", method=method))
    metrics = evaluate(out / "run")
    render(out / "run", path_frames=frames)
    from ovs3d.report import build_report

    metrics["report"] = str(build_report(out / "run"))  # the page the demo ends by pointing to
    return metrics
