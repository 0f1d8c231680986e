"""One build or retrain per project at a time, across processes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pipeline_lib.base.errors import SoundopsError


def test_project_lock_refuses_a_second_holder_and_frees_on_exit(tmp_path: Path) -> None:
    import sys

    from pipeline_lib.release.project_lock import project_lock

    code = (
        "import sys, time; from pathlib import Path\n"
        "from pipeline_lib.release.project_lock import project_lock\n"
        "with project_lock(Path(sys.argv[1]), 'retrain'):\n"
        "    print('held', flush=True); time.sleep(30)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        refused = pytest.raises(SoundopsError, match=rf"another retrain \(pid {holder.pid}, since")
        with refused, project_lock(tmp_path, "build"):
            pass
    finally:
        holder.kill()
        holder.wait()
    # a killed holder's lock is gone; and the lock is re-entrant within one process
    with project_lock(tmp_path, "build"), project_lock(tmp_path, "build"):
        assert json.loads((tmp_path / ".soundops" / "build.lock").read_text())["what"] == "build"
