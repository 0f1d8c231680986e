"""The streaming detector equals whole-recording scoring, in any piece size, in bounded
memory, for the PyTorch folder and its ONNX export alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline_lib.audio import features
from pipeline_lib.audio.io import resample
from pipeline_lib.detect import decision
from pipeline_lib.detect.checkpoint import load_model
from pipeline_lib.detect.runtimes import OnnxScorer, TorchScorer, export_onnx, load_scorer
from pipeline_lib.detect.streaming import Calibration, Scored, StreamingDetector, score_file
from tests.conftest import calibration_dict, tiny_model, write_audio


def _audio(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    x = 0.05 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * 300 * t) * (np.sin(t) > 0.5)
    return x.astype(np.float32)


@pytest.mark.parametrize("front_end", ["micro", "logmel"])
def test_pieces_of_any_size_equal_the_whole(tmp_path: Path, front_end: str) -> None:
    model, spec = load_model(tiny_model(tmp_path / "m", front_end))
    cal = Calibration.from_dict(calibration_dict(threshold=0.5))
    x = _audio(20.0)
    feats = features.compute(x, spec.feature_params, spec.rate)
    lg, times = decision.window_logits(model, spec, feats, cal.rule.hop_frames)
    whole = decision.event_probability(lg)
    det = StreamingDetector(TorchScorer(model, spec), cal)
    rng = np.random.default_rng(1)
    parts, i = [], 0
    while i < x.size:
        n = int(rng.integers(1, 9000))
        parts.append(det.push(x[i : i + n]))
        assert len(det._buf) <= spec.frames + 9000 // 160 + 1  # bounded by the piece size
        i += n
    got = Scored.join(parts)
    assert got.times.tolist() == pytest.approx(times.tolist())
    assert got.scores == pytest.approx(whole, abs=1e-5)
    assert got.smoothed == pytest.approx(decision.smooth(whole, 2), abs=1e-5)
    expected = decision.detect(decision.smooth(whole, 2), times, 0.5, 2.0)
    assert [t for t, _ in got.events] == [t for t, _ in expected]


def test_onnx_export_scores_like_pytorch(tmp_path: Path) -> None:
    folder = tiny_model(tmp_path / "m")
    model, spec = load_model(folder)
    cal = calibration_dict(threshold=0.4)
    onnx_path = export_onnx(model, spec, tmp_path / "m.onnx", cal)
    onnx = load_scorer(onnx_path)
    assert isinstance(onnx, OnnxScorer) and onnx.calibration == cal and onnx.spec == spec
    wav = write_audio(tmp_path / "a.wav", _audio(12.0), 16000)
    c = Calibration.from_dict(cal)
    a, b = score_file(wav, load_scorer(folder), c), score_file(wav, onnx, c)
    assert a.scored.scores == pytest.approx(b.scored.scores, abs=1e-4)
    assert a.duration_s == pytest.approx(12.0)


def test_other_rates_are_resampled_in_seamless_blocks(tmp_path: Path) -> None:
    folder = tiny_model(tmp_path / "m", "logmel")
    scorer, cal = load_scorer(folder), Calibration.from_dict(calibration_dict())
    x44 = _audio(9.0, 44100)
    wav = write_audio(tmp_path / "a.wav", x44, 44100, subtype="FLOAT")
    blocks = score_file(wav, scorer, cal, block_s=1.3)
    det = StreamingDetector(scorer, cal)
    whole = Scored.join([det.push(resample(x44, 44100, 16000))])
    assert blocks.scored.scores == pytest.approx(whole.scores, abs=2e-3)


def test_a_clip_shorter_than_one_window_still_gets_a_score(tmp_path: Path) -> None:
    scorer = load_scorer(tiny_model(tmp_path / "m", "logmel"))
    det = StreamingDetector(scorer, Calibration.from_dict(calibration_dict()))
    assert det.push(_audio(0.3)).scores.size == 0
    assert det.finish().scores.size == 1
