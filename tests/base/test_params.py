from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from pipeline_lib.base.errors import ParamsError, SoundopsError
from pipeline_lib.base.params import load_params, parse_params
from pipeline_lib.cli import app
from tests.conftest import REPO, shipped_params


def test_shipped_params_are_valid() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.labels[0] == "target"
    assert sum(params.split.ratios.values()) == pytest.approx(1.0)


def _err(raw: dict[str, Any]) -> str:
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    return str(info.value)


def test_unknown_key_is_named(raw_params: dict[str, Any]) -> None:
    raw_params["split"]["ratioz"] = 1
    assert _err(raw_params) == "params.yaml: unknown key 'split.ratioz'."


def test_wrong_type_names_key_and_value(raw_params: dict[str, Any]) -> None:
    raw_params["audio"]["sample_rate"] = "fast"
    msg = _err(raw_params)
    assert "'audio.sample_rate'" in msg and "'fast'" in msg and "integer" in msg


def test_missing_key_is_named(raw_params: dict[str, Any]) -> None:
    del raw_params["split"]
    assert _err(raw_params) == "params.yaml: missing required key 'split'."


def test_label_map_must_target_project_labels(raw_params: dict[str, Any]) -> None:
    raw_params["ingest"]["sources"][0]["label_map"] = {"yes": "dron"}
    msg = _err(raw_params)
    assert "'ingest.sources[0].label_map.yes'" in msg and "'dron'" in msg


def test_ratios_must_sum_to_one(raw_params: dict[str, Any]) -> None:
    raw_params["split"]["ratios"] = {"train": 0.5, "val": 0.1, "test": 0.1}
    assert "'split'" in _err(raw_params) and "sum to 1" in _err(raw_params)


def test_range_order_and_source_kind(raw_params: dict[str, Any]) -> None:
    bad = copy.deepcopy(raw_params)
    bad["generate"]["rate_wpm"] = {"min": 300, "max": 100}
    assert "'generate.rate_wpm'" in _err(bad)
    bad = copy.deepcopy(raw_params)
    bad["ingest"]["sources"][0]["kind"] = "tarball"
    assert "'ingest.sources[0].kind'" in _err(bad)


def test_cli_check_fails_with_one_sentence(tmp_path: Path, raw_params: dict[str, Any]) -> None:
    raw_params["validate"]["max_quiet_share"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params), encoding="utf-8")
    result = CliRunner().invoke(app, ["params", "check", "--root", str(tmp_path)])
    assert result.exit_code == 2
    out = " ".join(result.output.split())
    assert "validate.max_quiet_share" in out and "less than or equal to 1" in out
    assert "Traceback" not in result.output


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("seed: 1\nlabels: [a, b\n", encoding="utf-8")
    with pytest.raises(ParamsError, match=r"not valid YAML at line \d"):
        load_params(tmp_path / "params.yaml")


def test_missing_params_file(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "params.yaml")


def test_params_check_names_a_compare_point_evaluate_does_not_measure() -> None:
    raw = shipped_params()
    raw["release"]["compare"]["recall"] = 0.8
    with pytest.raises(SoundopsError, match=r"release\.compare\.recall"):
        parse_params(raw)
