"""The scene writer's temporary folders: named after their process, removed by the next write once it is gone."""

from __future__ import annotations

import os
import subprocess
import sys

from ovs3d.scenegen.writer import scene_folder
from ovs3d.utils.files import HOST


def test_a_killed_write_leaves_a_folder_the_next_write_removes(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f".scene.tmp-{dead.pid}@{HOST}-ab12cd34"  # what a SIGKILLed make-scene leaves
    (left / "images").mkdir(parents=True)
    running = tmp_path / f".scene.tmp-{os.getpid()}@{HOST}-ef56gh78"  # another write still running: kept
    running.mkdir()
    with scene_folder(tmp_path / "scene") as tmp:
        assert tmp.name.startswith(f".scene.tmp-{os.getpid()}@{HOST}-")
        (tmp / "sim").mkdir()
        (tmp / "sim" / "instances.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([running.name, "scene"])
    assert (tmp_path / "scene" / "sim" / "instances.json").exists()
