"""Layouts of public corpora users already have on disk.

Each derives groups the way the corpus intends them to be split: Speech Commands by
speaker, ESC-50 by source clip, DroneAudioDataset by recording, so one speaker or
recording never lands in two splits.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from pipeline_lib.audio.sources.base import (
    Listing,
    Reject,
    SourceItem,
    class_folders,
    project_label,
    require_dir,
)
from pipeline_lib.audio.sources.manifest import read_table
from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.params import DroneSource, Esc50Source, PicovoiceSource, SpeechCommandsSource
from pipeline_lib.base.paths import project_path

SC_BACKGROUND = "_background_noise_"


def list_speech_commands(
    source: SpeechCommandsSource, project_root: Path, labels: list[str], extensions: list[str]
) -> Listing:
    """Speaker = file-name part before ``_nohash_``; the official lists pin val/test."""
    root = project_path(project_root, source.root)
    require_dir(root, source)
    fixed: dict[str, str] = {}
    for name, split in (("validation_list.txt", "val"), ("testing_list.txt", "test")):
        listed = root / name
        if listed.is_file():
            for line in listed.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    fixed[line.strip()] = split

    def speaker(native: str, path: Path) -> str:
        return path.stem if native == SC_BACKGROUND else path.name.split("_nohash_")[0]

    def refine(item: SourceItem) -> SourceItem:
        role = "stream" if item.native_label == SC_BACKGROUND else item.role
        return replace(item, role=role, fixed_split=fixed.get(item.rel, ""))

    return class_folders(source, root, labels, extensions, speaker, refine)


def list_esc50(
    source: Esc50Source, project_root: Path, labels: list[str], extensions: list[str]
) -> Listing:
    """Rows of ``meta/esc50.csv``; group = ``src_file`` (takes of one source clip)."""
    del extensions
    root = project_path(project_root, source.root)
    require_dir(root, source)
    frame = read_table(root / "meta" / "esc50.csv", f"source '{source.name}'")
    need = {"filename", "fold", "category", "src_file"}
    if need - set(frame.columns):
        raise SoundopsError(
            f"source '{source.name}': meta/esc50.csv lacks column(s) "
            f"{', '.join(sorted(need - set(frame.columns)))}."
        )
    out = Listing()
    for row in frame.to_dict("records"):
        native = row["category"]
        label = project_label(source, native, labels)
        if label is None:
            out.skip(native)
            continue
        path = root / "audio" / row["filename"]
        if not path.is_file():
            out.rejects.append(Reject(source.name, f"audio/{row['filename']}", "file not found"))
            continue
        split = source.fold_splits.get(int(row["fold"]), "") if row["fold"].isdigit() else ""
        out.items.append(
            SourceItem(
                path,
                f"audio/{row['filename']}",
                source.name,
                native,
                label,
                f"{source.name}:{row['src_file']}",
                source.role,
                split,
            )
        )
    return out


def list_picovoice(
    source: PicovoiceSource, project_root: Path, labels: list[str], extensions: list[str]
) -> Listing:
    """``audio/<phrase>/`` folders; speakers are not given, so each file is its own group."""
    root = project_path(project_root, source.root)
    base = root / "audio" if (root / "audio").is_dir() else root
    return class_folders(source, base, labels, extensions, lambda _n, p: p.stem)


_DRONE_REC = re.compile(r"^(.*)_\d+_?$")


def drone_group(native: str, path: Path) -> str:
    """Recording id: the stem before the last ``_NNN_`` for drone chunks, the stem without
    its last digit for ``unknown`` chunks (ESC-50 clips cut into numbered pieces)."""
    stem = path.stem
    match = _DRONE_REC.match(stem)
    if match and native != "unknown":
        return f"{native}/{match.group(1)}"
    if stem and stem[-1].isdigit():
        return f"{native}/{stem[:-1]}"
    return f"{native}/{stem}"


def list_drone(
    source: DroneSource, project_root: Path, labels: list[str], extensions: list[str]
) -> Listing:
    root = project_path(project_root, source.root)
    return class_folders(source, root, labels, extensions, drone_group)
