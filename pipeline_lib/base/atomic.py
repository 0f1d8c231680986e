"""Atomic writes: a killed stage never leaves a half-written file or folder for DVC to cache."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

import pandas as pd


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_debris(target: Path) -> None:
    """Remove the temporaries of ``target`` left by processes that died (a SIGKILL skips
    every ``finally``); the ones of live processes are theirs."""
    for tmp in target.parent.glob(f".{glob_escape(target.name)}.*.tmp"):
        pid = tmp.name[len(target.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it over ``target``.

    Works for files and directories. On any exception the temporary is removed and the old
    ``target`` (if any) is left untouched; a killed run's temporary is removed by the next.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_debris(target)
    prefix = f".{target.name}.{os.getpid()}."
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=target.parent))
    work = tmp / target.name
    try:
        yield work
        if not work.exists():
            raise FileNotFoundError(f"{target}: nothing was written")
        if target.is_dir() and not target.is_symlink():
            old = tmp / (target.name + ".old")
            target.rename(old)
            work.rename(target)
        else:
            work.replace(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(target: Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _finite(obj: Any) -> Any:
    """NaN and infinity become null: strict JSON readers (DVC, browsers) reject them."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def json_text(obj: Any) -> str:
    """JSON with keys sorted so reruns are byte-identical; NaN is null."""
    return json.dumps(_finite(obj), indent=2, sort_keys=True, default=str, allow_nan=False) + "\n"


def write_json(target: Path, obj: Any) -> None:
    """Write :func:`json_text` atomically."""
    write_text(target, json_text(obj))


def write_csv(target: Path, frame: pd.DataFrame) -> None:
    """Write a CSV atomically with a fixed float format for byte-stable reruns."""
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g", lineterminator="\n")


def sha256(path: Path) -> str:
    """A file's SHA-256, as the registry, bundles and the validate gate record it."""
    return hashlib.sha256(path.read_bytes()).hexdigest()
