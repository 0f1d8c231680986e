"""One Prefect task per DVC stage: ``dvc repro --single-item STAGE`` in the project, with
its own MLflow child run under the flow's parent run.

DVC decides whether the stage reruns (an up-to-date stage is reported as skipped), so the
task caches nothing itself. A failure DVC reports as a lock held by another process is the
one transient error, and the only one retried.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.release.tracking import log_stage, quiet_env

TRANSIENT = ("Unable to acquire lock", "is busy, retry")


def tool_env() -> dict[str, str]:
    """The environment with this interpreter's bin folder first on PATH, so ``dvc`` is the
    project's own even when the flow runs from a deployment without the venv activated."""
    return os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    }


def _retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    return any(t in (state.message or "") for t in TRANSIENT)


def _run_dvc(stage: str, root: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run the stage with its output passed through live (progress bars included) and
    kept, to tell a skipped stage from a run one and to quote a failure."""
    proc = subprocess.Popen(
        ["dvc", "repro", "--single-item", stage],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    kept = bytearray()
    while chunk := os.read(proc.stdout.fileno(), 4096):
        sys.stderr.buffer.write(chunk)
        sys.stderr.buffer.flush()
        kept += chunk
        del kept[:-65536]
    return proc.wait(), kept.decode("utf-8", errors="replace")


def _failure_sentence(stage: str, output: str) -> str:
    """The stage's own one-sentence error (``error: ...``) if it printed one, else DVC's."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    ours = [ln[len("error:") :].strip() for ln in lines if ln.startswith("error:")]
    dvcs = [ln for ln in lines if ln.startswith("ERROR:")]
    why = (ours or dvcs or lines or ["no output"])[-1]
    return f"stage '{stage}' failed: {why}"


class StageFailedError(SoundopsError):
    """A stage run by a flow failed (the sentence is the stage's own)."""


def push(root: str) -> bool:
    """The DVC push task, its Failed state turned into one exception (as for stages)."""
    state = dvc_push(root, return_state=True)
    if state.is_failed():
        raise StageFailedError(state.message or "dvc push failed")
    pushed: bool = state.result()
    return pushed


def run_stage(stage: str, root: str, parent_run_id: str, experiment_id: str) -> dict[str, Any]:
    """Run the task and turn its Failed state into one exception with the stage's sentence
    (the task returns a Failed state rather than raising, so no traceback is logged)."""
    state = dvc_stage(stage, root, parent_run_id, experiment_id, return_state=True)
    if state.is_failed():
        raise StageFailedError(state.message or f"stage '{stage}' failed")
    out: dict[str, Any] = state.result()
    return out


@task(
    name="stage",
    task_run_name="{stage}",
    retries=3,
    retry_delay_seconds=5,
    retry_condition_fn=_retry_if_transient,
    cache_policy=NO_CACHE,
)
def dvc_stage(stage: str, root: str, parent_run_id: str, experiment_id: str) -> Any:
    """Run one stage through DVC and log it to MLflow as a child run of the flow's run."""
    import mlflow
    from mlflow import MlflowClient

    logger = get_run_logger()
    client = MlflowClient()
    child = client.create_run(
        experiment_id,
        run_name=stage,
        tags={"mlflow.parentRunId": parent_run_id, "soundops.stage": stage},
    )
    run_id = child.info.run_id
    env = tool_env() | quiet_env()
    env |= {
        "MLFLOW_RUN_ID": run_id,
        "MLFLOW_EXPERIMENT_ID": experiment_id,
        "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),  # the stage logs to the flow's store
    }
    start = time.perf_counter()
    code, output = _run_dvc(stage, Path(root), env)
    seconds = time.perf_counter() - start
    skipped = f"Stage '{stage}' didn't change, skipping" in output
    if code != 0:
        client.set_tag(run_id, "soundops.outcome", "failed")
        client.set_terminated(run_id, "FAILED")
        sentence = _failure_sentence(stage, output)
        logger.error(sentence)
        return Failed(message=sentence)
    log_stage(Path(root), stage, run_id)
    client.set_tag(run_id, "soundops.outcome", "skipped" if skipped else "ran")
    client.log_metric(run_id, "stage_seconds", seconds)
    client.set_terminated(run_id, "FINISHED")
    logger.info("%s: %s in %.1f s", stage, "up to date, skipped" if skipped else "ran", seconds)
    return {"stage": stage, "skipped": skipped, "seconds": round(seconds, 1), "run_id": run_id}


@task(name="dvc-push", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def dvc_push(root: str) -> Any:
    """Send the build's outputs to the default DVC remote, when the project has one."""
    logger = get_run_logger()
    env = tool_env()
    remote = subprocess.run(
        ["dvc", "remote", "default"], cwd=root, env=env, capture_output=True, text=True
    )
    if remote.returncode != 0 or not remote.stdout.strip():
        logger.info("no default DVC remote: outputs stay in the local cache")
        return False
    done = subprocess.run(["dvc", "push", "-q"], cwd=root, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sentence = f"dvc push failed: {_failure_sentence('push', done.stderr)}"
        logger.error(sentence)
        return Failed(message=sentence)
    logger.info("pushed to DVC remote '%s'", remote.stdout.strip())
    return True
