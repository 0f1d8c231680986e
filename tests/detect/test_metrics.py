"""Metric definitions against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline_lib.detect import metrics


def test_poisson_interval_matches_the_exact_tables() -> None:
    assert metrics.poisson_interval(0, 1.0) == pytest.approx((0.0, 3.6889), abs=1e-4)
    assert metrics.poisson_interval(1, 1.0) == pytest.approx((0.0253, 5.5716), abs=1e-4)
    lo, hi = metrics.poisson_interval(10, 2.0)  # 10 events in 2 h: 4.795..18.417 per 2 h
    assert (lo, hi) == pytest.approx((4.7954 / 2, 18.3904 / 2), abs=1e-3)


def test_roc_auc_eer_and_pauc() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.55, 0.4, 0.3, 0.2])
    positive = np.array([1, 1, 0, 1, 0, 0, 1, 0], bool)
    roc = metrics.roc_curve(scores, positive)
    # pairs ranked correctly: 4 positives x 4 negatives = 16 pairs, 12 in order
    assert metrics.roc_auc(roc) == pytest.approx(12 / 16)
    e, thr = metrics.eer(roc)
    assert e == pytest.approx(0.25) and thr == pytest.approx(0.6)
    perfect = np.array([0.9, 0.8, 0.1, 0.2])
    assert metrics.pauc(perfect, np.array([1, 1, 0, 0], bool), 0.1) == pytest.approx(1.0)
    assert np.isnan(metrics.pauc(perfect, np.ones(4, bool), 0.1))


def test_ties_move_together() -> None:
    roc = metrics.roc_curve(np.array([0.5, 0.5, 0.5, 0.5]), np.array([1, 0, 1, 0], bool))
    assert roc.fpr.tolist() == [0.0, 1.0] and roc.tpr.tolist() == [0.0, 1.0]
    assert metrics.roc_auc(roc) == pytest.approx(0.5)


def test_classification_confusion_and_per_class() -> None:
    y = np.array([0, 0, 0, 1, 1, 2])
    p = np.array([0, 0, 1, 1, 1, 0])
    out = metrics.classification(y, p, ["a", "b", "c"])
    assert out["confusion"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert out["accuracy"] == pytest.approx(4 / 6, abs=1e-5)
    per = out["per_class"]
    assert isinstance(per, dict)
    assert per["a"]["precision"] == pytest.approx(2 / 3, abs=1e-5)
    assert per["b"]["recall"] == 1.0 and per["c"]["f1"] == 0.0


def test_match_events_hits_latency_and_strays() -> None:
    spans = [(10.0, 11.0), (20.0, 21.0), (30.0, 31.0)]
    events = [(11.5, 0.9), (25.0, 0.8), (31.2, 0.95)]  # 25.0 is outside every span
    m = metrics.match_events(events, spans, window_s=1.5, tol=0.5)
    assert m.hits.tolist() == [True, False, True]
    assert m.recall == pytest.approx(2 / 3)
    assert m.latency_s[0] == pytest.approx(0.5) and np.isnan(m.latency_s[1])
    assert m.stray == 1
