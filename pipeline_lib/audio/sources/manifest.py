"""A CSV or parquet table of ``path, label[, group|speaker][, split][, role]`` rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline_lib.audio.sources.base import Listing, Reject, SourceItem, project_label
from pipeline_lib.base.errors import PathEscapeError, SoundopsError
from pipeline_lib.base.params import ManifestSource
from pipeline_lib.base.paths import project_path, resolve_inside

SPLITS = {"train", "val", "test"}


def read_table(path: Path, what: str) -> pd.DataFrame:
    """Read a CSV or parquet manifest as strings."""
    if not path.is_file():
        raise SoundopsError(f"{what}: manifest {path} does not exist.")
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # any parse failure is a problem with the user's file
        raise SoundopsError(f"{what}: manifest {path} cannot be read ({exc}).") from None
    return frame.astype(str)


def list_manifest(
    source: ManifestSource, project_root: Path, labels: list[str], extensions: list[str]
) -> Listing:
    del extensions  # a manifest names its files explicitly
    root = project_path(project_root, source.root)
    table_path = project_path(project_root, source.path)
    what = f"source '{source.name}'"
    frame = read_table(table_path, what)
    missing = {"path", "label"} - set(frame.columns)
    if missing:
        raise SoundopsError(
            f"{what}: manifest {table_path.name} lacks column(s) {', '.join(sorted(missing))}."
        )
    group_col = next((c for c in ("group", "speaker") if c in frame.columns), None)
    out = Listing()
    for row in frame.to_dict("records"):
        rel = row["path"]
        try:
            path = resolve_inside(root, rel, f"{what} ({table_path.name})")
        except PathEscapeError:
            out.rejects.append(Reject(source.name, rel, "path escapes the source root"))
            continue
        if not path.is_file():
            out.rejects.append(Reject(source.name, rel, "file not found"))
            continue
        native = row["label"]
        label = project_label(source, native, labels)
        if label is None:
            out.skip(native)
            continue
        split = row.get("split", "")
        role = row.get("role", "") or source.role
        group = row[group_col] if group_col and row[group_col] else rel
        out.items.append(
            SourceItem(
                path=path,
                rel=path.relative_to(root.resolve()).as_posix(),
                source=source.name,
                native_label=native,
                label=label,
                group=f"{source.name}:{group}",
                role="stream" if role == "stream" else "clip",
                fixed_split=split if split in SPLITS else "",
            )
        )
    return out
