"""The verifier stage: a small head on speech embeddings, the second stage of a cascade.

The device model is what fits a microcontroller; it is trained on synthetic speech and
misses many real people (``benchmarks/real_voices.py``). The verifier hears them better
because its input, Google's speech embedding (:mod:`pipeline_lib.speech_embedding`), was
learned on real speech. It runs on the server behind ``/v1/verify``: the device wakes at a
lax threshold, the server confirms. Trained on the same split as the device model
(train clips and train background), its threshold is set on the validation background for
``verifier.target_fah``, and it is measured on test clips and background.

The head (:mod:`pipeline_lib.verifier_model`) is a two-layer perceptron over 16 embeddings
(1.975 s of audio), trained here with torch and stored as plain arrays.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipeline_lib.audio.io import read_audio, resample
from pipeline_lib.audio.speech_embedding import RATE, STEP_SAMPLES, embedder, span_samples
from pipeline_lib.base import atomic
from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import Params
from pipeline_lib.detect import decision, metrics
from pipeline_lib.detect.verifier_model import (
    HEAD_STEPS,
    Head,
    noise_floor,
    window_end_s,
    windows_of,
)

log = logging.getLogger(__name__)

PRE_S, POST_S = 0.6, 0.3  # background around a training clip, so the head sees it anywhere
HIDDEN = 64


def pad_clip(x: np.ndarray, bed: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """``x`` with :data:`PRE_S` before and :data:`POST_S` after, from ``bed`` (a stretch of
    background) at the clip's own quietest level, or white noise when there is none."""
    pre, post = int(PRE_S * RATE), int(POST_S * RATE)
    floor = noise_floor(x)
    n = pre + post
    if bed is not None and bed.size > n:
        start = int(rng.integers(0, bed.size - n))
        pad = bed[start : start + n].astype(np.float32)
        pad *= floor / (float(np.sqrt(np.mean(pad**2))) + 1e-9)
    else:
        pad = (rng.standard_normal(n) * floor).astype(np.float32)
    return np.concatenate([pad[:pre], x.astype(np.float32), pad[pre:]])


def _whole_clip(windows: np.ndarray, clip_samples: int) -> np.ndarray:
    """The windows of a padded target clip that hold all of it (window ``i`` covers
    samples ``[1280 i, 1280 i + span)``, the clip ``[pre, pre + clip_samples)``); of a clip
    longer than a window, those inside it."""
    pre = PRE_S * RATE
    lo = int(np.ceil((pre + clip_samples - span_samples(HEAD_STEPS)) / STEP_SAMPLES))
    hi = int(pre // STEP_SAMPLES)
    lo, hi = min(lo, hi), max(lo, hi)
    return windows[max(0, lo) : hi + 1]


def _read16k(path: Path) -> np.ndarray:
    d = read_audio(path)
    return d.samples if d.rate == RATE else resample(d.samples, d.rate, RATE)


def _streams(layout: Layout, frame: pd.DataFrame, split: str, minutes: float) -> list[Path]:
    rows = frame[(frame["role"] == "stream") & (frame["split"] == split)].sort_values("id")
    out, total = [], 0.0
    for p, d in zip(rows["path"], rows["duration_s"], strict=True):
        if total >= minutes * 60:
            break
        out.append(layout.ingest / p)
        total += float(d)
    return out


def _train_head(
    pos: np.ndarray, neg: np.ndarray, params: Params
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    import torch
    from torch import nn

    vp = params.verifier
    torch.manual_seed(params.seed)
    x = np.concatenate([pos, neg]).reshape(pos.shape[0] + neg.shape[0], -1)
    y = np.concatenate([np.ones(pos.shape[0]), np.zeros(neg.shape[0])]).astype(np.float32)
    mean, std = x.mean(0), x.std(0) + 1e-3
    xt = torch.from_numpy(((x - mean) / std).astype(np.float32))
    yt = torch.from_numpy(y)
    net = nn.Sequential(
        nn.Linear(x.shape[1], HIDDEN), nn.ReLU(), nn.Dropout(0.3), nn.Linear(HIDDEN, 1)
    )
    opt = torch.optim.AdamW(net.parameters(), lr=vp.lr, weight_decay=vp.weight_decay)
    weight = torch.where(yt > 0, neg.shape[0] / max(1, pos.shape[0]), 1.0)
    gen = torch.Generator().manual_seed(params.seed)
    loss = torch.zeros(())
    for epoch in range(vp.epochs):
        net.train()
        order = torch.randperm(xt.shape[0], generator=gen)
        for i in range(0, xt.shape[0], vp.batch_size):
            idx = order[i : i + vp.batch_size]
            logits = net(xt[idx])[:, 0]
            target = yt[idx] * (1 - vp.label_smoothing) + vp.label_smoothing / 2
            loss = nn.functional.binary_cross_entropy_with_logits(
                logits, target, weight=weight[idx]
            )
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
        log.info("verifier epoch %d/%d: loss %.4f", epoch + 1, vp.epochs, float(loss.detach()))
    lin1, lin2 = net[0], net[3]
    assert isinstance(lin1, nn.Linear) and isinstance(lin2, nn.Linear)
    weights = {
        "mean": mean.astype(np.float32),
        "std": std.astype(np.float32),
        "w1": lin1.weight.detach().numpy().T.copy(),
        "b1": lin1.bias.detach().numpy().copy(),
        "w2": lin2.weight.detach().numpy().T.copy(),
        "b2": lin2.bias.detach().numpy().copy(),
    }
    return weights, {"final_loss": float(loss.detach())}


def stream_scores(head: Head, path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """Window end times, probabilities and the duration (s) of one long recording."""
    x = _read16k(path)
    s = head.scores(windows_of(embedder().embed(x)))
    return window_end_s(np.arange(s.size)), s, x.size / RATE


def _write(out_dir: Path, metrics_path: Path, summary: dict[str, Any], head: Head | None) -> None:
    """The stage's folder and its metrics, renamed into place together."""
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(metrics_path) as m, atomic.atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        if head is not None:
            head.save(tmp / "verifier.npz")
        atomic.write_json(tmp / "verifier.json", summary)
        m.write_text(atomic.json_text(summary), encoding="utf-8")


def run_verifier(params: Params, layout: Layout) -> dict[str, Any]:
    """The verifier stage: ``data/verifier/verifier.npz`` and ``metrics/verifier.json``
    (a stage that is off writes only the metrics, saying so)."""
    from pipeline_lib.artifacts.manifests import load_split_manifest

    vp = params.verifier
    out_dir = layout.verifier
    metrics_path = layout.metrics / "verifier.json"
    if not vp.enabled:
        summary: dict[str, Any] = {"enabled": False}
        _write(out_dir, metrics_path, summary, None)
        log.info("verifier: off (verifier.enabled is false)")
        return summary
    t0 = time.monotonic()
    frame = load_split_manifest(layout)
    clips = frame[frame["role"] == "clip"].copy()
    clips["class"] = clips["label"].map(params.task.class_of)
    clips = clips[clips["class"].notna()].sort_values("id")
    rng = np.random.default_rng([params.seed, 17])
    train_streams = _streams(layout, frame, "train", vp.train_minutes)
    bed = np.concatenate([_read16k(p) for p in train_streams[:4]]) if train_streams else None

    def clip_set(split: str) -> tuple[list[np.ndarray], np.ndarray]:
        rows = clips[clips["split"] == split]
        wins, labels = [], []
        pairs = zip(rows["path"], rows["class"], strict=True)
        for p, c in tqdm(pairs, total=len(rows), desc=f"verifier {split} clips", unit="clip"):
            clip = _read16k(layout.ingest / p)
            w = windows_of(embedder().embed(pad_clip(clip, bed, rng)))
            wins.append(_whole_clip(w, clip.size) if c == 1 else w)
            labels.append(int(c))
        return wins, np.asarray(labels)

    train_w, train_y = clip_set("train")
    pos = np.concatenate([w for w, y in zip(train_w, train_y, strict=True) if y == 1])
    neg_parts = [w for w, y in zip(train_w, train_y, strict=True) if y == 0]
    stream_neg = 0
    for p in tqdm(train_streams, desc="verifier train background", unit="file"):
        w = windows_of(embedder().embed(_read16k(p)))
        neg_parts.append(w)
        stream_neg += w.shape[0]
    neg = np.concatenate(neg_parts)
    if pos.shape[0] == 0 or neg.shape[0] == 0:
        raise SoundopsError(
            "verifier: the train split needs target clips and negatives; it has "
            f"{pos.shape[0]} target and {neg.shape[0]} negative windows."
        )
    log.info(
        "verifier: training on %d target and %d negative windows (%d from %d background "
        "recordings)",
        pos.shape[0],
        neg.shape[0],
        stream_neg,
        len(train_streams),
    )
    weights, fit = _train_head(pos, neg, params)
    head = Head(**weights, threshold=0.5)

    def background(split: str, minutes: float) -> tuple[list[np.ndarray], list[np.ndarray], float]:
        ts, ss, secs = [], [], 0.0
        files = _streams(layout, frame, split, minutes)
        for p in tqdm(files, desc=f"verifier {split} background", unit="file"):
            t, s, d = stream_scores(head, p)
            ts.append(t)
            ss.append(s)
            secs += d
        return ts, ss, secs / 3600

    refractory = params.calibrate.refractory_s
    vt, vs, vh = background("val", vp.val_minutes)
    threshold = decision.threshold_for_fah(
        vs, vt, vh, vp.target_fah, refractory, params.calibrate.fah_confidence
    )
    head = Head(**weights, threshold=threshold)

    def clip_recall(split: str) -> dict[str, float]:
        w, y = clip_set(split)
        best = np.array([float(head.scores(x).max()) if x.shape[0] else 0.0 for x in w])
        target = y == 1
        hits = int((best[target] >= threshold).sum())
        lo, hi = metrics.wilson(hits, int(target.sum()))
        return {
            "recall": hits / max(1, int(target.sum())),
            "recall_lo": lo,
            "recall_hi": hi,
            "targets": int(target.sum()),
            "negative_clip_accept_rate": float((best[~target] >= threshold).mean())
            if (~target).any()
            else 0.0,
        }

    val = clip_recall("val")
    tt, ts_, th = background("test", vp.test_minutes)
    n_test = metrics.count_events(ts_, tt, threshold, refractory)
    test = clip_recall("test") | {f"background_{k}": v for k, v in metrics.fah(n_test, th).items()}
    summary = {
        "enabled": True,
        "threshold": threshold,
        "target_fah": vp.target_fah,
        "train": {
            "target_windows": int(pos.shape[0]),
            "negative_windows": int(neg.shape[0]),
            "background_windows": stream_neg,
            **fit,
        },
        "val": val | {"background_hours": vh},
        "test": test,
        "seconds": round(time.monotonic() - t0, 1),
    }
    _write(out_dir, metrics_path, summary, head)
    log.info(
        "verifier: threshold %.3f; test recall %.3f at %.2f FAH (synthetic test audio)",
        threshold,
        test["recall"],
        test["background_fah"],
    )
    return summary
