"""Temperature scaling and its reliability table: one scalar fitted on validation logits."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def fit_temperature(raw: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising validation negative log-likelihood."""

    def nll(log_t: float) -> float:
        p = softmax(raw / np.exp(log_t))
        return float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())

    # Bounded: on a perfectly separated validation set the NLL keeps falling as T -> 0, which
    # would push every score to exactly 0 or 1 and leave no threshold to choose.
    res = minimize_scalar(nll, bounds=(np.log(0.25), np.log(8.0)), method="bounded")
    return float(np.exp(res.x))


def reliability(
    raw: np.ndarray, y: np.ndarray, temperature: float, bins: int = 15
) -> tuple[float, pd.DataFrame]:
    """Expected calibration error and the reliability table (confidence vs accuracy)."""
    p = softmax(raw / temperature)
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    edges = np.linspace(0, 1, bins + 1)
    rows, ece = [], 0.0
    for lo, hi in itertools.pairwise(edges):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            acc, c = float((pred[sel] == y[sel]).mean()), float(conf[sel].mean())
            ece += sel.mean() * abs(acc - c)
            rows.append(
                {
                    "bin": round(float((lo + hi) / 2), 4),
                    "confidence": round(c, 5),
                    "accuracy": round(acc, 5),
                    "count": int(sel.sum()),
                }
            )
    return float(ece), pd.DataFrame(rows)
