"""MLflow for the flows: where it lives, the data version of a build, and one child run
per stage with that stage's params, metrics, plots and report.

The embedded default is a SQLite file and an artifact folder under ``.soundops/`` in the
project; ``MLFLOW_TRACKING_URI`` (or ``release.tracking_uri``) points at a tracking server
instead. Stage code never imports this: the train stage only logs per-epoch figures to the
run named by ``MLFLOW_RUN_ID``, which the flow sets for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import pandas as pd
import yaml

from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import Params

log = logging.getLogger(__name__)

STATE_DIR = ".soundops"


def quiet_env() -> dict[str, str]:
    """Offline and telemetry settings every MLflow process here runs with."""
    return {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK": "true",
        "GIT_PYTHON_REFRESH": "quiet",
    }


# Read once, at import: ``mlflow.set_tracking_uri`` writes this variable itself, so a later
# read would see the previous project's store rather than the user's choice.
_USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def tracking_uri(root: Path, params: Params) -> str:
    """The user's environment wins, then params, then the project's own SQLite file."""
    env = _USER_TRACKING_URI
    if env:
        return env
    if params.release.tracking_uri:
        return params.release.tracking_uri
    return f"sqlite:///{(root / STATE_DIR / 'mlflow.db').resolve()}"


_SECRET_QUERY = re.compile(r"(?i)(token|password|passwd|secret|key|auth|sig|signature)")


def redact_uri(uri: str) -> str:
    """A tracking URI fit to log or print: the password of ``user:pass@`` and the values of
    secret-looking query keys become ``***``."""
    parts = urlsplit(uri)
    if not parts.netloc and not parts.query:
        return uri
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}:***@{host}" if ":" in user else f"***@{host}"
    query = "&".join(
        f"{k}=***" if _SECRET_QUERY.search(k) else f"{k}={v}"
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def configure(root: Path, params: Params) -> str:
    """Point MLflow at this project's store and return the experiment id (created with an
    absolute artifact location, so artifacts never land in the current directory)."""
    import mlflow

    os.environ.update(quiet_env())
    uri = tracking_uri(root, params)
    (root / STATE_DIR).mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    name = params.release.experiment
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        location = None
        if uri.startswith("sqlite:"):
            location = (root / STATE_DIR / "mlartifacts").resolve().as_uri()
        exp_id = mlflow.create_experiment(name, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return str(exp_id)


def git_commit(root: Path) -> str:
    proc = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def git_dirty(root: Path) -> bool:
    proc = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    return bool(proc.stdout.strip())


def data_version(root: Path) -> dict[str, str]:
    """The md5 of every stage output in ``dvc.lock`` (``data/model`` → its hash), plus one
    short hash over all of them: what a run or model version was built from."""
    lock_path = root / "dvc.lock"
    if not lock_path.is_file():
        raise SoundopsError(f"{lock_path}: not found; the stages have not run yet.")
    lock = yaml.safe_load(lock_path.read_text(encoding="utf-8")) or {}
    outs: dict[str, str] = {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if "md5" in out:
                outs[str(out["path"])] = str(out["md5"])
    digest = hashlib.sha256(json.dumps(outs, sort_keys=True).encode()).hexdigest()[:16]
    return {"data_version": digest} | outs


def eval_audio_hash(root: Path) -> str:
    """Which audio the evaluation ran on (test clips and test background streams, by
    content id): two versions' figures compare only when this matches."""
    table = root / "data" / "split" / "assignment.csv"
    if not table.is_file():
        raise SoundopsError(f"{table}: not found; run the split stage first.")
    frame = pd.read_csv(table, dtype={"id": str}, usecols=["id", "split"])
    ids = sorted(frame.loc[frame["split"] == "test", "id"])
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def flatten(obj: Any, prefix: str = "") -> dict[str, float]:
    """Numbers in a nested metrics document as MLflow metric keys (``a.b.c``)."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out |= flatten(value, f"{prefix}{key}.")
    elif isinstance(obj, int | float):  # bool is an int
        out[prefix.rstrip(".")] = float(obj)
    return out


def flatten_params(obj: Any, prefix: str) -> dict[str, str]:
    """Nested params as MLflow param keys (``train.boost.share``), lists as JSON."""
    if isinstance(obj, dict):
        out: dict[str, str] = {}
        for key, value in obj.items():
            out |= flatten_params(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    if prefix.endswith("tracking_uri") and isinstance(obj, str):
        return {prefix: redact_uri(obj)}  # credentials never become an MLflow param
    return {prefix: json.dumps(obj) if isinstance(obj, list | dict) else str(obj)}


def stage_spec(root: Path, stage: str) -> dict[str, Any]:
    spec = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    if stage not in spec:
        raise SoundopsError(f"dvc.yaml: no stage named '{stage}'.")
    out: dict[str, Any] = spec[stage]
    return out


def stage_names(root: Path) -> list[str]:
    """The stages in ``dvc.yaml`` order (which is the graph's order here)."""
    return list(yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"])


def _paths(entries: list[Any]) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else str(e) for e in entries]


def log_stage(root: Path, stage: str, run_id: str) -> None:
    """Log what one stage read and wrote to its (child) run: the params it lists in
    ``dvc.yaml``, its metrics files, its plot files and any HTML report among its outs."""
    from mlflow import MlflowClient

    client = MlflowClient()
    spec = stage_spec(root, stage)
    raw = yaml.safe_load(Layout(root).params.read_text(encoding="utf-8"))
    params: dict[str, str] = {}
    for key in spec.get("params") or []:
        value: Any = raw
        for part in str(key).split("."):
            value = value.get(part) if isinstance(value, dict) else None
        params |= flatten_params(value, str(key))
    for key, value in params.items():  # one call each: MLflow caps param values at 6000
        client.log_param(run_id, key[:250], value[:6000])
    metrics: dict[str, float] = {}
    for path in _paths(spec.get("metrics") or []):
        file = root / path
        if file.is_file():
            metrics |= flatten(json.loads(file.read_text(encoding="utf-8")))
    if metrics:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k[:250], v, now, 0) for k, v in metrics.items()]
        for i in range(0, len(batch), 900):
            client.log_batch(run_id, metrics=batch[i : i + 900])
    for path in _paths(spec.get("plots") or []):
        file = root / path
        if file.is_file():
            client.log_artifact(run_id, str(file), "plots")
    for path in _paths(spec.get("outs") or []):
        folder = root / path
        for report in sorted(folder.glob("*.html")) if folder.is_dir() else []:
            client.log_artifact(run_id, str(report), "reports")


def epoch_logger() -> Callable[[dict[str, float], int], None] | None:
    """Per-epoch figures to MLflow, live, when this process runs inside a flow's stage run
    (``MLFLOW_RUN_ID`` set, as ``tasks.stages`` sets it); ``None`` otherwise, so a stage
    run by hand or by ``dvc repro`` never imports MLflow."""
    if not os.environ.get("MLFLOW_RUN_ID"):
        return None
    import mlflow

    def log(row: dict[str, float], step: int) -> None:
        mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=step)

    return log
