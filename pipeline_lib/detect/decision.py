"""The streaming decision rule: window scores, smoothing, threshold, refractory time.

One implementation shared by training (early stopping on recall at a target FAH),
calibration, evaluation, mining and serving. Scores of a recording are computed window by
window over its features in fixed-size chunks, so memory stays bounded whatever its length.
A detection fires when the smoothed score crosses the threshold upwards; after it, nothing
fires for the refractory time, and a burst however long is one false alarm.
:mod:`pipeline_lib.streaming` runs the same rule incrementally on live or long audio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from pipeline_lib.detect.checkpoint import ModelSpec, logits

STEP_S = 0.01  # both front ends step 10 ms


@dataclass(frozen=True)
class DecisionRule:
    hop_frames: int
    smoothing: int
    threshold: float
    refractory_s: float

    @property
    def hop_s(self) -> float:
        return self.hop_frames * STEP_S


def event_probability(raw_logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """P(any class but the first), the score a detector thresholds (computed from the log-odds
    so that scores near 1 keep their order)."""
    z = raw_logits.astype(np.float64) / temperature
    rest = np.logaddexp.reduce(z[:, 1:], axis=1)
    out: np.ndarray = 1.0 / (1.0 + np.exp(z[:, 0] - rest))
    return out


def window_logits(
    model: nn.Module, spec: ModelSpec, feats: np.ndarray, hop_frames: int, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Logits of every window of a recording's features and each window's end time (s)."""
    n = feats.shape[0]
    if n < spec.frames:
        feats = np.concatenate([feats, np.zeros((spec.frames - n, spec.bins), feats.dtype)])
        n = spec.frames
    starts = np.arange(0, n - spec.frames + 1, hop_frames)
    view = np.lib.stride_tricks.sliding_window_view(feats, spec.frames, axis=0)
    outs = []
    for i in range(0, len(starts), chunk):
        batch = np.ascontiguousarray(view[starts[i : i + chunk]].transpose(0, 2, 1))
        outs.append(logits(model, batch, spec))
    return np.concatenate(outs), (starts + spec.frames) * STEP_S


def smooth(scores: np.ndarray, k: int) -> np.ndarray:
    """Trailing moving average over the last ``k`` windows (causal, as on a device)."""
    if k <= 1:
        return scores.astype(np.float64)
    c = np.concatenate([[0.0], np.cumsum(scores, dtype=np.float64)])
    idx = np.arange(1, scores.size + 1)
    lo = np.maximum(idx - k, 0)
    out: np.ndarray = (c[idx] - c[lo]) / (idx - lo)
    return out


@dataclass
class EventState:
    """What the event rule remembers between windows: was the last score above the
    threshold, and when the refractory time ends."""

    above: bool = False
    ready_at: float = -np.inf


def events_from(
    smoothed: np.ndarray,
    times: np.ndarray,
    threshold: float,
    refractory_s: float,
    state: EventState | None = None,
) -> list[tuple[float, float]]:
    """Events (time, score) in a run of windows, carrying ``state`` across calls.

    An event is an upward crossing of ``threshold`` (the score was below it at the previous
    window) at or after the end of the previous event's refractory time. A burst however
    long is one event; a second crossing inside the refractory time is not an event.
    """
    st = state if state is not None else EventState()
    if smoothed.size == 0:
        return []
    above = smoothed >= threshold
    prev = np.concatenate([[st.above], above[:-1]])
    events: list[tuple[float, float]] = []
    for i in np.flatnonzero(above & ~prev):
        if times[i] >= st.ready_at:
            events.append((float(times[i]), float(smoothed[i])))
            st.ready_at = float(times[i]) + refractory_s
    st.above = bool(above[-1])
    return events


def detect(
    smoothed: np.ndarray, times: np.ndarray, threshold: float, refractory_s: float
) -> list[tuple[float, float]]:
    """Events of one whole recording (see :func:`events_from`)."""
    return events_from(smoothed, times, threshold, refractory_s)


def fah_bound(events: int, hours: float, confidence: float) -> float:
    """False alarms per hour: the count over the hours, or its one-sided Poisson upper
    bound at ``confidence``."""
    if confidence <= 0:
        return events / hours
    from scipy.stats import chi2

    return float(chi2.ppf(confidence, 2 * events + 2)) / (2 * hours)


def threshold_grid(
    pooled: np.ndarray, quantiles: np.ndarray, fixed: np.ndarray, alarms: np.ndarray, top: int = 512
) -> np.ndarray:
    """Thresholds to try, rising: quantiles of the scores, fixed points, and each of the
    ``top`` highest distinct scores of ``alarms`` (the target-free audio) and the next float
    above it.

    Low false-alarm targets are decided by the few loudest windows, which quantiles miss:
    near a score of 1 one quantile step spans many of them. Trying the values themselves
    makes FAH targets of a few alarms per hour exact instead of a step off."""
    high = np.unique(alarms)[-top:]
    above = np.minimum(np.nextafter(high, np.inf), 1.0)  # scores are probabilities
    return np.unique(np.concatenate([np.quantile(pooled, quantiles), fixed, high, above]))


def threshold_for_fah(
    smoothed: list[np.ndarray],
    times: list[np.ndarray],
    hours: float,
    target_fah: float,
    refractory_s: float,
    confidence: float = 0.0,
) -> float:
    """The lowest threshold at which the streams' false alarms per hour stay <= target.

    With ``confidence`` > 0 the rate compared is the Poisson upper bound at that level
    (Garwood), not the count over the hours: a threshold chosen where an hour of
    validation audio happened to hold no false alarm otherwise fails on unseen audio."""
    pooled = np.concatenate(smoothed) if smoothed else np.zeros(0)
    if pooled.size == 0 or hours <= 0:
        return 0.5
    # Quantiles and a fixed grid, not threshold_grid: a threshold one float above the
    # loudest validation alarm fits that audio exactly and fires on unseen windows a hair
    # louder (scores saturate near 1); the grid's step is the margin that holds on test.
    candidates = np.unique(
        np.concatenate(
            [np.quantile(pooled, np.linspace(0.5, 1.0, 400)), np.linspace(0.01, 0.999, 200)]
        )
    )
    lo, hi = 0, candidates.size - 1
    best = float(min(1.0, candidates[-1] + 1e-6))
    while lo <= hi:  # false alarms fall (almost) monotonically as the threshold rises
        mid = (lo + hi) // 2
        thr = float(candidates[mid])
        n = sum(len(detect(s, t, thr, refractory_s)) for s, t in zip(smoothed, times, strict=True))
        if fah_bound(n, hours, confidence) <= target_fah:
            best, hi = thr, mid - 1
        else:
            lo = mid + 1
    return best
