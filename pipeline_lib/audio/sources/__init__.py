"""Input source kinds. Each lists audio items with project labels and groups, or rejects.

A source only *lists*; decoding happens in ingest. Every kind maps its own labels through
``label_map`` and derives a group (speaker, recording, source clip) so the split stage can
keep a group inside one split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from pipeline_lib.audio.sources.base import Listing, SourceItem
from pipeline_lib.audio.sources.corpora import (
    list_drone,
    list_esc50,
    list_picovoice,
    list_speech_commands,
)
from pipeline_lib.audio.sources.folder import list_folder
from pipeline_lib.audio.sources.manifest import list_manifest
from pipeline_lib.base.params import Source
from pipeline_lib.base.paths import project_path

Lister = Callable[[Source, Path, list[str], list[str]], Listing]

LISTERS: dict[str, Lister] = {
    "folder": list_folder,  # type: ignore[dict-item]
    "manifest": list_manifest,  # type: ignore[dict-item]
    "speech_commands": list_speech_commands,  # type: ignore[dict-item]
    "esc50": list_esc50,  # type: ignore[dict-item]
    "picovoice": list_picovoice,  # type: ignore[dict-item]
    "drone": list_drone,  # type: ignore[dict-item]
}


def list_source(
    source: Source, project_root: Path, labels: list[str], extensions: list[str]
) -> Listing:
    """List one source's items; relative paths in its params resolve against the project.

    An ``optional`` source whose root does not exist lists nothing (the hard-negative folder
    before the first ``soundops mine accept``); a source with ``split`` pins all its items.
    """
    if source.optional and not project_path(project_root, source.root).exists():
        return Listing()
    listing = LISTERS[source.kind](source, project_root, labels, extensions)
    if source.split is not None:
        listing.items = [replace(i, fixed_split=source.split) for i in listing.items]
    return listing


__all__ = ["LISTERS", "Listing", "SourceItem", "list_source"]
