"""``ovs3d`` in a subprocess, with the environment the CLI tests expect, and signalling itself at a known point."""

from __future__ import annotations

import os

# Runs ``ovs3d`` with ``ovs3d.methods.loop.progress`` (SIGNAL_IN=loop) or the feature cache's (cache) sending the
# process SIGNAL (SIGKILL, SIGTERM) when item SIGNAL_AT is about to start: a real signal at a known point (the
# items before it are logged, checkpointed or written as they would be).
SIGNAL_DRIVER = """
import os, signal, sys
import ovs3d.foundation.cache as cache
import ovs3d.methods.loop as loop
at = int(os.environ["SIGNAL_AT"])
module = cache if os.environ["SIGNAL_IN"] == "cache" else loop
sig = getattr(signal, os.environ["SIGNAL"])
real = module.progress
def progress(items, **kw):
    for i in real(items, **kw):
        if i == at:
            os.kill(os.getpid(), sig)
        yield i
module.progress = progress
from ovs3d.cli.main import entrypoint
sys.exit(entrypoint(sys.argv[1:]))
"""


def cli_env(**extra: str) -> dict[str, str]:
    """This process's environment for an ``ovs3d`` subprocess: 2 torch threads, no colour, 120 columns, the
    default log level; plus ``extra``."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "NO_COLOR": "1", "COLUMNS": "120", **extra}
    env.pop("OVS3D_LOG", None)
    return env


def signal_env(signal_name: str, where: str, at: int) -> dict[str, str]:
    """:func:`cli_env` for :data:`SIGNAL_DRIVER`: send ``signal_name`` when item ``at`` of ``where`` (``loop``
    or ``cache``) is about to start."""
    return cli_env(SIGNAL=signal_name, SIGNAL_IN=where, SIGNAL_AT=str(at))
