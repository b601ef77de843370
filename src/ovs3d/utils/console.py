"""Progress bars for long work.

Library code reports progress through :func:`progress`, which draws a rich bar on a terminal and logs a
few plain lines otherwise (CI logs stay readable). Console output proper is the CLI's job.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
logger = logging.getLogger("ovs3d")

_QUIET = False


def set_quiet(quiet: bool) -> None:
    """Disable progress bars (tests, benchmarks)."""
    global _QUIET
    _QUIET = quiet


def progress(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar (rich on a TTY; a log line every ~10% otherwise).

    Args:
        iterable: what to iterate.
        desc: short description shown beside the bar.
        total: number of items, when ``iterable`` has no ``len``.
    """
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if _QUIET:
        yield from iterable
        return
    if sys.stderr.isatty():
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
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task(desc, total=total)
            for item in iterable:
                yield item
                bar.advance(task)
        return
    start = time.perf_counter()
    next_report = 0.0
    for i, item in enumerate(iterable):
        yield item
        if total:
            frac = (i + 1) / total
            if frac >= next_report or i + 1 == total:
                logger.info("%s: %d/%d (%.0fs)", desc, i + 1, total, time.perf_counter() - start)
                next_report = frac + 0.1
