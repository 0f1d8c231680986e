"""Atomic writes: a killed stage never leaves a half-written file or folder for DVC to cache."""

from __future__ import annotations

import contextlib
import json
import math
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


def _finite(obj: Any) -> Any:
    """NaN and infinity become null: strict JSON readers (DVC, browsers) reject them."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_json(target: Path, obj: Any) -> None:
    """Write JSON atomically, keys sorted so reruns are byte-identical; NaN is null."""
    text = json.dumps(_finite(obj), indent=2, sort_keys=True, default=str, allow_nan=False)
    write_text(target, text + "\n")


def write_csv(target: Path, frame: pd.DataFrame) -> None:
    """Write a CSV atomically with a fixed float format for byte-stable reruns."""
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g", lineterminator="\n")
