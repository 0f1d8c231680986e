"""Atomic writes: a killed stage never leaves a half-written file or folder for DVC to cache."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it over ``target``.

    Works for files and directories. On any exception the temporary is removed and the old
    ``target`` (if any) is left untouched.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
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


def write_json(target: Path, obj: Any) -> None:
    """Write JSON atomically, keys sorted so reruns are byte-identical."""
    write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(target: Path, frame: pd.DataFrame) -> None:
    """Write a CSV atomically with a fixed float format for byte-stable reruns."""
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g", lineterminator="\n")
