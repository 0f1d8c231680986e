"""One build at a time per project: DVC's own lock fails mid-pipeline, and two flows
registering from one workspace would register the same files twice. The lock is taken
before Prefect or MLflow start, so a second build touches nothing."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.release.tracking import STATE_DIR

_held: dict[Path, IO[str]] = {}


@contextmanager
def project_lock(root: Path, what: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold ``.soundops/build.lock`` (re-entrant in one process). A second holder waits up
    to ``wait_s`` and then fails with one sentence naming who holds it."""
    path = (root / STATE_DIR / "build.lock").resolve()
    if path in _held:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+", encoding="utf-8")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.seek(0)
                holder = handle.read().strip() or "{}"
                handle.close()
                try:
                    info = json.loads(holder)
                except ValueError:  # the holder is writing it this instant
                    info = {}
                raise SoundopsError(
                    f"{path}: another {info.get('what', 'build')} (pid {info.get('pid', '?')}, "
                    f"since {info.get('since', '?')}) is running in this project; wait for it "
                    "to finish, then run again."
                ) from None
            time.sleep(1.0)
    handle.seek(0)
    handle.truncate()
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    handle.write(json.dumps({"pid": os.getpid(), "what": what, "since": since}))
    handle.flush()
    _held[path] = handle
    try:
        yield
    finally:
        del _held[path]
        handle.seek(0)
        handle.truncate()
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
