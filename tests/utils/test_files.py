"""ovs3d.utils.files: the run lock."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovs3d.errors import OVS3DError
from ovs3d.utils.files import file_lock, run_lock


def test_run_lock_refuses_a_second_holder_with_one_line(tmp_path: Path) -> None:
    with run_lock(tmp_path):
        with pytest.raises(OVS3DError, match=r"is being fitted by process \d+@"):
            with run_lock(tmp_path):
                pass
    with run_lock(tmp_path):  # released when the block ends
        pass


def test_file_lock_without_waiting(tmp_path: Path) -> None:
    with file_lock(tmp_path / "x.lock") as held:
        assert held
        with file_lock(tmp_path / "x.lock", wait=False) as again:
            assert not again
