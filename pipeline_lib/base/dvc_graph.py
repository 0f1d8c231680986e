"""``dvc.yaml`` as data: each stage's listed deps, and the path params that must lie under them.

DVC reruns a stage only when a listed dependency changed. A params value that names a
folder the stage reads (``mine.audio``, ``evaluate.extra[].root``, ``ingest.sources[].root``)
is therefore only safe when that folder lies under one of the stage's deps: new audio in
a folder DVC does not watch never reruns the stage. ``soundops params check`` says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.params import Params
from pipeline_lib.base.paths import project_path


def stage_deps(root: Path) -> dict[str, list[str]]:
    """Every stage of ``root/dvc.yaml`` with its listed deps, in file order."""
    path = root / "dvc.yaml"
    try:
        doc: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SoundopsError(f"{path}: unreadable ({exc.__class__.__name__}).") from None
    stages = doc.get("stages") if isinstance(doc, dict) else None
    if not isinstance(stages, dict):
        raise SoundopsError(f"{path}: no 'stages' mapping.")
    return {name: [str(d) for d in (s or {}).get("deps") or []] for name, s in stages.items()}


def path_params(params: Params) -> dict[str, list[tuple[str, Path]]]:
    """The params values that name audio a stage reads, by stage: ``(key, path)``."""
    ingest = [(f"ingest.sources[{i}].root", s.root) for i, s in enumerate(params.ingest.sources)]
    ingest += [
        (f"ingest.sources[{i}].path", s.path)
        for i, s in enumerate(params.ingest.sources)
        if s.kind == "manifest"
    ]
    return {
        "ingest": ingest,
        "mine": [(f"mine.audio[{i}]", p) for i, p in enumerate(params.mine.audio)],
        "evaluate": [
            (f"evaluate.extra[{i}].root", e.root) for i, e in enumerate(params.evaluate.extra)
        ],
    }


CODE = "pipeline_lib"  # code deps: no place for audio


def lies_under(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def uncovered_path_params(root: Path, params: Params) -> list[str]:
    """One sentence per path param that lies under none of its stage's deps."""
    deps = stage_deps(root)
    problems = []
    for stage, entries in path_params(params).items():
        if stage not in deps:
            continue
        listed = [project_path(root, Path(d)).resolve() for d in deps[stage]]
        for key, value in entries:
            where = project_path(root, value).resolve()
            if not any(lies_under(where, d) for d in listed):
                problems.append(
                    f"{key}: {value} lies under none of the {stage} stage's deps in dvc.yaml, "
                    f"so new audio there never reruns {stage}; move it under one of "
                    f"{', '.join(d for d in deps[stage] if not d.startswith(CODE))} "
                    "or add it to the stage's deps."
                )
    return problems
