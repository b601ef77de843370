"""Progress of long work, the same way for every stage, on a terminal and in a log file.

Library code wraps its long loops in :func:`progress` (or opens a :func:`task`), brackets uncounted work in
:func:`stage` and says one-off things with :func:`note`; console output proper is the CLI's job.

- On a terminal (stderr is a TTY): rich progress bars on stderr (nested loops share one display); notes and
  estimates are printed above them.
- Otherwise (``ovs3d fit ... > fit.log 2>&1``, ``nohup``, a cluster job): plain, timestamped lines on stderr,
  flushed at once: one when a loop starts (what, how much work, where), one about every 10 % of it or every
  30 s (done, rate, ETA), one when it ends (its time) or stops (where)::

      2025-01-02 15:26:43 reconstruction: 300 iterations × 2,048 rays on cpu
      2025-01-02 15:26:49 reconstruction: 30/300 iterations (10%), 5.2 iterations/s, ETA 52 s
      2025-01-02 15:27:48 reconstruction: done in 1 min 5 s (300 iterations, 4.6 iterations/s)

- Either way, an **estimate** before long work: once a loop has run :data:`ESTIMATE_SAMPLE_S` seconds, its
  rate after its first item (which carries the warm-up: loading images and rays, first calls of a model), or
  the rate of that first item when it alone took :data:`FIRST_ITEM_S` (e.g. the first batch of CLIP crops
  on a CPU), gives the time the whole loop will take; when that is at least :data:`LONG_STAGE_S`, one line
  says so, with the settings that trade cost for quality (:class:`Work`)::

      pixel CLIP features: 8 views × 3,133 crops, ~3 h 40 min on cpu at 1.9 crops/s; a GPU,
      --features.views-fraction 0.5 (half the views) or ... would cut it

Work inside one item of a loop (the crops of one view) can move its progress on with :func:`advance` when
the loop gave per-item weights (:attr:`Work.weights`). :func:`set_quiet` turns every bar and line off.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

_QUIET = False

ESTIMATE_SAMPLE_S = 5.0
"""Seconds of work (at least one item or batch) whose rate makes the estimate."""
LONG_STAGE_S = 60.0
"""Loops estimated to take at least this long get an estimate line."""
FIRST_ITEM_S = 10.0
"""A first item (or batch) that alone takes this long makes the estimate (warm-ups take a few seconds)."""
REPORT_EVERY_S = 30.0
"""Without a terminal, a progress line at least this often (while items are done)..."""
REPORT_EVERY_FRACTION = 0.1
"""... and at every further 10 % of the work, ..."""
REPORT_GAP_S = 1.0
"""... but never twice within this many seconds (a loop of a few seconds says only where it starts and ends)."""
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
"""Timestamps of the lines written without a terminal (the CLI's log records use the same)."""


def set_quiet(quiet: bool) -> None:
    """Turn every progress bar, progress line, stage line, note and estimate off (``--quiet``, tests)."""
    global _QUIET
    _QUIET = bool(quiet)


def is_quiet() -> bool:
    """Whether :func:`set_quiet` turned the reports off."""
    return _QUIET


def on_terminal() -> bool:
    """Whether reports go to a terminal (rich bars) rather than to a file or pipe (plain lines)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


@dataclass
class Work:
    """What a loop counts and what it costs: its start line and its estimate.

    Attributes:
        unit: what one step of the count is, plural (``"views"``, ``"crops"``, ``"iterations"``).
        weights: per item of the loop, how many units it is (e.g. crops per view); the total is their sum
            (plus ``initial``). With weights, :func:`advance` moves the count on inside an item.
        size: the work in words, for the start and estimate lines (``"8 views × 3,133 crops"``; default
            ``"<total> <unit>"``).
        device: where it runs (``"cpu"``, ``"cuda:0"``).
        hint: what would make it cheaper (:func:`cost_hint`), shown with the estimate.
    """

    unit: str = "items"
    weights: Sequence[int] | None = None
    size: str | None = None
    device: str | None = None
    hint: str | None = None


def cost_hint(device: Any, *settings: str) -> str:
    """``"a GPU, --a or --b would cut it"``: what to change to make a long stage cheaper.

    Args:
        device: where the stage runs; a GPU is suggested when it is the CPU (or unknown).
        settings: flags with the values to try, each with its effect in words.
    """
    options = (["a GPU"] if device is None or str(device).startswith("cpu") else []) + [s for s in settings if s]
    if not options:
        return ""
    said = options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"
    return f"{said} would cut it"


# ---------------------------------------------------------------------------------------------------
# formatting


def format_duration(seconds: float) -> str:
    """``"0.4 s"``, ``"12 s"``, ``"2 min 35 s"``, ``"3 h 40 min"``."""
    s = max(0.0, float(seconds))
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        m, r = divmod(round(s), 60)
        return f"{m} min {r} s" if r else f"{m} min"
    h, m = divmod(round(s / 60), 60)
    return f"{h} h {m} min" if m else f"{h} h"


def format_rate(rate: float, unit: str) -> str:
    """``"1.9 crops/s"``, ``"250 iterations/s"``, or ``"25 s per view"`` below 0.1 per second."""
    if rate <= 0:
        return f"0 {unit}/s"
    if rate >= 9.95:
        return f"{rate:,.0f} {unit}/s"
    if rate >= 0.995:
        return f"{rate:.1f} {unit}/s"
    if rate >= 0.0995:
        return f"{rate:.2f} {unit}/s"
    one = unit[:-1] if unit.endswith("s") else unit
    return f"{format_duration(1.0 / rate)} per {one}"


def _stamp() -> str:
    return time.strftime(TIME_FORMAT)


# ---------------------------------------------------------------------------------------------------
# output


class _Bars:
    """The one rich progress display of the process (on a terminal); loops opened inside a loop add a row."""

    def __init__(self) -> None:
        self.progress: Any = None
        self.open = 0

    def add(self, desc: str, total: int | None, completed: int) -> int:
        if self.progress is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            columns = (
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self.progress = Progress(*columns, console=Console(stderr=True, highlight=False), transient=False)
            self.progress.start()
        self.open += 1
        return self.progress.add_task(desc, total=total, completed=completed)

    def update(self, task_id: int, completed: int) -> None:
        if self.progress is not None:
            self.progress.update(task_id, completed=completed)

    def done(self) -> None:
        self.open -= 1
        if self.open <= 0 and self.progress is not None:
            progress, self.progress, self.open = self.progress, None, 0
            progress.stop()

    def print(self, text: str) -> bool:
        """Print above the bars; False when none are shown."""
        if self.progress is None:
            return False
        self.progress.console.print(text, markup=False, highlight=False)
        return True


_BARS = _Bars()


def emit(text: str) -> None:
    """Write one report line (not when quiet): above the bars on a terminal, else timestamped on stderr."""
    if _QUIET:
        return
    if on_terminal():
        if not _BARS.print(text):
            print(text, file=sys.stderr, flush=True)
        return
    print(f"{_stamp()} {text}", file=sys.stderr, flush=True)


def note(text: str) -> None:
    """One line about the work that needs no count: a cache hit, a resumed stage, a clean-up."""
    emit(text)


@contextlib.contextmanager
def stage(desc: str, size: str | None = None) -> Iterator[None]:
    """One line when uncounted work starts (``desc: size ...``), one when it ends with its time, or stops."""
    emit(f"{desc}: {size} ..." if size else f"{desc} ...")
    t0 = time.perf_counter()
    try:
        yield
    except BaseException:
        emit(f"{desc}: stopped after {format_duration(time.perf_counter() - t0)}")
        raise
    emit(f"{desc}: done in {format_duration(time.perf_counter() - t0)}")


# ---------------------------------------------------------------------------------------------------
# counted work


class Task:
    """One counted loop: its start line, progress lines (or bar), estimate and end line.

    Use :func:`task` or :func:`progress`, not the class directly.
    """

    def __init__(self, desc: str, total: int | None, initial: int, work: Work) -> None:
        self.desc, self.total, self.work = desc, total, work
        self.initial = self.done = int(initial)
        self.item_end: int | None = None  # while an item with a weight runs: where its sub-steps stop
        self.t0 = self.last_t = time.perf_counter()
        self.last_done = self.done
        self.next_fraction = 0.0
        self.estimated = False
        self.first: tuple[float, int] | None = None  # (time, count) when the first item or batch was done
        self.bar: int | None = None
        self.finished = False
        self.terminal = on_terminal()

    # -- the count ---------------------------------------------------------------------------------

    def advance(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.update(self.done + n)

    def update(self, done: int) -> None:
        """``done`` units done in all."""
        self.done = int(done)
        if _QUIET:
            return
        if self.bar is not None:
            _BARS.update(self.bar, self.done)
        now = time.perf_counter()
        if self.first is None and self.done > self.initial:
            self.first = (now, self.done)
        if not self.estimated and self.first is not None and now - self.t0 >= ESTIMATE_SAMPLE_S:
            self._estimate(now)
        if not self.terminal and self._line_due(now):
            self._progress_line(now)

    def sub_advance(self, n: int) -> None:
        """Sub-steps of the running item (:func:`advance`), never past its end."""
        if self.item_end is not None:
            self.update(min(self.done + int(n), self.item_end))

    # -- the lines ---------------------------------------------------------------------------------

    def start(self) -> None:
        """The start line (or a bar on a terminal)."""
        if _QUIET:
            return
        self.next_fraction = self._fraction() + REPORT_EVERY_FRACTION
        if self.terminal:
            self.bar = _BARS.add(self.desc, self.total, self.done)
            return
        where = f" on {self.work.device}" if self.work.device else ""
        resume = f", resuming at {self.done:,}/{self.total:,} {self.work.unit}" if self.initial and self.total else ""
        what = f"{self.desc}: {self._size()}" if self.work.size or self.total is not None else f"{self.desc} ..."
        emit(f"{what}{where}{resume}")

    def finish(self, stopped: bool) -> None:
        """The end line with the loop's time, or where it stopped (once)."""
        if self.finished:
            return
        self.finished = True
        if self.bar is not None:
            _BARS.done()
        if _QUIET or self.terminal and not stopped:
            return
        took = time.perf_counter() - self.t0
        unit = self.work.unit
        if stopped:
            of = f"/{self.total:,}" if self.total else ""
            emit(f"{self.desc}: stopped at {self.done:,}{of} {unit} after {format_duration(took)}")
            return
        n = self.done - self.initial
        rate = f", {format_rate(n / took, unit)}" if took > 0 and n > 0 else ""
        emit(f"{self.desc}: done in {format_duration(took)} ({n:,} {unit}{rate})")

    def _size(self) -> str:
        if self.work.size:
            return self.work.size
        return f"{self.total:,} {self.work.unit}" if self.total is not None else self.work.unit

    def _fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    def _line_due(self, now: float) -> bool:
        if self.total and self.done >= self.total or now - self.last_t < REPORT_GAP_S:
            return False  # the end line says it; or too soon after the last line
        if self.total and self._fraction() >= self.next_fraction:
            return True
        return now - self.last_t >= REPORT_EVERY_S and self.done > self.last_done

    def _progress_line(self, now: float) -> None:
        unit = self.work.unit
        recent = (self.done - self.last_done) / max(now - self.last_t, 1e-9)
        text = f"{self.desc}: {self.done:,}"
        if self.total:
            text += f"/{self.total:,} {unit} ({100 * self._fraction():.0f}%), {format_rate(recent, unit)}"
            if recent > 0:
                text += f", ETA {format_duration((self.total - self.done) / recent)}"
        else:
            text += f" {unit}, {format_rate(recent, unit)}"
        emit(text)
        self.last_t, self.last_done = now, self.done
        while self.total and self.next_fraction <= self._fraction():
            self.next_fraction += REPORT_EVERY_FRACTION

    def _rate_for_estimate(self, now: float) -> float | None:
        """Units per second after the first item (or, when that alone took :data:`FIRST_ITEM_S`, of the first
        item); None while there is no such measure yet."""
        assert self.first is not None
        first_t, first_done = self.first
        if self.done == first_done:  # a slow first item is the measure (a warm-up takes seconds, not this long)
            slow = now - self.t0 >= FIRST_ITEM_S
            return (self.done - self.initial) / (now - self.t0) if slow else None
        if now - first_t < ESTIMATE_SAMPLE_S / 2:
            return None
        return (self.done - first_done) / (now - first_t)

    def _estimate(self, now: float) -> None:
        rate = self._rate_for_estimate(now)
        if rate is None:
            return
        self.estimated = True
        if not self.total or rate <= 0:
            return
        elapsed = now - self.t0
        expected = elapsed + (self.total - self.done) / rate
        if expected < LONG_STAGE_S:
            return
        where = f" on {self.work.device}" if self.work.device else ""
        rate_text = format_rate(rate, self.work.unit)
        text = f"{self.desc}: {self._size()}, ~{format_duration(expected)}{where} at {rate_text}"
        if self.initial:
            text += f" for the {self.total - self.initial:,} {self.work.unit} left"
        emit(f"{text}; {self.work.hint}" if self.work.hint else text)


_OPEN: list[Task] = []


@contextlib.contextmanager
def task(desc: str, total: int | None, *, initial: int = 0, work: Work | None = None) -> Iterator[Task]:
    """A counted loop whose code moves it on itself (:meth:`Task.advance`, :meth:`Task.update`).

    Args:
        desc: what the loop does (``"pixel CLIP features"``).
        total: the units of work in all (None: unknown).
        initial: units already done before (a resumed stage).
        work: what is counted and what it costs.
    """
    t = Task(desc, total, initial, work or Work())
    t.start()
    _OPEN.append(t)
    try:
        yield t
    except BaseException:
        t.finish(stopped=True)
        raise
    finally:
        with contextlib.suppress(ValueError):
            _OPEN.remove(t)
    t.finish(stopped=t.total is not None and t.done < t.total)


def advance(n: int) -> None:
    """``n`` units of the item the innermost loop is running (e.g. a batch of crops of a view); only loops
    with per-item weights count them, and never past the item's weight."""
    if _OPEN:
        _OPEN[-1].sub_advance(n)


def progress(
    iterable: Iterable[T], desc: str, total: int | None = None, *, initial: int = 0, work: Work | None = None
) -> Iterator[T]:
    """Iterate with a report of the loop: a rich bar on a terminal, plain lines otherwise (module docstring).

    Args:
        iterable: what to iterate.
        desc: short description (``"reconstruction"``, ``"rendering views"``).
        total: items in all, when ``iterable`` has no ``len`` (or units, with ``initial``; with
            ``work.weights``: default their sum plus ``initial``).
        initial: units done before this loop (a resumed stage): the count starts there.
        work: what is counted and what it costs (default: items).
    """
    work = work or Work()
    weights = list(work.weights) if work.weights is not None else None
    if total is None:
        if weights is not None:
            total = initial + sum(int(w) for w in weights)
        else:
            try:
                total = initial + len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
    if _QUIET:
        yield from iterable
        return
    with task(desc, total, initial=initial, work=work) as t:
        for k, item in enumerate(iterable):
            if weights is None:
                yield item
                t.advance(1)
                continue
            end = t.done + (int(weights[k]) if k < len(weights) else 0)
            t.item_end = end
            yield item
            t.item_end = None
            t.update(end)
