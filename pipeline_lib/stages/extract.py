"""extract stage: clips to a memory-mapped feature store per split, streams to feature files.

Each clip is cut to the model window (around its loudest stretch, so a spoken phrase stays
whole), and train clips get ``augment.views`` extra views: gain, time shift, background
mixed at an SNR drawn from ``augment.snr_db`` (train clips labelled as background only, so
val/test audio never leaks in) and simulated room impulse responses. Normalisation
statistics come from the train split only and are saved next to the store; they travel
with the model. Every view is a pure function of (seed, clip id, view).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from scipy.signal import fftconvolve

from pipeline_lib.artifacts.manifests import load_split_manifest
from pipeline_lib.audio import features
from pipeline_lib.base.atomic import atomic_path, json_text, write_csv, write_json
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.parallel import pmap
from pipeline_lib.base.params import AugmentParams, FeatureParams, Params

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ClipJob:
    id: str
    path: Path
    views: int
    seed: int
    rate: int
    feat: FeatureParams
    aug: AugmentParams
    noise_paths: tuple[Path, ...]
    rir_path: Path
    preroll_paths: tuple[Path, ...]


def _load(path: Path) -> np.ndarray:
    data, _ = sf.read(str(path), dtype="float32", always_2d=False)
    return np.asarray(data, dtype=np.float32)


@lru_cache(maxsize=4096)
def _load_cached(path: Path) -> np.ndarray:
    return _load(path)


@lru_cache(maxsize=2)
def _rirs(path: Path) -> np.ndarray:
    rirs: np.ndarray = np.load(path, allow_pickle=False)
    return rirs


def loudest_window(x: np.ndarray, n: int, step: int = 160) -> np.ndarray:
    """The ``n``-sample stretch of ``x`` with the most energy (zero-padded when shorter)."""
    if x.size <= n:
        out = np.zeros(n, np.float32)
        start = (n - x.size) // 2
        out[start : start + x.size] = x
        return out
    energy = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
    starts = np.arange(0, x.size - n + 1, step)
    best = int(starts[np.argmax(energy[starts + n] - energy[starts])])
    return x[best : best + n].copy()


def _shift(x: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros_like(x)
    if k >= 0:
        out[k:] = x[: x.size - k]
    else:
        out[:k] = x[-k:]
    return out


def augment_view(x: np.ndarray, rng: np.random.Generator, job: ClipJob) -> np.ndarray:
    """One augmented copy of a window: room, shift, gain, then background at an SNR."""
    aug = job.aug
    y = x
    if rng.random() < aug.rir_prob:
        rirs = _rirs(job.rir_path)
        y = fftconvolve(y, rirs[int(rng.integers(len(rirs)))])[: y.size].astype(np.float32)
    y = _shift(y, int(rng.integers(-1, 2) * rng.uniform(0, aug.shift_s) * job.rate))
    y = y * np.float32(10 ** (rng.uniform(aug.gain_db.min, aug.gain_db.max) / 20))
    if job.noise_paths and rng.random() < aug.background_prob:
        noise = _load_cached(job.noise_paths[int(rng.integers(len(job.noise_paths)))])
        noise = np.resize(noise, y.size) if noise.size < y.size else noise[: y.size]
        sig = float(np.sqrt(np.mean(y**2))) + 1e-9
        nrms = float(np.sqrt(np.mean(noise**2))) + 1e-9
        snr = rng.uniform(aug.snr_db.min, aug.snr_db.max)
        y = y + noise * np.float32(sig / nrms / 10 ** (snr / 20))
    peak = float(np.abs(y).max())
    return (y / peak * 0.99 if peak > 0.99 else y).astype(np.float32)


def _view_seed(seed: int, clip_id: str) -> list[int]:
    return [seed, int(hashlib.sha256(clip_id.encode()).hexdigest()[:8], 16)]


def _with_preroll(window: np.ndarray, rng: np.random.Generator, job: ClipJob) -> np.ndarray:
    """Features of ``window`` after ``preroll_s`` of the split's own background audio, so
    the front end's adaptive state (noise estimate, gain control) is warm, as it is on a
    device that has been listening; only the window's frames are kept."""
    n_pre = round(job.feat.preroll_s * job.rate)
    frames = features.frame_spec(job.feat, job.rate).frames_for(window.size)
    if n_pre == 0 or not job.preroll_paths:
        return features.compute(window, job.feat, job.rate)
    bed = _load_cached(job.preroll_paths[int(rng.integers(len(job.preroll_paths)))])
    start = int(rng.integers(0, max(1, bed.size - n_pre)))
    pre = np.resize(bed[start : start + n_pre], n_pre)
    out: np.ndarray = features.compute(np.concatenate([pre, window]), job.feat, job.rate)
    return out[-frames:]


def clip_features(job: ClipJob) -> np.ndarray:
    """(1 + views, frames, bins) float32 features of one clip."""
    n = round(job.feat.window_s * job.rate)
    base = loudest_window(_load(job.path), n)
    out = []
    for view in range(job.views + 1):
        rng = np.random.default_rng([*_view_seed(job.seed, job.id), view])
        audio = base if view == 0 else augment_view(base, rng, job)
        out.append(_with_preroll(audio, rng, job))
    return np.stack(out)


def stream_features(args: tuple[Path, Path, FeatureParams, int]) -> int:
    """Features of a whole long recording, written to ``dest``; returns the frame count."""
    src, dest, feat, rate = args
    feats = features.compute(_load(src), feat, rate).astype(np.float16)
    np.save(dest, feats, allow_pickle=False)
    return int(feats.shape[0])


def room_impulse_responses(count: int, seed: int, rate: int) -> np.ndarray:
    """``count`` simulated shoebox-room impulse responses (0.4 s, peak-normalised)."""
    import pyroomacoustics as pra

    rng = np.random.default_rng([seed, 7])
    n = int(0.4 * rate)
    out = np.zeros((count, n), np.float32)
    for i in range(count):
        dims = rng.uniform([3.0, 3.0, 2.4], [10.0, 8.0, 4.0])
        room = pra.ShoeBox(
            dims, fs=rate, materials=pra.Material(float(rng.uniform(0.15, 0.7))), max_order=8
        )
        room.add_source(rng.uniform(0.5, dims - 0.5))
        room.add_microphone(rng.uniform(0.5, dims - 0.5))
        room.compute_rir()
        rir = np.asarray(room.rir[0][0], dtype=np.float32)[:n]
        out[i, : rir.size] = rir / (np.abs(rir).max() + 1e-9)
    return out


def _stream_negatives(
    params: Params, out: Path, streams: pd.DataFrame, split: str, frames: int
) -> tuple[np.ndarray, list[dict[str, object]]]:
    """Random windows of the train split's background recordings, as negative examples:
    what a listening device hears most of the time."""
    count = params.augment.stream_windows if split == "train" else 0
    part = streams[streams["split"] == split]
    if count == 0 or part.empty:
        return np.zeros((0, frames, 0), np.float16), []
    rng = np.random.default_rng([params.seed, 13])
    feats = {
        sid: np.load(out / "streams" / f"{sid}.npy", mmap_mode="r", allow_pickle=False)
        for sid in part["id"]
    }
    ids = list(feats)
    records = {str(r["id"]): r for r in part.to_dict("records")}  # one look-up per window
    picks: list[np.ndarray] = []
    rows: list[dict[str, object]] = []
    for i in range(count):
        sid = ids[int(rng.integers(len(ids)))]
        f = feats[sid]
        start = int(rng.integers(0, max(1, f.shape[0] - frames)))
        picks.append(np.asarray(f[start : start + frames]))
        rec = records[str(sid)]
        cls = params.task.class_of(str(rec["label"]))
        rows.append(
            {
                "id": f"{sid}@{start}",
                "view": i,
                "label": rec["label"],
                "class": 0 if cls is None else cls,
                "group": rec["group"],
            }
        )
    return np.stack(picks).astype(np.float16), rows


def run_extract(params: Params, layout: Layout) -> dict[str, object]:
    """The extract stage: ``data/features`` (store, index, norm stats, stream features)."""
    rate = params.audio.sample_rate
    frame = load_split_manifest(layout)
    clips = frame[frame["role"] == "clip"].copy()
    clips["class"] = clips["label"].map(params.task.class_of)
    clips = clips[clips["class"].notna()].astype({"class": int}).sort_values("id")
    train = clips[clips["split"] == "train"]
    noise = tuple(
        layout.ingest / p
        for p in sorted(train.loc[train["label"].isin(params.augment.background_labels), "path"])
    )
    workers = params.runtime.resolved_workers()
    bins = features.frame_spec(params.features, rate).bins
    frames = features.window_frames(params.features, rate)
    summary: dict[str, object] = {
        "frames": frames,
        "bins": bins,
        "front_end": params.features.front_end,
    }
    with (
        atomic_path(layout.metrics / "extract.json") as metrics,
        atomic_path(layout.features) as out,
    ):
        out.mkdir(parents=True)
        rir_path = out / "rirs.npy"
        np.save(
            rir_path,
            room_impulse_responses(params.augment.rir_count, params.seed, rate),
            allow_pickle=False,
        )
        streams = frame[frame["role"] == "stream"].sort_values("id")
        (out / "streams").mkdir()
        args = [
            (layout.ingest / str(r.path), out / "streams" / f"{r.id}.npy", params.features, rate)
            for r in streams.itertuples()
        ]
        counts = pmap(stream_features, args, workers=workers, desc="extract streams", chunksize=1)
        write_csv(
            out / "streams.csv",
            streams[["id", "split", "label", "source", "group", "duration_s"]].assign(
                frames=counts
            ),
        )
        for split in SPLITS:
            part = clips[clips["split"] == split]
            views = params.augment.views if split == "train" else 0
            beds = tuple(
                layout.ingest / p
                for p in sorted(
                    frame.loc[(frame["role"] == "stream") & (frame["split"] == split), "path"]
                )
            )
            jobs = [
                ClipJob(
                    str(r.id),
                    layout.ingest / str(r.path),
                    views,
                    params.seed,
                    rate,
                    params.features,
                    params.augment,
                    noise,
                    rir_path,
                    beds,
                )
                for r in part.itertuples()
            ]
            feats = pmap(clip_features, jobs, workers=workers, desc=f"extract {split}", chunksize=8)
            extra, extra_rows = _stream_negatives(params, out, streams, split, frames)
            store = np.lib.format.open_memmap(
                out / f"{split}.npy",
                mode="w+",
                dtype=np.float16,
                shape=(len(jobs) * (1 + views) + len(extra), frames, bins),
            )
            rows: list[dict[str, object]] = []
            for i, (job, f) in enumerate(zip(jobs, feats, strict=True)):
                store[i * (1 + views) : (i + 1) * (1 + views)] = f.astype(np.float16)
                rec = part.iloc[i]
                rows.extend(
                    {
                        "id": job.id,
                        "view": v,
                        "label": rec["label"],
                        "class": int(rec["class"]),
                        "group": rec["group"],
                    }
                    for v in range(1 + views)
                )
            base = len(jobs) * (1 + views)
            if len(extra):
                store[base:] = extra
            rows.extend(extra_rows)
            store.flush()
            del store
            write_csv(
                out / f"{split}.csv",
                pd.DataFrame(rows, columns=["id", "view", "label", "class", "group"]),
            )
            summary[f"{split}_rows"] = len(rows)
        train_store = np.load(out / "train.npy", mmap_mode="r", allow_pickle=False)
        flat = np.asarray(train_store, dtype=np.float64).reshape(-1, bins)
        write_json(
            out / "norm.json",
            {
                "mean": flat.mean(axis=0).round(6).tolist(),
                "std": (flat.std(axis=0) + 1e-3).round(6).tolist(),
            },
        )
        del train_store, flat
        summary["stream_hours"] = round(float(streams["duration_s"].sum()) / 3600, 4)
        metrics.write_text(json_text(summary), encoding="utf-8")
    log.info("extract: %s", summary)
    return summary
