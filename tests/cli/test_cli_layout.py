"""The command line's error contract, and dvc.yaml kept in step with the code's layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from pipeline_lib.base.layout import Layout
from pipeline_lib.cli import app
from pipeline_lib.stages import STAGES
from tests.conftest import REPO


def test_dvc_yaml_matches_layout() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(stages) == list(STAGES)
    layout = Layout(REPO)
    outs = {
        n: [o if isinstance(o, str) else next(iter(o)) for o in s.get("outs", [])]
        for n, s in stages.items()
    }
    rel = lambda p: p.relative_to(REPO).as_posix()  # noqa: E731
    assert outs["generate"] == [rel(layout.generated)]
    assert outs["ingest"] == [rel(layout.ingest)]
    assert outs["validate"] == [rel(layout.validate)]
    assert outs["split"] == [rel(layout.split)]
    assert outs["extract"] == [rel(layout.features)]
    assert outs["train"] == [rel(layout.model)]
    assert outs["calibrate"] == [rel(layout.calibration)]
    assert outs["verifier"] == [rel(layout.verifier)]
    assert rel(layout.gate) in stages["split"]["deps"]
    produced = [o for stage_outs in outs.values() for o in stage_outs]
    for name, stage in stages.items():
        assert stage["cmd"] == f"soundops stage {name}"
        for dep in stage["deps"]:
            # A dependency is either another stage's output (absent in a fresh clone) or a
            # file the clone ships with.
            made = any(dep == o or dep.startswith(o + "/") for o in produced)
            assert made or (REPO / dep).exists(), f"{name}: dependency {dep} missing"


def test_unknown_stage_is_one_sentence() -> None:
    result = CliRunner().invoke(app, ["stage", "train-everything"])
    assert result.exit_code == 2
    assert "stage 'train-everything' does not exist" in result.output
    assert "Traceback" not in result.output


def test_stage_user_error_exits_non_zero(tmp_path: Path, raw_params: dict[str, Any]) -> None:
    raw_params["ingest"]["sources"] = [{"name": "mine", "kind": "folder", "root": "nowhere"}]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params), encoding="utf-8")
    result = CliRunner().invoke(app, ["stage", "ingest", "--root", str(tmp_path)])
    assert result.exit_code == 2
    assert "source 'mine': root folder" in result.output and "does not exist" in result.output
    assert not (tmp_path / "data" / "ingest").exists()
