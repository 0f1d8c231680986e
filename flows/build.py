"""The build flow: every DVC stage in order, then a new registered model version.

One MLflow parent run per build holds the params, the data version and the git commit;
each stage is a child run. The registered version gets the ``candidate`` alias only when
its figures pass ``release.gates``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import flow

from flows.outcome import failed_on_user_error
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import load_params
from pipeline_lib.release.project_lock import project_lock
from pipeline_lib.release.tracking import (
    configure,
    data_version,
    flatten_params,
    git_commit,
    git_dirty,
    stage_names,
)
from tasks.registry import register_version
from tasks.stages import push, run_stage

log = logging.getLogger(__name__)


def log_params_and_version(root: Path, run_id: str) -> None:
    """params.yaml (flattened) and the data version on the flow's parent run."""
    import mlflow
    import yaml

    raw = yaml.safe_load(Layout(root).params.read_text(encoding="utf-8"))
    flat = {k[:250]: v[:6000] for k, v in flatten_params(raw, "").items()}
    items = list(flat.items())
    for i in range(0, len(items), 100):
        mlflow.log_params(dict(items[i : i + 100]), run_id=run_id)
    dv = data_version(root)
    mlflow.set_tags({"data_version": dv["data_version"]} | {f"dvc.{k}": v for k, v in dv.items()})


def run_stages(root: Path, run_id: str, experiment_id: str) -> list[dict[str, Any]]:
    return [run_stage(s, str(root), run_id, experiment_id) for s in stage_names(root)]


@flow(name="build", log_prints=True)
def build(root: str = ".") -> Any:
    """All stages through DVC, logged to MLflow, then register the exported model. A user
    error (a failed stage or gate) ends the run Failed with its one sentence."""
    return failed_on_user_error(_build, Path(root).resolve())


def _build(project: Path) -> dict[str, Any]:
    import mlflow

    params = load_params(Layout(project).params)
    with project_lock(project, "build"):
        experiment_id = configure(project, params)
        tags = {"git_commit": git_commit(project), "git_dirty": str(git_dirty(project))}
        with mlflow.start_run(run_name="build", tags=tags | {"soundops.flow": "build"}) as run:
            run_id = run.info.run_id
            stages = run_stages(project, run_id, experiment_id)
            log_params_and_version(project, run_id)
            pushed = push(str(project))  # before registering: a version's data is in the remote
            registered = register_version(str(project), run_id)
    return {
        "flow": "build",
        "run_id": run_id,
        "experiment_id": experiment_id,
        "model": params.release.model_name,
        "stages": stages,
        "pushed": pushed,
        **registered,
    }
