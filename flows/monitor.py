"""The monitor flow: the ``edge`` version on newly arrived audio, FAH against what was
recorded for it and against the target; a regression emits a Prefect event and retrains.

With a Prefect server and the retrain deployment served (``soundops serve``), the event's
automation starts the retrain deployment; without one, this flow runs retrain itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

from prefect import State, flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from flows.outcome import failed_on_user_error
from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import load_params
from pipeline_lib.release import registry
from pipeline_lib.release.monitor import field_folder, regression, score_field
from pipeline_lib.release.tracking import configure

EVENT = "soundops.fah.regression"
RETRAIN_DEPLOYMENT = "retrain/soundops-retrain"


def resource_id(model_name: str) -> str:
    return f"soundops.model.{model_name}"


def retrain_deployment_served() -> bool:
    """A retrain deployment exists on an explicitly configured Prefect server (a temporary
    server has none, and its events reach no automation)."""
    if not os.environ.get("PREFECT_API_URL"):
        return False
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            dep = client.read_deployment_by_name(RETRAIN_DEPLOYMENT)
    except Exception:  # ObjectNotFound, or no server answering: run retrain here
        return False
    # READY only while a `soundops serve` process polls for its runs
    return str(getattr(dep.status, "value", dep.status)).upper() == "READY" and not dep.paused


@task(name="score-field-audio", cache_policy=NO_CACHE)
def check_field(root: str, version: int) -> dict[str, Any]:
    project = Path(root)
    params = load_params(Layout(project).params)
    v = registry.get_version(params, str(version))
    model_dir = registry.download(params, v, project)
    return score_field(model_dir, field_folder(project, params.release.monitor.folder)).as_dict()


@flow(name="monitor", log_prints=True)
def monitor(root: str = ".", channel: str = "edge") -> Any:
    """Score the channel's version on the monitor folder; retrain on a FAH regression."""
    return failed_on_user_error(_monitor, Path(root).resolve(), channel)


def _monitor(project: Path, channel: str) -> dict[str, Any]:
    import mlflow

    logger = get_run_logger()
    params = load_params(Layout(project).params)
    configure(project, params)
    version = registry.get_version(params, channel)
    recorded = version.figures.get("fah", float("nan"))
    with mlflow.start_run(run_name="monitor", tags={"soundops.flow": "monitor"}) as run:
        check = check_field(str(project), version.version)
        field = check["figures"]
        rp = params.release
        verdict = regression(field, recorded, rp.gates.max_fah, rp.monitor.tolerance)
        mlflow.set_tags(
            {
                "version": version.version,
                "channel": channel,
                "regression": verdict.regression or verdict.over_target,
                "over_target": verdict.over_target,
                "verdict": verdict.reason,
            }
        )
        mlflow.log_metrics(
            {f"field_{k}": float(v) for k, v in field.items()}
            | {"recorded_fah": recorded, "max_fah": rp.gates.max_fah, "files": check["files"]}
        )
        mlflow.log_dict(check, "field_check.json")
        run_id = run.info.run_id
    logger.info("monitor v%d: %s", version.version, verdict.reason)
    result: dict[str, Any] = {
        "flow": "monitor",
        "run_id": run_id,
        "version": version.version,
        "field": field,
        "recorded_fah": recorded,
        "regression": verdict.regression or verdict.over_target,
        "why": verdict.reason,
        "retrain": None,
    }
    if not result["regression"]:
        return result
    emit_event(
        EVENT,
        resource={
            "prefect.resource.id": resource_id(rp.model_name),
            "prefect.resource.name": rp.model_name,
        },
        payload={"version": version.version, "reason": verdict.reason, "root": str(project)},
    )
    if retrain_deployment_served():
        logger.info("FAH regression: event emitted; the retrain deployment's trigger runs it")
        result["retrain"] = "triggered"
    else:
        from flows.retrain import retrain

        logger.info("FAH regression: no retrain deployment served, running retrain here")
        state = cast(
            State[Any], retrain(root=str(project), reason=verdict.reason, return_state=True)
        )
        if state.is_failed():
            raise SoundopsError(f"retrain after the FAH regression failed: {state.message}")
        result["retrain"] = state.result()
    return result
