"""mine stage and ``soundops mine accept``: hard negatives from target-free audio.

The current model scans long recordings that never hold the target (``mine.audio``); every
run of windows scoring at or above ``mine.threshold`` becomes one mined clip (its best
window plus ``pad_s`` either side), near-duplicates are merged by feature similarity and the
best ``max_clips`` are written as clips with a manifest (source, offset, score, model
hash) and a page to listen to them. Accepting copies chosen clips into a folder that
the ``hard_negatives`` source reads, pinned to the train split, and tracks it with DVC, so
the next ``dvc repro`` retrains on them and no mined audio ever reaches validation or test.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
from tqdm.auto import tqdm

from pipeline_lib.artifacts.mined import MINED
from pipeline_lib.audio import features
from pipeline_lib.audio.io import resample
from pipeline_lib.audio.sources.base import audio_files
from pipeline_lib.base import html_page
from pipeline_lib.base.atomic import atomic_path, json_text, sha256, write_csv
from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import Params
from pipeline_lib.base.paths import project_path
from pipeline_lib.detect.checkpoint import load_model
from pipeline_lib.detect.runtimes import TorchScorer
from pipeline_lib.detect.streaming import Calibration, score_file

log = logging.getLogger(__name__)


@dataclass
class Mined:
    source: Path
    offset_s: float
    duration_s: float
    score: float
    audio: np.ndarray


def runs_above(scores: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Index ranges [a, b) of consecutive windows at or above ``threshold``: overlapping
    windows of one sound are one run, so one mined clip."""
    above = np.r_[False, scores >= threshold, False]
    edges = np.flatnonzero(np.diff(above.astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def dedupe(feats: list[np.ndarray], scores: list[float], similarity: float) -> list[int]:
    """Indices to keep, best score first; a clip whose features are within
    ``similarity`` (cosine) of a kept one is a near-duplicate and dropped."""
    if not feats:
        return []
    frames = min(f.shape[0] for f in feats)  # clips from files shorter than one clip
    flat = np.stack([f[:frames].ravel() - f[:frames].mean() for f in feats])
    flat /= np.linalg.norm(flat, axis=1, keepdims=True) + 1e-9
    kept: list[int] = []
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        if not kept or float((flat[kept] @ flat[i]).max()) < similarity:
            kept.append(int(i))
    return kept


def _mining_files(params: Params, layout: Layout) -> list[Path]:
    files: list[Path] = []
    for i, entry in enumerate(params.mine.audio):
        path = project_path(layout.root, entry)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(audio_files(path, params.ingest.extensions))
        else:
            raise SoundopsError(f"mine.audio[{i}]: {entry} does not exist.")
    if not files:
        raise SoundopsError("mine.audio: no audio files found to mine.")
    return files


def model_hash(folder: Path) -> str:
    """The mined clips' provenance: which weights found them (16 hex digits of sha256)."""
    return sha256(folder / "model.safetensors")[:16]


def run_mine(params: Params, layout: Layout) -> dict[str, Any]:
    """The mine stage: ``data/mine`` (clips, ``mined.csv``, ``review.html``)."""
    model, spec = load_model(layout.model)
    scorer = TorchScorer(model, spec)
    cal = Calibration.load(layout.calibration / "calibration.json")
    mp = params.mine
    rate, window_s = spec.rate, spec.frames * 0.01
    files = _mining_files(params, layout)
    found: list[Mined] = []
    seconds = 0.0
    for path in tqdm(files, desc="mine", unit="file"):
        fs = score_file(path, scorer, cal)
        seconds += fs.duration_s
        sc = fs.scored
        src_rate = _rate(path)
        for a, b in runs_above(sc.scores, mp.threshold):
            best = a + int(np.argmax(sc.scores[a:b]))
            # every clip is one length: near a file's edge the clip shifts inward
            length = min(fs.duration_s, window_s + 2 * mp.pad_s)
            start = float(sc.times[best]) - window_s - mp.pad_s
            start = min(max(0.0, start), fs.duration_s - length)
            end = start + length
            data, _ = sf.read(
                str(path),
                start=int(start * src_rate),
                stop=int(end * src_rate),
                dtype="float32",
                always_2d=True,
            )
            audio = resample(np.ascontiguousarray(data.mean(axis=1)), src_rate, rate)
            found.append(Mined(path, start, end - start, float(sc.scores[best]), audio))
    feats = [features.compute(c.audio, spec.feature_params, rate) for c in found]
    distinct = dedupe(feats, [c.score for c in found], mp.dedup_similarity)
    keep = distinct[: mp.max_clips]
    digest = model_hash(layout.model)
    rows = []
    with atomic_path(layout.metrics / "mine.json") as metrics, atomic_path(layout.mine) as out:
        (out / "clips").mkdir(parents=True)
        for i in keep:
            c = found[i]
            rel_src = _rel(c.source, layout.root)
            cid = hashlib.sha256(f"{rel_src}:{c.offset_s:.3f}".encode()).hexdigest()[:16]
            sf.write(str(out / "clips" / f"{cid}.wav"), c.audio, rate, subtype="PCM_16")
            rows.append(
                {
                    "id": cid,
                    "path": f"clips/{cid}.wav",
                    "source": rel_src,
                    "offset_s": round(c.offset_s, 3),
                    "duration_s": round(c.duration_s, 3),
                    "score": round(c.score, 5),
                    "model_hash": digest,
                }
            )
        frame = pd.DataFrame(
            rows, columns=["id", "path", "source", "offset_s", "duration_s", "score", "model_hash"]
        ).sort_values("score", ascending=False)
        write_csv(out / MINED, frame)
        _review_page(out, frame, rate)
        summary = {
            "hours_scanned": round(seconds / 3600, 4),
            "files": len(files),
            "windows_runs": len(found),
            "mined": len(keep),
            "near_duplicates": len(found) - len(distinct),
            "threshold": mp.threshold,
            "model_hash": digest,
        }
        metrics.write_text(json_text(summary), encoding="utf-8")
    log.info(
        "mine: %.2f h scanned, %d run(s) above %.2f, %d mined clip(s) after merging "
        "near-duplicates; review data/mine/review.html, then `soundops mine accept`",
        summary["hours_scanned"],
        len(found),
        mp.threshold,
        len(keep),
    )
    return summary


def _rate(path: Path) -> int:
    return int(sf.info(str(path)).samplerate)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.name


def _review_page(out: Path, frame: pd.DataFrame, rate: int, limit: int = 100) -> None:
    rows = [
        {
            "id": r.id,
            "score": r.score,
            "source": r.source,
            "offset_s": r.offset_s,
            "audio": html_page.audio_tag(sf.read(str(out / str(r.path)), dtype="float32")[0], rate),
        }
        for r in frame.head(limit).itertuples()
    ]
    body = html_page.table(pd.DataFrame(rows), ["audio"]) if rows else "<p>No mined clips.</p>"
    intro = (
        f"<p>{len(frame)} mined clips, best first (the first {limit} shown). "
        "Accept all with <code>soundops mine accept</code>, or leave some out with "
        "<code>--exclude ID</code> or <code>--min-score S</code>. A clip that really "
        "holds the target must not be accepted.</p>"
    )
    (out / "review.html").write_text(
        html_page.page("soundops: mined clips", [("Mined clips", body)], intro),
        encoding="utf-8",
    )
