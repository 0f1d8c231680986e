"""``root/<class>/<file>``: the layout most users already have."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline_lib.audio.sources.base import Listing, class_folders, group_from_regex
from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.params import FolderSource
from pipeline_lib.base.paths import project_path


def list_folder(
    source: FolderSource, project_root: Path, labels: list[str], extensions: list[str]
) -> Listing:
    root = project_path(project_root, source.root)
    try:
        pattern = re.compile(source.group_regex) if source.group_regex else None
    except re.error as exc:
        raise SoundopsError(
            f"source '{source.name}': group_regex is not a valid regular expression ({exc})."
        ) from None

    def group_of(_native: str, path: Path) -> str:
        return group_from_regex(pattern, path.relative_to(root).as_posix())

    return class_folders(source, root, labels, extensions, group_of)
