"""The retrain flow: mine → accept → repro → register → challenger vs champion.

The champion is the version behind ``candidate`` (else ``edge``). The challenger takes the
``candidate`` alias only if it passes the release gates and is better on the figure
``release.compare`` names, measured on the same evaluation audio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.build import log_params_and_version, run_stages
from flows.outcome import failed_on_user_error
from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import load_params
from pipeline_lib.release import registry
from pipeline_lib.release.project_lock import project_lock
from pipeline_lib.release.tracking import configure, git_commit
from tasks.registry import accept_mined, register_version
from tasks.stages import push, run_stage


def champion(params: Any) -> registry.Version | None:
    for alias in (registry.CANDIDATE, "edge"):
        try:
            return registry.get_version(params, alias)
        except SoundopsError:
            continue
    return None


@flow(name="retrain", log_prints=True)
def retrain(root: str = ".", reason: str = "") -> Any:
    """Retrain on newly mined hard negatives and keep the better of challenger and champion."""
    return failed_on_user_error(_retrain, Path(root).resolve(), reason)


def _retrain(project: Path, reason: str) -> dict[str, Any]:
    import mlflow

    logger = get_run_logger()
    params = load_params(Layout(project).params)
    with project_lock(project, "retrain"):
        experiment_id = configure(project, params)
        tags = {"git_commit": git_commit(project), "soundops.flow": "retrain", "reason": reason}
        with mlflow.start_run(run_name="retrain", tags=tags) as run:
            run_id = run.info.run_id
            stages = [run_stage("mine", str(project), run_id, experiment_id)]
            try:
                accepted = accept_mined(str(project))
            except SoundopsError as exc:
                accepted = {"accepted": 0, "new": 0, "clips": 0, "error": str(exc)}
            mlflow.log_metrics({"accepted": accepted["accepted"], "new_clips": accepted["new"]})
            # the stages run even with no new clips: an earlier retrain may have accepted
            # them and failed before registering; DVC skips what is up to date
            stages += run_stages(project, run_id, experiment_id)
            log_params_and_version(project, run_id)
            champ = champion(params)
            newest = max((v.version for v in registry.versions_or_none(params)), default=0)
            push(str(project))
            registered = register_version(str(project), run_id, set_candidate=False)
            challenger = registry.get_version(params, str(registered["version"]))
            if challenger.version <= newest:
                cause = accepted.get("error") or "no new hard negatives"
                why = (
                    f"nothing new to train on ({cause}); version {challenger.version} "
                    "already holds these outputs"
                )
                logger.info("retrain: %s", why)
                mlflow.set_tag("verdict", why)
                return {"flow": "retrain", "run_id": run_id, "retrained": False, "why": why}
            if registered["failed_gates"]:
                promoted, why = False, "gates failed: " + "; ".join(registered["failed_gates"])
            elif champ is None:
                promoted, why = True, "no champion yet"
            else:
                promoted, why = registry.better(challenger, champ, params)
            if promoted:
                registry.set_candidate(params, challenger.version)
            mlflow.set_tags(
                {
                    "challenger": challenger.version,
                    "champion": getattr(champ, "version", "none"),
                    "verdict": why,
                }
            )
            logger.info(
                "challenger v%d %s: %s",
                challenger.version,
                "takes candidate" if promoted else "does not replace the champion",
                why,
            )
    return {
        "flow": "retrain",
        "run_id": run_id,
        "retrained": True,
        "accepted": accepted["accepted"],
        "stages": stages,
        "version": challenger.version,
        "champion": getattr(champ, "version", None),
        "candidate": promoted,
        "why": why,
    }
