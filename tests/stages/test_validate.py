"""The Great Expectations gate: passes good data, fails naming each blocking check."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline_lib.base.atomic import write_csv
from pipeline_lib.base.errors import GateError
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import Params
from pipeline_lib.stages.ingest import MANIFEST_COLUMNS, QUARANTINE_COLUMNS
from pipeline_lib.stages.validate import run_validate

Project = Callable[[dict[str, Any]], tuple[Params, Layout]]


def manifest(
    n_per_label: int = 30, labels: tuple[str, ...] = ("target", "confusable", "speech", "noise")
) -> pd.DataFrame:
    rows = []
    for lab in labels:
        for i in range(n_per_label):
            rows.append(
                {
                    "id": f"{lab}{i:04d}",
                    "path": f"audio/{lab}{i}.flac",
                    "label": lab,
                    "role": "clip",
                    "source": "t",
                    "group": f"t:{lab}:{i % 10}",
                    "fixed_split": "",
                    "source_path": f"{lab}/{i}.wav",
                    "native_label": lab,
                    "duration_s": 1.0,
                    "peak_dbfs": -3.0,
                    "rms_dbfs": -20.0,
                    "clipped_fraction": 0.0,
                    "orig_rate": 16000,
                    "orig_channels": 1,
                    "label_conflict": False,
                    "conflict_labels": "",
                    "duplicates": 0,
                }
            )
    rows.append(
        rows[0]
        | {
            "id": "stream0",
            "label": "background",
            "role": "stream",
            "group": "t:stream",
            "duration_s": 600.0,
        }
    )
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def _write(layout: Layout, frame: pd.DataFrame, quarantined: int = 0) -> None:
    write_csv(layout.manifest, frame)
    write_csv(
        layout.quarantine,
        pd.DataFrame(
            [
                {"source": "t", "source_path": f"bad{i}.wav", "reason": "undecodable audio"}
                for i in range(quarantined)
            ],
            columns=QUARANTINE_COLUMNS,
        ),
    )


def test_good_data_passes_and_writes_gate(
    make_project: Project, raw_params: dict[str, Any]
) -> None:
    params, layout = make_project(raw_params)
    _write(layout, manifest())
    results = run_validate(params, layout)
    assert all(r.success for r in results)
    assert json.loads(layout.gate.read_text())["passed"] is True
    assert "Gate passed" in (layout.validate / "report.html").read_text()


def test_blocking_failures_are_named(make_project: Project, raw_params: dict[str, Any]) -> None:
    params, layout = make_project(raw_params)
    frame = manifest(n_per_label=40)
    frame.loc[3, "label"] = "dog"
    frame.loc[5, "label_conflict"] = True
    frame.loc[7, "duration_s"] = 99.0
    _write(layout, frame, quarantined=40)
    with pytest.raises(GateError) as info:
        run_validate(params, layout)
    msg = str(info.value)
    for check in ("label_in_set", "no_label_conflicts", "clip_duration", "quarantine_share"):
        assert check in msg
    assert "'dog'" in msg and "clipping" not in msg
    assert not layout.gate.exists()
    result = json.loads((layout.validate / "results.json").read_text())
    failed = {c["check"] for c in result["checks"] if not c["success"]}
    assert failed == {"label_in_set", "no_label_conflicts", "clip_duration", "quarantine_share"}
    assert "Gate failed" in (layout.validate / "report.html").read_text()


def test_too_few_clips_or_groups_block(make_project: Project, raw_params: dict[str, Any]) -> None:
    raw_params["validate"]["min_clips_per_label"] = 40
    params, layout = make_project(raw_params)
    frame = manifest()
    frame.loc[frame["label"] == "noise", "group"] = "t:one-recording"
    _write(layout, frame)
    with pytest.raises(GateError, match=r"min_clips_per_label.*min_groups_per_label"):
        run_validate(params, layout)


def test_missing_class_fails(make_project: Project, raw_params: dict[str, Any]) -> None:
    params, layout = make_project(raw_params)
    _write(layout, manifest(labels=("target", "speech", "noise")))
    with pytest.raises(GateError, match=r"min_clips_per_label.*labels \['confusable'\]"):
        run_validate(params, layout)


def test_warnings_do_not_block(make_project: Project, raw_params: dict[str, Any]) -> None:
    params, layout = make_project(raw_params)
    frame = manifest()
    frame.loc[:20, "clipped_fraction"] = 0.5
    _write(layout, frame)
    results = run_validate(params, layout)
    assert [r.check for r in results if not r.success] == ["clipping"]
    assert layout.gate.exists()


def test_missing_manifest_is_one_sentence(
    make_project: Project, raw_params: dict[str, Any], tmp_path: Path
) -> None:
    params, layout = make_project(raw_params)
    with pytest.raises(Exception, match=r"manifest\.csv: not found; run the ingest stage first"):
        run_validate(params, layout)
