"""``soundops mine accept``: mined clips a person accepted become a hard-negative source.

Kept out of the mine stage because it changes the project (copies files, runs ``dvc add``)
rather than computing an output: the stage stays a pure function of its dependencies.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline_lib.artifacts.mined import MINED
from pipeline_lib.base.atomic import write_csv
from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import Params
from pipeline_lib.base.paths import project_path

log = logging.getLogger(__name__)


def accept(
    params: Params,
    layout: Layout,
    min_score: float = 0.0,
    exclude: frozenset[str] = frozenset(),
    track: bool = True,
) -> dict[str, Any]:
    """Copy accepted mined clips into ``mine.accept_root/<label>/`` and ``dvc add`` it."""
    table = layout.mine / MINED
    if not table.is_file():
        raise SoundopsError(f"{table}: not found; run the mine stage first (dvc repro mine).")
    frame = pd.read_csv(table, dtype={"id": str})
    unknown = sorted(exclude - set(frame["id"]))
    if unknown:
        raise SoundopsError(f"--exclude: mined clip id(s) {', '.join(unknown)} not in {table}.")
    chosen = frame[(frame["score"] >= min_score) & ~frame["id"].isin(exclude)]
    if chosen.empty:
        raise SoundopsError(f"{table}: no mined clip is left to accept.")
    root = project_path(layout.root, params.mine.accept_root)
    if not _is_hard_negative_source(params, layout, root):
        raise SoundopsError(
            f"mine.accept_root: {params.mine.accept_root} is not the root of any folder source in "
            "ingest.sources; accepted clips would never be trained on."
        )
    dest = root / params.mine.label
    before = len(list(dest.glob("*.wav"))) if dest.is_dir() else 0
    staging = root.parent / f".{root.name}.accepting"
    shutil.rmtree(staging, ignore_errors=True)
    if root.exists():
        shutil.copytree(root, staging)
    (staging / params.mine.label).mkdir(parents=True, exist_ok=True)
    for r in chosen.itertuples():
        shutil.copyfile(layout.mine / str(r.path), staging / params.mine.label / f"{r.id}.wav")
    log_path = staging / "accepted.csv"
    old = pd.read_csv(log_path, dtype={"id": str}) if log_path.is_file() else None
    merged = pd.concat([old, chosen]) if old is not None else chosen
    write_csv(log_path, merged.drop_duplicates("id", keep="last").sort_values("id"))
    if root.exists():
        shutil.rmtree(root)
    staging.rename(root)
    after = len(list(dest.glob("*.wav")))
    tracked = _dvc_add(layout, root) if track else False
    log.info(
        "mine accept: %d mined clip(s) accepted, %s now holds %d clip(s) (%d new)%s",
        len(chosen),
        dest.relative_to(layout.root) if dest.is_relative_to(layout.root) else dest,
        after,
        after - before,
        "; tracked with DVC: commit the .dvc file, then `dvc repro`" if tracked else "",
    )
    return {"accepted": len(chosen), "clips": after, "new": after - before, "tracked": tracked}


def _is_hard_negative_source(params: Params, layout: Layout, root: Path) -> bool:
    return any(
        s.kind == "folder" and project_path(layout.root, s.root).resolve() == root.resolve()
        for s in params.ingest.sources
    )


def _dvc_add(layout: Layout, folder: Path) -> bool:
    """``dvc add`` the folder when the project is a DVC repository (``.dvc/`` exists)."""
    if not (layout.root / ".dvc").is_dir():
        return False
    exe = shutil.which("dvc")
    if exe is None:
        raise SoundopsError("dvc: command not found; install the project (make setup).")
    rel = folder.resolve().relative_to(layout.root.resolve()).as_posix()
    done = subprocess.run(
        [exe, "add", "--quiet", rel], cwd=layout.root, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SoundopsError(f"dvc add {rel} failed: {done.stderr.strip() or done.stdout.strip()}")
    return True
