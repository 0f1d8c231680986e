from __future__ import annotations

from pathlib import Path

import pytest

from pipeline_lib.base.atomic import atomic_path, write_text


def test_failure_leaves_old_directory_untouched(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_path(target) as work:
        work.mkdir()
        (work / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as work:
        work.mkdir()
        (work / "a.txt").write_text("half")
        raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_file_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    write_text(target, "one")
    write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]
