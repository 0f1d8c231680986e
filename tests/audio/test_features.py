"""Front ends: the micro_speech features equal a direct pymicro-features call; geometry."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pymicro_features import MicroFrontend

from pipeline_lib.audio import features
from pipeline_lib.base.params import parse_params
from tests.conftest import tone


def _feature_params(raw: dict[str, Any], front_end: str) -> Any:
    raw["features"]["front_end"] = front_end
    return parse_params(raw).features


def test_micro_matches_direct_pymicro_features_call() -> None:
    x = tone(1.0, 16000, 1000, amp=0.3)
    pcm = np.round(x * 32767).astype("<i2").tobytes()
    frontend = MicroFrontend()
    direct, pos = [], 0
    while pos + 320 <= len(pcm):
        out = frontend.process_samples(pcm[pos : pos + 320])
        pos += 2 * out.samples_read
        if out.features:
            direct.append(out.features)
    ours = features.micro(x, 16000)
    assert ours.shape == (98, 40)
    assert np.array_equal(ours, np.asarray(direct, np.float32))


def test_both_front_ends_share_the_window_geometry(raw_params: dict[str, Any]) -> None:
    x = tone(1.5, 16000, 1000)
    micro = features.compute(x, _feature_params(raw_params, "micro"), 16000)
    logmel = features.compute(x, _feature_params(raw_params, "logmel"), 16000)
    frames = features.window_frames(_feature_params(raw_params, "micro"), 16000)
    assert micro.shape == logmel.shape == (frames, 40)


def test_logmel_puts_a_tone_in_the_right_band(raw_params: dict[str, Any]) -> None:
    cfg = _feature_params(raw_params, "logmel")
    low = features.logmel(tone(1.0, 16000, 300), cfg, 16000).mean(axis=0).argmax()
    high = features.logmel(tone(1.0, 16000, 4000), cfg, 16000).mean(axis=0).argmax()
    assert low < high


def test_micro_needs_16k() -> None:
    with pytest.raises(ValueError, match="16 kHz"):
        features.micro(tone(0.1, 8000), 8000)
