"""``soundops score``: per-window scores and events of audio files, for a model folder or an
exported ONNX file, through the streaming detector. Every file is scored before anything
is written, so a bad file leaves no partial results behind."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from pipeline_lib.base.atomic import write_csv, write_json
from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.parallel import pmap
from pipeline_lib.detect.esphome_model import ManifestModel
from pipeline_lib.detect.runtimes import Scorer, load_scorer
from pipeline_lib.detect.streaming import Calibration, FileScores, score_file

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION = Path("data/calibration/calibration.json")


def resolve_calibration(
    scorer_calibration: dict[str, Any] | None, path: Path | None, preset: str | None
) -> Calibration:
    """An explicit file wins, then the calibration inside an exported file, then the
    project's calibration stage output."""
    if path is not None:
        return Calibration.load(path, preset)
    if scorer_calibration is not None:
        return Calibration.from_dict(scorer_calibration, preset)
    if DEFAULT_CALIBRATION.is_file():
        return Calibration.load(DEFAULT_CALIBRATION, preset)
    raise SoundopsError(
        "no calibration: pass --calibration, or run the calibrate stage "
        f"({DEFAULT_CALIBRATION} not found)."
    )


@lru_cache(maxsize=2)
def _scorer(model: Path) -> Scorer:
    return load_scorer(model)


def _score_one(job: tuple[Path, Path, Calibration]) -> FileScores:
    path, model, cal = job
    return score_file(path, _scorer(model), cal)


def _each_file(
    audio: list[Path],
    workers: int,
    one: Callable[[Any], FileScores],
    jobs: list[Any],
    here: Callable[[Path], FileScores],
) -> list[FileScores]:
    """Every file scored: ``one(job)`` in a process per core (each loads its own model),
    or ``here(path)`` in this process for one worker or one file."""
    if workers > 1 and len(audio) > 1:
        return pmap(one, jobs, workers=workers, desc="score", chunksize=1)
    return [here(p) for p in tqdm(audio, desc="score", unit="file")]


def score_files(
    audio: list[Path],
    model: Path,
    calibration: Path | None,
    preset: str | None,
    out: Path,
    fmt: str,
    workers: int = 1,
) -> dict[str, Any]:
    missing = [p for p in audio if not p.is_file()]
    if missing:
        raise SoundopsError(f"{missing[0]}: audio file not found.")
    if model.suffix == ".json":  # an ESPHome micro_wake_word manifest
        return _score_manifest(audio, model, out, fmt, workers)
    scorer = load_scorer(model)
    cal = resolve_calibration(scorer.calibration, calibration, preset)
    results = _each_file(
        audio, workers, _score_one, [(p, model, cal) for p in audio],
        lambda p: score_file(p, scorer, cal),
    )  # fmt: skip
    rule = cal.rule
    meta = {
        "model": scorer.name,
        "preset": cal.preset,
        "threshold": rule.threshold,
        "smoothing": rule.smoothing,
        "hop_s": round(rule.hop_s, 4),
        "refractory_s": rule.refractory_s,
        "temperature": cal.temperature,
    }
    return _write(results, meta, out, fmt)


@lru_cache(maxsize=2)
def _manifest_model(path: Path) -> ManifestModel:
    return ManifestModel(path)


def _score_manifest_one(job: tuple[Path, Path]) -> FileScores:
    path, manifest = job
    return _manifest_model(manifest).score_file(path)


def _score_manifest(
    audio: list[Path], manifest: Path, out: Path, fmt: str, workers: int
) -> dict[str, Any]:
    """Files through a micro_wake_word model as ESPHome runs it (its own front end, stride
    and sliding mean against its cutoff)."""
    model = _manifest_model(manifest)
    results = _each_file(
        audio, workers, _score_manifest_one, [(p, manifest) for p in audio], model.score_file
    )
    meta = {
        "model": model.name,
        "preset": "probability_cutoff",
        "threshold": model.cutoff,
        "smoothing": model.window,
        "hop_s": round(float(model.mww.stride) * 0.01, 4),
        "refractory_s": model.refractory_s,
        "temperature": 1.0,
    }
    return _write(results, meta, out, fmt)


def _write(results: list[FileScores], meta: dict[str, Any], out: Path, fmt: str) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        doc = meta | {
            "files": [
                {
                    "file": str(r.path),
                    "duration_s": round(r.duration_s, 3),
                    "windows": [
                        {
                            "time_s": round(float(t), 3),
                            "score": round(float(s), 6),
                            "smoothed": round(float(m), 6),
                        }
                        for t, s, m in zip(
                            r.scored.times, r.scored.scores, r.scored.smoothed, strict=True
                        )
                    ],
                    "events": [
                        {"time_s": round(t, 3), "score": round(s, 6)} for t, s in r.scored.events
                    ],
                }
                for r in results
            ]
        }
        write_json(out / "scores.json", doc)
    else:
        windows = pd.concat(
            [
                pd.DataFrame(
                    {
                        "file": str(r.path),
                        "time_s": r.scored.times.round(3),
                        "score": r.scored.scores.round(6),
                        "smoothed": r.scored.smoothed.round(6),
                    }
                )
                for r in results
            ]
        )
        events = pd.DataFrame(
            [
                {"file": str(r.path), "time_s": round(t, 3), "score": round(s, 6)}
                for r in results
                for t, s in r.scored.events
            ],
            columns=["file", "time_s", "score"],
        )
        write_csv(out / "windows.csv", windows)
        write_csv(out / "events.csv", events)
        write_json(out / "rule.json", meta)
    log.info(
        "score: %d file(s), %d event(s)", len(results), sum(len(r.scored.events) for r in results)
    )
    return meta | {
        "files": [
            {
                "file": str(r.path),
                "seconds": r.duration_s,
                "windows": int(r.scored.times.size),
                "events": len(r.scored.events),
            }
            for r in results
        ]
    }
