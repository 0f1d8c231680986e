"""Detection and classification figures, each defined once.

Clip figures (ROC-AUC, EER, pAUC, confusion) treat "any class but the first" as the event.
False alarms per hour are counted as events on long background audio over its real
duration, with an exact 95% Poisson interval: a handful of events in an hour or two is a
wide interval, and a report should say so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2

from pipeline_lib.detect import decision


@dataclass(frozen=True)
class Roc:
    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> Roc:
    """ROC points at every distinct score (ties move together), from (0, 0) to (1, 1)."""
    pos, neg = int(positive.sum()), int((~positive).sum())
    order = np.argsort(-scores, kind="stable")
    s, p = scores[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1] if s.size else np.zeros(0, int)
    tp = np.cumsum(p)[last] if s.size else np.zeros(0)
    fp = np.cumsum(~p)[last] if s.size else np.zeros(0)
    tpr = np.r_[0.0, tp / max(pos, 1)]
    fpr = np.r_[0.0, fp / max(neg, 1)]
    thr = np.r_[np.inf, s[last]] if s.size else np.array([np.inf])
    return Roc(fpr, tpr, thr)


def roc_auc(roc: Roc) -> float:
    return float(np.trapezoid(roc.tpr, roc.fpr))


def pauc(scores: np.ndarray, positive: np.ndarray, max_fpr: float) -> float:
    """Area under the ROC curve up to ``max_fpr``, divided by ``max_fpr`` (1.0 is perfect)."""
    if positive.all() or not positive.any():
        return float("nan")
    roc = roc_curve(scores, positive)
    grid_tpr = np.interp(max_fpr, roc.fpr, roc.tpr)
    keep = roc.fpr <= max_fpr
    fpr = np.r_[roc.fpr[keep], max_fpr]
    tpr = np.r_[roc.tpr[keep], grid_tpr]
    return float(np.trapezoid(tpr, fpr) / max_fpr)


def eer(roc: Roc) -> tuple[float, float]:
    """Equal error rate and the threshold where false accepts meet false rejects."""
    fnr = 1.0 - roc.tpr
    i = int(np.argmin(np.abs(fnr - roc.fpr)))
    thr = float(roc.thresholds[i]) if np.isfinite(roc.thresholds[i]) else 1.0
    return float((fnr[i] + roc.fpr[i]) / 2), thr


def classification(y_true: np.ndarray, y_pred: np.ndarray, names: list[str]) -> dict[str, object]:
    """Accuracy, confusion matrix (rows true, columns predicted) and per-class figures."""
    k = len(names)
    cm = np.zeros((k, k), int)
    np.add.at(cm, (y_true, y_pred), 1)
    per: dict[str, dict[str, float]] = {}
    for i, name in enumerate(names):
        tp = cm[i, i]
        prec = tp / cm[:, i].sum() if cm[:, i].sum() else float("nan")
        rec = tp / cm[i].sum() if cm[i].sum() else float("nan")
        f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
        per[name] = {
            "precision": round(float(prec), 5),
            "recall": round(float(rec), 5),
            "f1": round(float(f1), 5),
            "support": int(cm[i].sum()),
        }
    return {
        "accuracy": round(float(np.trace(cm) / max(cm.sum(), 1)), 5),
        "macro_f1": round(float(np.nanmean([v["f1"] for v in per.values()])), 5),
        "confusion": cm.tolist(),
        "classes": names,
        "per_class": per,
    }


def poisson_interval(events: int, hours: float, conf: float = 0.95) -> tuple[float, float]:
    """Exact (Garwood) interval on an event rate per hour."""
    if hours <= 0:
        return float("nan"), float("nan")
    a = 1.0 - conf
    lo = chi2.ppf(a / 2, 2 * events) / 2 if events > 0 else 0.0
    hi = chi2.ppf(1 - a / 2, 2 * events + 2) / 2
    return float(lo / hours), float(hi / hours)


def fah(events: int, hours: float) -> dict[str, float]:
    """False alarms per hour with its 95% interval, as reported everywhere."""
    lo, hi = poisson_interval(events, hours)
    return {
        "false_alarms": int(events),
        "hours": round(hours, 4),
        "fah": round(events / hours, 4) if hours > 0 else float("nan"),
        "fah_lo": round(lo, 4),
        "fah_hi": round(hi, 4),
    }


@dataclass(frozen=True)
class Match:
    """Inserted positives matched to detections: hit flags and latency from the offset."""

    hits: np.ndarray
    latency_s: np.ndarray
    stray: int

    @property
    def recall(self) -> float:
        return float(self.hits.mean()) if self.hits.size else float("nan")


def match_events(
    events: list[tuple[float, float]],
    spans: list[tuple[float, float]],
    window_s: float,
    tol: float,
) -> Match:
    """A positive is found when a detection falls between its onset and its offset plus one
    window (a window scores once it has fully arrived), give or take ``tol``. Detections
    matching no positive are ``stray`` (false alarms inside the positive stream)."""
    times = np.array([t for t, _ in events])
    hits = np.zeros(len(spans), bool)
    latency = np.full(len(spans), np.nan)
    used = np.zeros(times.size, bool)
    for i, (on, off) in enumerate(spans):
        inside = np.flatnonzero((times >= on - tol) & (times <= off + window_s + tol) & ~used)
        if inside.size:
            j = inside[0]
            hits[i], latency[i], used[j] = True, times[j] - off, True
    return Match(hits, latency, int((~used).sum()))


def count_events(
    smoothed: list[np.ndarray], times: list[np.ndarray], threshold: float, refractory_s: float
) -> int:
    return sum(
        len(decision.detect(s, t, threshold, refractory_s))
        for s, t in zip(smoothed, times, strict=True)
    )


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a proportion (recall over a few dozen positives is coarse)."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return float(max(0.0, c - h)), float(min(1.0, c + h))
