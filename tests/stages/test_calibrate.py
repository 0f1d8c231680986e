"""Calibration on constructed score streams: counting rules, the FAH target, temperature."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline_lib.base.params import parse_params
from pipeline_lib.detect import decision
from pipeline_lib.detect.calibration import fit_temperature, reliability
from pipeline_lib.detect.positives import (
    PositiveStream,
    SplitAudio,
    StreamScores,
    insert_positives,
    recall_on,
)
from pipeline_lib.stages.calibrate import choose_rule
from tests.conftest import shipped_params

HOP_S = 0.1


def _times(n: int) -> np.ndarray:
    return (np.arange(n) + 1) * HOP_S


def test_bursts_count_once_each() -> None:
    s = np.zeros(36000)  # one hour at a 0.1 s hop
    for start in (1000, 5000, 20000):  # three separate bursts: three false alarms
        s[start : start + 5] = 0.9
    assert len(decision.detect(s, _times(s.size), 0.5, 2.0)) == 3
    long = np.zeros(36000)
    long[1000:1015] = 0.9  # one 1.5 s burst, inside the refractory time: one false alarm
    assert len(decision.detect(long, _times(long.size), 0.5, 2.0)) == 1


def test_smoothing_is_causal() -> None:
    s = np.array([0, 0, 1, 1, 1, 0], float)
    assert decision.smooth(s, 3).tolist() == pytest.approx([0, 0, 1 / 3, 2 / 3, 1, 2 / 3])


def _constructed(seed: int) -> SplitAudio:
    """Two hours of background with occasional confusable bursts; 40 positives."""
    rng = np.random.default_rng(seed)
    bg_scores, bg_times = [], []
    for _ in range(2):
        s = rng.beta(1, 30, 36000)
        for start in rng.integers(0, 35990, 25):  # 25 confusable bursts per hour
            s[start : start + 4] = rng.uniform(0.4, 0.95)
        bg_scores.append(s)
        bg_times.append(_times(s.size))
    spans = [(10.0 * i + 5, 10.0 * i + 6) for i in range(40)]
    ps = rng.beta(1, 30, 4200)
    for on, _ in spans:
        i = int(on / HOP_S) + 5
        ps[i : i + 6] = rng.uniform(0.7, 1.0)
    return SplitAudio(
        StreamScores(bg_scores, bg_times, 2.0),
        PositiveStream(np.zeros(1), spans),
        (ps, _times(ps.size)),
    )


@pytest.mark.parametrize("target", [0.5, 1.0, 2.0])
def test_chosen_rule_meets_its_fah_target(target: float) -> None:
    cal = parse_params(shipped_params()).calibrate
    audio = _constructed(1)
    rule = choose_rule(audio, cal, target, 1.5, 1)
    assert rule["fah"] <= target
    fa = sum(
        len(
            decision.detect(
                decision.smooth(s, rule["smoothing"]), t, rule["threshold"], cal.refractory_s
            )
        )
        for s, t in zip(audio.background.scores, audio.background.times, strict=True)
    )
    assert fa / 2.0 == rule["fah"]
    assert rule["recall"] > 0.5


def test_stricter_targets_never_raise_the_false_alarms() -> None:
    cal = parse_params(shipped_params()).calibrate
    audio = _constructed(2)
    fah = [choose_rule(audio, cal, t, 1.5, 1)["fah"] for t in (0.5, 1.0, 2.0)]
    assert fah == sorted(fah)


def test_insert_positives_records_spans() -> None:
    bed = [np.zeros(16000 * 3, np.float32)]
    clips = [np.ones(8000, np.float32) * 0.5] * 3
    pos = insert_positives(bed, clips, 16000, 4.0)
    assert pos.spans == [(4.0, 4.5), (8.0, 8.5), (12.0, 12.5)]
    assert pos.audio.size >= 16000 * 16 and float(pos.audio[16000 * 4 + 10]) == 0.5
    scores = np.zeros(200)
    scores[int(8.6 / HOP_S)] = 0.9  # detected late but within the window: a hit
    assert recall_on(scores, _times(200), pos.spans, 0.5, 2.0, 1.5, 0.5) == pytest.approx(1 / 3)


def test_temperature_recovers_overconfidence() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    y = rng.integers(0, 2, n)
    true_logits = np.stack([np.zeros(n), (y * 2 - 1) * rng.gamma(2.0, 1.0, n)], axis=1)
    true_logits[:, 1] += rng.normal(0, 1.5, n)
    over = true_logits * 3.0  # a model three times too confident
    t = fit_temperature(over, y)
    assert t == pytest.approx(3.0, rel=0.15)
    assert reliability(over, y, t)[0] < reliability(over, y, 1.0)[0]
