"""The DET sweep and its operating points on constructed score streams."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline_lib.base.errors import ParamsError, SoundopsError
from pipeline_lib.base.params import parse_params
from pipeline_lib.detect.runtimes import load_scorer
from pipeline_lib.detect.streaming import Calibration, Scored
from pipeline_lib.stages.evaluate import (
    Recording,
    _extra_clips,
    _extra_streams,
    accepted_by_label,
    fah_at_recall,
    frr_at_fah,
    headline,
    sweep,
)
from tests.conftest import calibration_dict, tiny_model, tone, write_audio

HOP = 0.1


def _scored(s: np.ndarray) -> Scored:
    t = (np.arange(s.size) + 1) * HOP
    return Scored(t, s, s, [])


def test_sweep_finds_the_operating_points() -> None:
    bg = np.full(36000, 0.01)  # one hour
    bg[[1000, 5000, 9000, 20000]] = [0.6, 0.7, 0.8, 0.9]  # four confusions of rising score
    rec = Recording("bg", "demo", Path("bg.flac"), 3600.0, _scored(bg))
    pos = np.full(1000, 0.01)
    spans = [(10.0 * i + 5, 10.0 * i + 6) for i in range(9)]
    for i, (on, _) in enumerate(spans):
        pos[int(on / HOP) + 3] = 0.5 + 0.05 * i  # positives score 0.50 .. 0.90
    curve = sweep([rec], _scored(pos), spans, 2.0, 1.5, 0.5)
    assert curve["fah"].is_monotonic_decreasing and curve["frr"].is_monotonic_increasing
    at1 = frr_at_fah(curve, 1.0)  # one false alarm allowed: threshold above 0.8
    assert at1["fah"] == 1.0 and 0.8 < at1["threshold"] <= 0.9
    assert at1["frr"] == round(1 - 2 / 9, 5)  # the 0.85 and 0.90 positives are left
    zero = fah_at_recall(curve, 1.0)  # every positive found: threshold at or under 0.5
    assert zero["threshold"] <= 0.5 and zero["fah"] == 4.0


def test_sweep_separates_alarms_that_score_near_one() -> None:
    # INT8 scores of loud alarms and of positives crowd under 1.0; one quantile step up
    # there spans all of them, so the DET point must come from the scores themselves
    bg = np.full(36000, 0.01)  # one hour
    bg[[1000, 20000]] = [0.99930, 0.99960]
    rec = Recording("bg", "demo", Path("bg.flac"), 3600.0, _scored(bg))
    pos = np.full(1000, 0.01)
    spans = [(10.0 * i + 5, 10.0 * i + 6) for i in range(9)]
    for i, (on, _) in enumerate(spans):
        pos[int(on / HOP) + 3] = 0.99910 + 0.0001 * i  # 0.9991 .. 0.9999
    curve = sweep([rec], _scored(pos), spans, 2.0, 1.5, 0.5)
    at1 = frr_at_fah(curve, 1.0)  # just above the 0.9993 alarm: 0.9994 .. 0.9999 are heard
    assert at1["fah"] == 1.0 and 0.9993 < at1["threshold"] <= 0.9994
    assert at1["frr"] == round(1 - 6 / 9, 5)
    at0 = frr_at_fah(curve, 0.0)  # just above 0.9996: 0.9997 .. 0.9999
    assert at0["fah"] == 0.0 and at0["frr"] == round(1 - 3 / 9, 5)


def test_false_accepts_are_counted_per_label_at_the_threshold() -> None:
    # "other" pools near-phrase words with speech; only the per-label split shows which
    score = np.array([0.95, 0.40, 0.80, 0.10, 0.20, 0.70, 0.70])
    labels = np.array(
        ["confusable", "confusable", "confusable", "speech", "speech", "target", "target"]
    )
    out = accepted_by_label(score, labels, 0.7)
    assert out["confusable"] == {"clips": 3, "accepted": 2, "rate": round(2 / 3, 5)}
    assert out["speech"] == {"clips": 2, "accepted": 0, "rate": 0.0}
    assert out["target"]["accepted"] == 2  # at the threshold counts as accepted
    assert list(out) == ["confusable", "speech", "target"]


def test_user_test_sets_are_measured(
    tmp_path: Path, make_project: Any, raw_params: dict[str, Any]
) -> None:
    raw_params["evaluate"]["extra"] = [
        {"name": "kitchen", "kind": "streams", "root": "data/raw/kitchen"},
        {
            "name": "field",
            "kind": "clips",
            "root": "data/raw/field",
            "label_map": {"wake": "target"},
        },
        {"name": "gone", "kind": "streams", "root": "data/raw/nowhere"},
    ]
    params, layout = make_project(raw_params)
    rng = np.random.default_rng(0)
    for i in range(2):
        write_audio(
            layout.raw / "kitchen" / f"k{i}.wav", 0.1 * rng.standard_normal(16000 * 30), 16000
        )
    for label, n in (("wake", 3), ("confusable", 4)):
        for i in range(n):
            write_audio(
                layout.raw / "field" / label / f"{i}.wav", tone(1.0, 16000, 300 + 40 * i), 16000
            )
    scorer = load_scorer(tiny_model(tmp_path / "m"))
    cal = Calibration.from_dict(calibration_dict(threshold=0.5))
    kitchen, field, gone = params.evaluate.extra
    out = _extra_streams(kitchen, layout, params, scorer, cal)
    assert out["files"] == 2 and out["hours"] == round(60 / 3600, 4)
    assert out["fah_hi"] >= out["fah"] >= out["fah_lo"] >= 0
    clips = _extra_clips(field, layout, params, scorer, cal, np.zeros(16000, np.float32))
    assert clips["clips"] == 7 and clips["events"] == 3
    assert 0 <= clips["recall"] <= 1 and 0 <= clips["false_accept_rate"] <= 1
    with pytest.raises(SoundopsError, match=r"evaluate.extra 'gone': root .* does not exist"):
        _extra_streams(gone, layout, params, scorer, cal)


def _frame(sources: list[str]) -> pd.DataFrame:
    rows = [{"role": "clip", "split": "test", "label": "target", "source": s} for s in sources] + [
        {"role": "clip", "split": "test", "label": "speech", "source": "demo"}
    ]
    return pd.DataFrame(rows)


def test_headline_says_when_every_test_positive_is_synthetic(raw_params: dict[str, Any]) -> None:
    params = parse_params(raw_params)  # the shipped "demo" source is marked synthetic
    head = headline(_frame(["demo"] * 4), params, {})
    assert head["positives"] == "synthetic" and head["synthetic_positives"] == 4
    assert head["text"].startswith("Every one of the 4 test positives is synthetic")
    assert "evaluate.extra" in head["text"]
    real = {
        "field": {
            "kind": "clips",
            "clips": 10,
            "events": 6,
            "recall": 0.5,
            "recall_lo": 0.19,
            "recall_hi": 0.81,
            "false_accept_rate": 0.25,
        }
    }
    led = headline(_frame(["demo"] * 4), params, real)
    assert led["real_target_sets"] == ["field"]
    assert led["text"].startswith("On your real recordings 'field': recall 0.500")
    assert "evaluate.extra clips set" not in led["text"]
    mixed = headline(_frame(["demo", "mine", "mine"]), params, {})
    assert (
        mixed["positives"] == "mixed"
        and mixed["text"] == "1 of the 3 test positives are synthetic."
    )
    assert headline(_frame(["mine"]), params, {})["positives"] == "real"


def test_a_test_set_read_by_a_source_is_refused(raw_params: dict[str, Any]) -> None:
    raw_params["ingest"]["sources"].append(
        {"name": "mine", "kind": "folder", "root": "data/raw/mine"}
    )
    raw_params["evaluate"]["extra"] = [
        {"name": "field", "kind": "clips", "root": "data/raw/mine/field"}
    ]
    with pytest.raises(ParamsError, match=r"key 'evaluate\.extra\[0\]\.root': .*overlaps ingest"):
        parse_params(raw_params)
