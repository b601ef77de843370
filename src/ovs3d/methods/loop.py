"""The one training loop of every stage (reconstruction, each semantic method).

A stage says what it trains (:class:`Stage`); the loop owns what every stage needs the same way: resuming
from the stage's checkpoint, the random state, the learning-rate schedule over parameter groups, a fresh
optimiser whenever the stage's phase changes (new parameters after an upsampling, more parameters in a
joint phase), progress, JSONL logs, atomic self-describing checkpoints and callbacks every N steps.

Order within iteration ``it`` (its result is step ``it + 1``): :meth:`Stage.before_step` (may replace
parameters or update caches), a new optimiser if ``phase(it)`` differs from the current one, the
learning rates ``base_lr * lr_factor(it)``, :meth:`Stage.loss`, backward, optimiser step; then the log
record, the callbacks and the checkpoint of step ``it + 1``. A checkpoint written at step ``s`` holds the
optimiser of ``phase(s - 1)``, so a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from ovs3d.utils.console import Work, cost_hint, note, progress
from ovs3d.utils.files import atomic_write_text, load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)


class Stage(Protocol):
    """What the loop trains.

    Attributes:
        kind: checkpoint kind (``"reconstruction"``, ``"semantic"``); checked on resume.
        n_iters: total iterations.
        stats: counters saved with each checkpoint (the loop keeps ``train_seconds`` in it).
    """

    kind: str
    n_iters: int
    stats: dict[str, Any]

    def phase(self, step: int) -> int:
        """Phase of iteration ``step``; the optimiser is rebuilt whenever it changes."""
        ...

    def enter_phase(self, phase: int) -> list[dict[str, Any]]:
        """Make ``phase``'s parameters trainable and return its Adam parameter groups (``params``, ``lr``)."""
        ...

    # Optional: ``make_optimizer(groups) -> torch.optim.Optimizer`` replaces the default Adam (betas 0.9, 0.99).

    def before_step(self, step: int, generator: torch.Generator) -> None:
        """Work before iteration ``step`` (upsampling, occupancy updates); may replace parameters only at
        an iteration where the phase changes."""
        ...

    def lr_factor(self, step: int) -> float:
        """Multiplier of every group's base learning rate at iteration ``step``."""
        ...

    def loss(self, step: int, generator: torch.Generator) -> tuple[Tensor, dict[str, Any]]:
        """The loss of iteration ``step`` and the parts to log (tensors are read only at log steps)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything but the optimiser, the random state and ``stats`` needed to resume."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (parameters may change shape)."""
        ...


@dataclass
class Callback:
    """``fn(step)`` after every step ``step >= start`` with ``(step - start) % every == 0``."""

    every: int
    fn: Callable[[int], None]
    start: int = 0

    def due(self, step: int) -> bool:
        """Whether the callback runs after ``step``."""
        return self.every > 0 and step >= self.start and (step - self.start) % self.every == 0


@dataclass
class LoopSettings:
    """How the loop checkpoints and logs one stage.

    Attributes:
        checkpoint: checkpoint file (written atomically).
        log: JSONL log file (appended).
        config: the stage's configuration, stored in every checkpoint.
        seed: seed of the loop's ``torch.Generator`` (every random draw of the stage uses it).
        checkpoint_every: steps between checkpoints (and at the end).
        log_every: steps between log records (and at the end).
        desc: progress label.
        hint: what would make the stage cheaper, shown with its estimate (default: by the stage's kind,
            :data:`COST_SETTINGS`).
    """

    checkpoint: Path
    log: Path
    config: dict[str, Any]
    seed: int
    checkpoint_every: int
    log_every: int
    desc: str
    hint: str | None = None


COST_SETTINGS: dict[str, tuple[str, ...]] = {
    "reconstruction": ("fewer --recon.n-iters", "a smaller --recon.batch-size", "fewer --recon.final-voxels"),
    "semantic": ("fewer --semantic.n-iters", "a smaller --semantic.batch-size"),
}
"""Per stage kind, the settings that trade the training's cost for its quality (named in its estimate)."""


def stage_work(stage: Stage, settings: LoopSettings) -> Work:
    """How a stage's loop is counted (iterations of its batch of rays) and what would make it cheaper."""
    device = getattr(stage, "device", None)
    batch = getattr(getattr(stage, "cfg", None), "batch_size", None)
    size = f"{stage.n_iters:,} iterations" + (f" × {batch:,} rays" if isinstance(batch, int) else "")
    hint = settings.hint if settings.hint is not None else cost_hint(device, *COST_SETTINGS.get(stage.kind, ()))
    return Work("iterations", None, size, None if device is None else str(device), hint)


def _optimizer(groups: list[dict[str, Any]], stage: Any = None) -> torch.optim.Optimizer:
    """The stage's optimiser over ``groups``: its ``make_optimizer(groups)`` if it has one, else Adam."""
    for g in groups:
        g.setdefault("base_lr", g["lr"])
    make = getattr(stage, "make_optimizer", None)
    if make is not None:
        return make(groups)
    return torch.optim.Adam(groups, betas=(0.9, 0.99))  # TensoRF's and 3D-OVS's betas


def _value(x: Any) -> Any:
    return float(x.detach()) if isinstance(x, Tensor) else x


def trim_log(path: Path, step: int) -> None:
    """Drop the records of a JSONL log after ``step`` (and a line cut short): what an interrupted run logged
    after its last checkpoint, which the resumed run logs again."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)

    def keep(line: str) -> bool:
        try:
            rec = json.loads(line)
            return line.endswith("\n") and int(rec.get("step", 0)) <= step
        except (ValueError, TypeError, AttributeError):
            return False

    kept = [line for line in lines if keep(line)]
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(kept))


def run_stage(stage: Stage, settings: LoopSettings, callbacks: Sequence[Callback] = ()) -> int:
    """Train ``stage`` to ``stage.n_iters``, resuming from ``settings.checkpoint`` if it exists.

    Returns:
        The step the stage ends at (``n_iters``; more if the checkpoint already had more).
    """
    ckpt, log_path = Path(settings.checkpoint), Path(settings.log)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(settings.seed)
    step, opt, phase = 0, None, None
    stage.stats.setdefault("train_seconds", 0.0)
    if ckpt.exists():
        payload = load_checkpoint(ckpt, kind=stage.kind)
        state = payload["state"]
        step = int(payload["step"])
        stage.load_state_dict(state)
        gen.set_state(state["rng"])
        stage.stats = {**stage.stats, **dict(state.get("stats", {}))}
        if step >= stage.n_iters:
            note(f"{settings.desc}: already trained ({step:,} iterations, {ckpt})")
            return step
        phase = stage.phase(max(step - 1, 0))  # the optimiser that made the checkpoint's last step
        opt = _optimizer(stage.enter_phase(phase), stage)
        opt.load_state_dict(state["optimizer"])
        note(f"{settings.desc}: resuming at iteration {step:,} of {stage.n_iters:,} from {ckpt}")
    saved = [step]  # the step of the last checkpoint, as training goes on
    try:
        _train(stage, settings, callbacks, gen, (step, opt, phase), saved)
    except KeyboardInterrupt:  # Ctrl-C, and SIGTERM as the CLI raises it
        at = f"the checkpoint of iteration {saved[0]:,}" if ckpt.exists() else "the start (no checkpoint yet)"
        note(f"{settings.desc}: interrupted; the next run resumes from {at}")
        raise
    return stage.n_iters


def _train(
    stage: Stage,
    settings: LoopSettings,
    callbacks: Sequence[Callback],
    gen: torch.Generator,
    start: tuple[int, torch.optim.Optimizer | None, int | None],
    saved: list[int],
) -> None:
    """The iterations of :func:`run_stage` from ``start`` (step, optimiser, phase); ``saved[0]`` follows the
    step of the last checkpoint written."""
    step, opt, phase = start
    ckpt, log_path = Path(settings.checkpoint), Path(settings.log)
    t0, seconds_before = time.perf_counter(), float(stage.stats["train_seconds"])
    trim_log(log_path, step)
    work = stage_work(stage, settings)
    iters = range(step, stage.n_iters)
    with open(log_path, "a") as log:
        for it in progress(iters, desc=settings.desc, total=stage.n_iters, initial=step, work=work):
            stage.before_step(it, gen)
            if opt is None or stage.phase(it) != phase:
                phase = stage.phase(it)
                opt = _optimizer(stage.enter_phase(phase), stage)
            factor = stage.lr_factor(it)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * factor
            loss, parts = stage.loss(it, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done = it + 1
            stage.stats["train_seconds"] = seconds_before + time.perf_counter() - t0
            if done % settings.log_every == 0 or done == stage.n_iters:
                rec = {"step": done, "loss": _value(loss), **{k: _value(v) for k, v in parts.items()}}
                rec["seconds"] = round(stage.stats["train_seconds"], 2)
                log.write(json.dumps(rec) + "\n")
                log.flush()
                logger.debug("%s %s", stage.kind, rec)
            # Callbacks before the checkpoint: what they change (e.g. replaced targets) is saved with step `done`.
            for cb in callbacks:
                if cb.due(done):
                    cb.fn(done)
            if done % settings.checkpoint_every == 0 or done == stage.n_iters:
                state = {**stage.state_dict(), "optimizer": opt.state_dict(), "rng": gen.get_state()}
                state["stats"] = stage.stats
                save_checkpoint(ckpt, config=settings.config, step=done, state=state, kind=stage.kind)
                saved[0] = done
