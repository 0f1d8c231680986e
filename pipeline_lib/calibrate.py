"""calibrate stage: temperature scaling and the streaming decision rule, on validation only.

Temperature scaling fits one scalar on validation clip logits (ECE before and after, with
a reliability curve). The decision rule (hop, smoothing, threshold, refractory) is chosen
per preset so that validation background streams stay at or under the preset's false
alarms per hour while recall of validation positives, inserted into validation background
at known times, is highest. One calibration file serves every later stage and the device.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from scipy.optimize import minimize_scalar
from torch import nn

from pipeline_lib import detector, features, metrics
from pipeline_lib.atomic import atomic_path, json_text, write_csv, write_json
from pipeline_lib.errors import SoundopsError
from pipeline_lib.extract import load_split_manifest
from pipeline_lib.layout import Layout
from pipeline_lib.modelio import ModelSpec, load_model, logits
from pipeline_lib.params import CalibrateParams, Params

log = logging.getLogger(__name__)


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


@dataclass
class StreamScores:
    """Event probabilities of windows over recordings, with their end times."""

    scores: list[np.ndarray]
    times: list[np.ndarray]
    hours: float


def score_streams(
    model: nn.Module,
    spec: ModelSpec,
    feats: list[np.ndarray],
    hop: int,
    temperature: float,
    seconds: float,
) -> StreamScores:
    scores, times = [], []
    for f in feats:
        lg, t = detector.window_logits(model, spec, f.astype(np.float32), hop)
        scores.append(detector.event_probability(lg, temperature))
        times.append(t)
    return StreamScores(scores, times, seconds / 3600)


@dataclass
class PositiveStream:
    """Background audio with event clips inserted at known (onset, offset) times."""

    audio: np.ndarray
    spans: list[tuple[float, float]]


def insert_positives(
    background: list[np.ndarray], clips: list[np.ndarray], rate: int, gap_s: float
) -> PositiveStream:
    """Add each clip to the background every ``gap_s`` seconds (background tiled as needed)."""
    need = int((len(clips) + 2) * gap_s * rate)
    bed = np.concatenate(background) if background else np.zeros(0, np.float32)
    if bed.size == 0:
        bed = np.zeros(need, np.float32)
    audio = np.resize(bed, max(need, 1)).astype(np.float32)
    spans = []
    for i, clip in enumerate(clips):
        start = int((i + 1) * gap_s * rate)  # after a gap: the front end has warmed up
        end = min(audio.size, start + clip.size)
        audio[start:end] += clip[: end - start]
        spans.append((start / rate, end / rate))
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak > 1.0:
        audio /= peak
    return PositiveStream(audio, spans)


def recall_on(
    scores: np.ndarray,
    times: np.ndarray,
    spans: list[tuple[float, float]],
    threshold: float,
    rule_refractory: float,
    window_s: float,
    tol: float,
) -> float:
    """Share of inserted positives with a detection from their onset to their offset plus
    one window (a window scores once it has fully arrived)."""
    events = np.array([t for t, _ in detector.detect(scores, times, threshold, rule_refractory)])
    if not spans:
        return float("nan")
    hits = 0
    for on, off in spans:
        if events.size and np.any((events >= on - tol) & (events <= off + window_s + tol)):
            hits += 1
    return hits / len(spans)


def split_positive_stream(
    frame: pd.DataFrame, layout: Layout, params: Params, split: str, rate: int, gap_s: float
) -> PositiveStream:
    """A split's event clips inserted into that split's background recordings."""
    clips = frame[(frame["role"] == "clip") & (frame["split"] == split)].sort_values("id")
    events = clips[clips["label"].map(params.task.class_of).fillna(0).astype(int) != 0]
    streams = frame[(frame["role"] == "stream") & (frame["split"] == split)].sort_values("id")
    audio = [sf.read(str(layout.ingest / p), dtype="float32")[0] for p in events["path"]]
    bed = [sf.read(str(layout.ingest / p), dtype="float32")[0] for p in streams["path"]]
    return insert_positives(bed, audio, rate, gap_s)


@dataclass
class SplitAudio:
    background: StreamScores
    positives: PositiveStream
    positive_scores: tuple[np.ndarray, np.ndarray]


def split_audio(
    model: nn.Module,
    spec: ModelSpec,
    layout: Layout,
    params: Params,
    split: str,
    hop: int,
    temperature: float,
) -> SplitAudio:
    """Score a split's background streams and its event clips inserted into background."""
    frame = load_split_manifest(layout)
    streams = frame[(frame["role"] == "stream") & (frame["split"] == split)].sort_values("id")
    if streams.empty:
        raise SoundopsError(
            f"calibrate: the {split} split has no background streams; add long "
            f"recordings (role: stream) so false alarms per hour can be measured."
        )
    feat_dir = layout.features
    bg_feats = [
        np.load(feat_dir / "streams" / f"{sid}.npy", allow_pickle=False) for sid in streams["id"]
    ]
    bg = score_streams(model, spec, bg_feats, hop, temperature, float(streams["duration_s"].sum()))
    pos = split_positive_stream(
        frame, layout, params, split, spec.rate, params.calibrate.positive_gap_s
    )
    pos_feats = features.compute(pos.audio, spec.feature_params, spec.rate)
    lg, t = detector.window_logits(model, spec, pos_feats, hop)
    return SplitAudio(bg, pos, (detector.event_probability(lg, temperature), t))


def choose_rule(
    audio: SplitAudio, cal: CalibrateParams, target_fah: float, window_s: float, hop: int
) -> dict[str, float]:
    """The smoothing and threshold with the best recall at or under ``target_fah``."""
    best: dict[str, float] = {}
    for k in cal.smoothing:
        bg = [detector.smooth(s, k) for s in audio.background.scores]
        thr = detector.threshold_for_fah(
            bg,
            audio.background.times,
            audio.background.hours,
            target_fah,
            cal.refractory_s,
            cal.fah_confidence,
        )
        fa = metrics.count_events(bg, audio.background.times, thr, cal.refractory_s)
        ps, pt = audio.positive_scores
        rec = recall_on(
            detector.smooth(ps, k),
            pt,
            audio.positives.spans,
            thr,
            cal.refractory_s,
            window_s,
            cal.tolerance_s,
        )
        cand = {
            "target_fah": target_fah,
            "smoothing": k,
            "threshold": round(thr, 6),
            "hop_frames": hop,
            "refractory_s": cal.refractory_s,
            "fah": round(fa / audio.background.hours, 4),
            "false_alarms": fa,
            "hours": round(audio.background.hours, 4),
            "recall": round(rec, 5),
        }
        if not best or cand["recall"] > best["recall"]:
            best = cand
    return best


def plot_reliability(before: pd.DataFrame, after: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k:", label="perfect")
    ax.plot(before["confidence"], before["accuracy"], "o-", label="before")
    ax.plot(after["confidence"], after["accuracy"], "s-", label="after temperature")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability (validation)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_calibrate(params: Params, layout: Layout) -> dict[str, object]:
    """The calibrate stage: ``data/calibration/calibration.json`` plus reliability plots."""
    from pipeline_lib.train import Store

    model, spec = load_model(layout.model)
    cal = params.calibrate
    val = Store.open(layout.features, "val")
    raw = logits(model, np.asarray(val.x, np.float32), spec)
    y = val.index["class"].to_numpy()
    temperature = fit_temperature(raw, y)
    ece_before, rel_before = reliability(raw, y, 1.0)
    ece_after, rel_after = reliability(raw, y, temperature)
    hop = max(1, round(cal.hop_s / detector.STEP_S))
    window_s = spec.frames * detector.STEP_S
    audio = split_audio(model, spec, layout, params, "val", hop, temperature)
    presets = {
        name: choose_rule(audio, cal, fah, window_s, hop) for name, fah in cal.presets.items()
    }
    result: dict[str, object] = {
        "temperature": round(temperature, 6),
        "ece_before": round(ece_before, 5),
        "ece_after": round(ece_after, 5),
        "window_frames": spec.frames,
        "window_s": round(window_s, 3),
        "hop_frames": hop,
        "refractory_s": cal.refractory_s,
        "preset": cal.preset,
        "presets": presets,
        "selected": presets[cal.preset],
        "val_positives": len(audio.positives.spans),
    }
    sel = presets[cal.preset]
    summary = {
        "temperature": result["temperature"],
        "ece_before": result["ece_before"],
        "ece_after": result["ece_after"],
        "val_fah": sel["fah"],
        "val_recall": sel["recall"],
        "threshold": sel["threshold"],
        "smoothing": sel["smoothing"],
    }
    with (
        atomic_path(layout.metrics / "calibrate.json") as metrics,
        atomic_path(layout.calibration) as out,
    ):
        out.mkdir(parents=True)
        write_json(out / "calibration.json", result)
        write_csv(
            out / "reliability.csv",
            pd.concat([rel_before.assign(stage="before"), rel_after.assign(stage="after")]),
        )
        plot_reliability(rel_before, rel_after, out / "reliability.png")
        metrics.write_text(json_text(summary), encoding="utf-8")
    log.info(
        "calibrate: T=%.3f, ECE %.4f -> %.4f; %s: threshold %.4f, smoothing %d, val FAH "
        "%.2f, val recall %.4f",
        temperature,
        ece_before,
        ece_after,
        cal.preset,
        sel["threshold"],
        sel["smoothing"],
        sel["fah"],
        sel["recall"],
    )
    return result
