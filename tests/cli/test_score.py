"""``soundops score`` and ``soundops export-onnx`` through the real command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from pipeline_lib.cli import app
from tests.conftest import calibration_dict, tiny_model, tone, write_audio


def _setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    model = tiny_model(tmp_path / "model")
    cal = tmp_path / "calibration.json"
    cal.write_text(json.dumps(calibration_dict(threshold=0.3)), encoding="utf-8")
    rng = np.random.default_rng(0)
    audio = tone(8.0, 16000) * (rng.random(8 * 16000) > 0.5)
    wav = write_audio(tmp_path / "long.wav", audio.astype(np.float32), 16000)
    return model, cal, wav


def test_score_writes_windows_and_events_for_torch_and_onnx(tmp_path: Path) -> None:
    model, cal, wav = _setup(tmp_path)
    run = CliRunner().invoke
    res = run(
        app,
        [
            "score",
            str(wav),
            "--model",
            str(model),
            "--calibration",
            str(cal),
            "--out",
            str(tmp_path / "t"),
        ],
    )
    assert res.exit_code == 0, res.output
    windows = pd.read_csv(tmp_path / "t" / "windows.csv")
    assert len(windows) == 1 + (800 - 48) // 10  # 8 s at a 10-frame hop, 48-frame window
    assert windows["time_s"].iloc[0] == 0.48 and windows["score"].between(0, 1).all()
    assert (tmp_path / "t" / "events.csv").is_file()
    res = run(
        app,
        ["export-onnx", str(tmp_path / "m.onnx"), "--model", str(model), "--calibration", str(cal)],
    )
    assert res.exit_code == 0, res.output
    # the exported file carries its calibration: no --calibration needed
    res = run(
        app,
        [
            "score",
            str(wav),
            "--model",
            str(tmp_path / "m.onnx"),
            "--format",
            "json",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "o" / "scores.json").read_text())
    onnx_scores = [w["score"] for w in doc["files"][0]["windows"]]
    assert np.allclose(onnx_scores, windows["score"], atol=1e-4)
    assert doc["threshold"] == 0.3 and doc["model"] == "onnx:m.onnx"


def test_bad_inputs_are_one_sentence_and_write_nothing(tmp_path: Path) -> None:
    model, cal, wav = _setup(tmp_path)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really audio")
    run = CliRunner().invoke
    cases = [
        ([str(wav), str(bad)], "bad.wav: undecodable audio"),
        ([str(tmp_path / "nope.wav")], "nope.wav: audio file not found"),
        ([str(wav), "--preset", "loud"], "calibration preset 'loud' does not exist"),
        ([str(wav), "--model", str(tmp_path / "x.onnx")], "x.onnx: model not found"),
    ]
    for args, message in cases:
        out = tmp_path / "out"
        res = run(
            app,
            ["score", *args, "--out", str(out)]
            + ([] if "--model" in args else ["--model", str(model)])
            + ["--calibration", str(cal)],
        )
        assert res.exit_code == 2, (args, res.output)
        assert message in " ".join(res.output.split()), res.output
        assert "Traceback" not in res.output and not out.exists()
