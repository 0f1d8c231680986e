"""`soundops run serve`'s deployments: schedules from params, retrain on the monitor's
regression event."""

from __future__ import annotations

from pathlib import Path

from pipeline_lib.base.params import parse_params
from tests.conftest import shipped_params


def test_serve_deploys_schedules_from_params_and_retrain_on_the_regression_event(
    tmp_path: Path,
) -> None:
    from flows.monitor import EVENT
    from flows.serve import deployments

    raw = shipped_params()
    raw["release"]["schedules"] |= {"build": None, "monitor": "*/15 * * * *"}
    found = {d.name: d for d in deployments(tmp_path, parse_params(raw))}
    assert set(found) == {"soundops-build", "soundops-monitor", "soundops-retrain"}
    assert not found["soundops-build"].schedules
    (monitor,) = found["soundops-monitor"].schedules
    assert monitor.schedule.cron == "*/15 * * * *"
    (trigger,) = found["soundops-retrain"].triggers
    assert trigger.expect == {EVENT}
    assert trigger.parameters is not None and trigger.parameters["root"] == str(tmp_path)
