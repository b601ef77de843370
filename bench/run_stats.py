"""Print the cost records a run keeps: semantic training time, OV-NeRF's mask proposals, RSR and CSE updates.

Usage::

    python bench/run_stats.py bench/out/3dovs/room/seed0/holdout/ovnerf [RUN ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ovs3d.utils.files import load_checkpoint


def run_stats(run: Path) -> dict:
    """The ``stats`` of a run's semantic checkpoint, with CSE updates summarised."""
    stats = dict(load_checkpoint(Path(run) / "checkpoints" / "semantic.pt", kind="semantic")["state"]["stats"])
    updates = stats.pop("cse_updates", [])
    if updates:
        stats["cse_updates"] = len(updates)
        stats["cse_seconds_mean"] = round(float(np.mean([u.get("seconds", np.nan) for u in updates])), 2)
        stats["cse_changed"] = [u["changed"] for u in updates]
        stats["cse_novel_views"] = [u["novel_views"] for u in updates]
    return {"run": str(run), **stats}


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(json.dumps(run_stats(Path(arg))))
