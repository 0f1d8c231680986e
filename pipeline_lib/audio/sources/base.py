"""Shared shapes and helpers of the source kinds."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.params import Role, SourceBase

log = logging.getLogger(__name__)

GroupFn = Callable[[str, Path], str]
RefineFn = Callable[["SourceItem"], "SourceItem"]


@dataclass(frozen=True)
class SourceItem:
    """One audio file to ingest."""

    path: Path
    rel: str
    source: str
    native_label: str
    label: str
    group: str
    role: Role
    fixed_split: str = ""


@dataclass(frozen=True)
class Reject:
    """A file refused before decoding (path escape, missing file), bound for quarantine."""

    source: str
    rel: str
    reason: str


@dataclass
class Listing:
    items: list[SourceItem] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    unmapped: dict[str, int] = field(default_factory=dict)

    def skip(self, native: str) -> None:
        self.unmapped[native] = self.unmapped.get(native, 0) + 1


def project_label(source: SourceBase, native: str, labels: list[str]) -> str | None:
    """``label_map`` first, then a native label that already is a project label, then
    ``default_label``; None means the item is skipped (and counted as unmapped)."""
    if native in source.label_map:
        return source.label_map[native]
    if native in labels:
        return native
    return source.default_label


def require_dir(root: Path, source: SourceBase) -> None:
    if not root.is_dir():
        raise SoundopsError(f"source '{source.name}': root folder {root} does not exist.")


def scan_audio(
    folder: Path, extensions: list[str], root: Path | None = None
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Audio files below ``folder`` in sorted order (hidden names skipped), and the entries
    with an audio extension that are refused, each with its reason: a link that leads
    outside ``root`` (default: ``folder``), a dangling link, or a folder so named. Links
    are resolved so a source can never read a file its root does not hold."""
    exts = {e.lower() for e in extensions}
    inside = (root or folder).resolve()
    files: list[Path] = []
    refused: list[tuple[Path, str]] = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() not in exts or p.name.startswith("."):
            continue
        if p.is_symlink() and not p.exists():
            refused.append((p, "dangling link"))
        elif not p.resolve().is_relative_to(inside):
            refused.append((p, "link leads outside the source root"))
        elif not p.is_file():
            refused.append((p, "a folder, not an audio file"))
        else:
            files.append(p)
    return files, refused


def audio_files(folder: Path, extensions: list[str]) -> list[Path]:
    """The readable audio files of :func:`scan_audio`; refused entries are logged."""
    files, refused = scan_audio(folder, extensions)
    for path, reason in refused:
        log.warning("%s: skipped (%s)", path, reason)
    return files


def group_from_regex(pattern: re.Pattern[str] | None, rel: str) -> str:
    if pattern is None:
        return rel
    match = pattern.search(rel)
    if match is None:
        return rel
    return match.group(1) if match.groups() else match.group(0)


def class_folders(
    source: SourceBase,
    root: Path,
    labels: list[str],
    extensions: list[str],
    group_of: GroupFn,
    refine: RefineFn | None = None,
) -> Listing:
    """The common ``root/<class>/<files>`` layout; ``group_of(class, path)`` names groups and
    ``refine``, when given, changes an item (a corpus's pinned split or its stream folder)."""
    require_dir(root, source)
    out = Listing()
    inside = root.resolve()
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        native = folder.name
        if not folder.resolve().is_relative_to(inside):
            out.rejects.append(Reject(source.name, native, "link leads outside the source root"))
            continue
        label = project_label(source, native, labels)
        files, refused = scan_audio(folder, extensions, root)
        out.rejects.extend(
            Reject(source.name, p.relative_to(root).as_posix(), why) for p, why in refused
        )
        if label is None:
            out.unmapped[native] = out.unmapped.get(native, 0) + len(files)
            continue
        for path in files:
            rel = path.relative_to(root).as_posix()
            group = group_of(native, path)
            item = SourceItem(
                path, rel, source.name, native, label, f"{source.name}:{group}", source.role
            )
            out.items.append(refine(item) if refine else item)
    return out
