"""The event-counting rules of the streaming detector, pinned on constructed score streams."""

from __future__ import annotations

import numpy as np

from pipeline_lib.detect import decision, metrics
from pipeline_lib.detect.decision import EventState

HOP_S = 0.1
HOUR = 36000  # windows in one hour at a 0.1 s hop


def _times(n: int) -> np.ndarray:
    return (np.arange(n) + 1) * HOP_S


def test_three_separate_bursts_in_an_hour_are_three_false_alarms() -> None:
    s = np.zeros(HOUR)
    for start in (1000, 9000, 30000):
        s[start : start + 4] = 0.9
    events = decision.detect(s, _times(HOUR), 0.5, 2.0)
    assert [round(t, 1) for t, _ in events] == [100.1, 900.1, 3000.1]
    assert metrics.fah(len(events), 1.0)["fah"] == 3.0


def test_one_long_burst_is_one_false_alarm() -> None:
    s = np.zeros(HOUR)
    s[5000:5600] = 0.95  # a minute above threshold: thirty refractory times, one event
    assert len(decision.detect(s, _times(HOUR), 0.5, 2.0)) == 1


def test_a_crossing_inside_the_refractory_time_is_not_an_event() -> None:
    s = np.zeros(200)
    s[[10, 20, 60]] = 0.9  # 1 s after the first, then 5 s after it
    events = decision.detect(s, _times(200), 0.5, 2.0)
    assert [round(t, 1) for t, _ in events] == [1.1, 6.1]


def test_state_carries_across_pieces() -> None:
    rng = np.random.default_rng(3)
    s = (rng.random(5000) > 0.97).astype(float) * rng.uniform(0.5, 1.0, 5000)
    t = _times(s.size)
    whole = decision.detect(s, t, 0.6, 2.0)
    state, pieces = EventState(), []
    edges = np.sort(rng.choice(np.arange(1, s.size), 40, replace=False))
    for a, b in zip(np.r_[0, edges], np.r_[edges, s.size], strict=True):
        pieces += decision.events_from(s[a:b], t[a:b], 0.6, 2.0, state)
    assert pieces == whole and len(whole) > 10


def test_an_upper_bound_calibration_leaves_margin_for_unseen_audio() -> None:
    # one hour of scores with three bursts at 0.6, 0.7 and 0.8
    times = np.arange(36000) * 0.1
    scores = np.full(times.size, 0.05)
    for start, peak in ((1000, 0.6), (12000, 0.7), (24000, 0.8)):
        scores[start : start + 5] = peak
    loose = decision.threshold_for_fah([scores], [times], 1.0, 1.0, 2.0)
    tight = decision.threshold_for_fah([scores], [times], 1.0, 1.0, 2.0, confidence=0.5)
    assert 0.7 <= loose < 0.8  # one false alarm in one hour meets a 1.0 target ...
    assert tight >= 0.8  # ... but its median upper bound (1.68/h) does not: none may fire
    assert abs(decision.fah_bound(0, 1.0, 0.5) - np.log(2)) < 1e-9
    assert decision.fah_bound(3, 2.0, 0.0) == 1.5


def test_the_grid_holds_the_loudest_alarms_among_louder_positives() -> None:
    alarms = np.r_[np.full(5000, 0.02), 0.99930, 0.99960]
    positives = 0.9991 + np.arange(2000) * 4e-7  # 2,000 distinct windows, most above both
    grid = decision.threshold_grid(
        np.r_[alarms, positives], np.linspace(0, 1, 300), np.linspace(0.02, 0.999, 50), alarms
    )
    for alarm in (0.99930, 0.99960):
        assert np.nextafter(alarm, 1.0) in grid  # the DET point just above each alarm
    assert np.all(np.diff(grid) > 0)
    loud = np.r_[alarms, 1.0]
    saturated = decision.threshold_grid(loud, np.linspace(0, 1, 30), np.r_[0.5], loud)
    assert saturated.max() == 1.0  # a probability threshold, never above 1
