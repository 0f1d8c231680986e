"""Behaviour of a trained detector with its quality gates on: the INT8 chirp model the
tests train, run as the product runs it (streaming detector, shipped decision rule), must
hear every rising chirp, ignore falling ones and hum, keep doing so when the level or the
start of the audio moves, and pass the shipped release gates on what it measured. Unlike
the end-to-end tests, nothing here loosens a gate (the stage tests measure parity and
fit; this measures what a listener notices)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline_lib.base.params import parse_params
from pipeline_lib.detect import metrics
from pipeline_lib.detect.runtimes import Scorer, load_scorer
from pipeline_lib.detect.streaming import Calibration, score_file
from tests import chirp_model
from tests.conftest import shipped_params

RATE = chirp_model.RATE
WINDOW_S = 1.5  # the chirp model's window


def _scene(seconds: float, seed: int) -> tuple[np.ndarray, list[float], list[float]]:
    """Chirps every 8 s, a decoy (falling chirp) between each pair."""
    chirps = [float(t) for t in np.arange(4.0, seconds - 3.0, 8.0)]
    decoys = [t + 4.0 for t in chirps[:-1]]
    return chirp_model.scene(seconds, chirps, seed, decoys), chirps, decoys


def _events(tmp: Path, audio: np.ndarray, scorer: Scorer, name: str) -> list[float]:
    path = tmp / f"{name}.wav"
    sf.write(str(path), audio, RATE, subtype="PCM_16")
    cal = Calibration.from_dict(chirp_model.calibration())
    return [t for t, _ in score_file(path, scorer, cal).scored.events]


@pytest.fixture(scope="module")
def int8(chirp_export: Path) -> Scorer:
    return load_scorer(chirp_export / "model_int8.onnx")


def test_hears_every_chirp_and_meets_the_shipped_fah_and_recall_gates(
    int8: Scorer, tmp_path: Path
) -> None:
    audio, chirps, decoys = _scene(120.0, seed=11)
    found = _events(tmp_path, audio, int8, "scene")
    match = metrics.match_events(
        [(t, 1.0) for t in found], [(c, c + 0.6) for c in chirps], WINDOW_S, 0.1
    )
    assert match.recall == 1.0 and match.stray == 0, (found, chirps, decoys)
    # Two minutes of hum, level changes and decoys with no target: no false alarm at all.
    none = chirp_model.scene(120.0, [], 12, [float(t) for t in np.arange(8.0, 117.0, 8.0)])
    alarms = len(_events(tmp_path, none, int8, "decoys"))
    fah = metrics.fah(alarms, 120.0 / 3600)["fah"]
    gates = parse_params(shipped_params()).release.gates  # the quality gates, as shipped
    assert alarms == 0 and fah <= gates.max_fah and match.recall >= gates.min_recall


@pytest.mark.parametrize("gain_db", [-12.0, 6.0])
def test_the_same_events_at_another_level(int8: Scorer, tmp_path: Path, gain_db: float) -> None:
    audio, chirps, _ = _scene(40.0, seed=5)
    base = _events(tmp_path, audio, int8, "base")
    moved = _events(tmp_path, np.clip(audio * 10 ** (gain_db / 20), -1, 1), int8, "gain")
    assert len(base) == len(moved) == len(chirps)
    assert np.allclose(base, moved, atol=0.1 + 1e-6)


def test_a_later_start_moves_the_events_with_the_audio(int8: Scorer, tmp_path: Path) -> None:
    audio, chirps, _ = _scene(40.0, seed=6)
    shift_s = 0.73  # not a multiple of the 10 ms frame or the 100 ms hop
    pad = np.zeros(int(shift_s * RATE), np.float32)
    base = _events(tmp_path, audio, int8, "base")
    later = _events(tmp_path, np.concatenate([pad, audio]), int8, "later")
    assert len(base) == len(later) == len(chirps)
    assert np.allclose(np.array(later) - shift_s, base, atol=0.1 + 1e-6)
