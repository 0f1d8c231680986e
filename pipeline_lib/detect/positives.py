"""Audio of a split as the detector hears it: background streams scored window by window,
and the split's event clips inserted into background at known times, so that recall of
events and false alarms per hour come from the same streaming rule."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import soundfile as sf
from torch import nn

from pipeline_lib.artifacts.manifests import load_split_manifest
from pipeline_lib.artifacts.store import Store
from pipeline_lib.audio import features
from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import Params
from pipeline_lib.detect import decision
from pipeline_lib.detect.checkpoint import ModelSpec
from pipeline_lib.detect.runtimes import Scorer
from pipeline_lib.detect.streaming import Calibration, Scored, StreamingDetector


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
        lg, t = decision.window_logits(model, spec, f.astype(np.float32), hop)
        scores.append(decision.event_probability(lg, temperature))
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
    events = np.array([t for t, _ in decision.detect(scores, times, threshold, rule_refractory)])
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
    lg, t = decision.window_logits(model, spec, pos_feats, hop)
    return SplitAudio(bg, pos, (decision.event_probability(lg, temperature), t))


def positive_stream(
    frame: pd.DataFrame, layout: Layout, params: Params, scorer: Scorer, cal: Calibration
) -> tuple[np.ndarray, list[tuple[float, float]], Scored]:
    """Test positives inserted into test background, through the streaming detector."""
    rate = scorer.spec.rate
    pos = split_positive_stream(frame, layout, params, "test", rate, params.evaluate.positive_gap_s)
    det = StreamingDetector(scorer, cal)
    block = 30 * rate
    parts = [det.push(pos.audio[i : i + block]) for i in range(0, pos.audio.size, block)]
    return pos.audio, pos.spans, Scored.join(parts)


def _recorded_test_clips(layout: Layout) -> tuple[Store, np.ndarray]:
    """The test feature store and its rows of clips as recorded (view 0, no augmentation)."""
    store = Store.open(layout.features, "test")
    return store, np.flatnonzero(store.index["view"].to_numpy() == 0)


def clip_scores(scorer: Scorer, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """Logits and classes of the test clips as recorded (view 0, no augmentation)."""

    store, rows = _recorded_test_clips(layout)
    return scorer.logits(store.batch(rows)), store.index["class"].to_numpy()[rows]


def clip_labels(layout: Layout) -> np.ndarray:
    """Labels of the test clips, row for row with :func:`clip_scores` (a class can hold
    several labels: near-phrase words, speech and noise are all "other")."""

    store, rows = _recorded_test_clips(layout)
    labels: np.ndarray = store.index["label"].astype(str).to_numpy()[rows]
    return labels
