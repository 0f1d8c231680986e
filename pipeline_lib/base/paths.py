"""Resolving untrusted paths so they cannot leave their declared root."""

from __future__ import annotations

from pathlib import Path

from pipeline_lib.base.errors import PathEscapeError


def resolve_inside(root: Path, candidate: str | Path, what: str) -> Path:
    """Resolve ``candidate`` against ``root`` (symlinks followed) and require it to stay inside.

    ``what`` names the file or key the path came from, for the error sentence.
    """
    root_resolved = root.resolve()
    path = (root_resolved / candidate).resolve()
    if not path.is_relative_to(root_resolved):
        raise PathEscapeError(f"{what}: path '{candidate}' resolves outside its root {root}.")
    return path


def project_path(project_root: Path, value: Path) -> Path:
    """A path from params: relative values are relative to the project root."""
    return value if value.is_absolute() else project_root / value
