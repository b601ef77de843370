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


def test_atomic_writes_get_ordinary_permissions(tmp_path: Path) -> None:
    import os

    from ovs3d.utils.files import atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "x")
    plain = tmp_path / "b.txt"
    plain.write_text("x")
    assert os.stat(tmp_path / "a.txt").st_mode & 0o777 == os.stat(plain).st_mode & 0o777
