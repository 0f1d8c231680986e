"""``soundops score --model NAME.json``: an ESPHome micro_wake_word model, run as
pymicro-wakeword runs it, and manifests that cannot be run refused in one sentence."""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline_lib.audio.io import resample
from pipeline_lib.stages.generate.tts import RATE as TTS_RATE
from pipeline_lib.stages.generate.tts import SpeechSession
from tests.conftest import write_audio

SOUNDOPS = str(Path(sys.executable).parent / "soundops")
ALEXA = Path(str(importlib.resources.files("pymicro_wakeword") / "models" / "alexa.json"))


def _speech(path: Path) -> np.ndarray:
    """'alexa' and other words by espeak-ng, two seconds apart, in faint noise."""
    rng = np.random.default_rng(1)
    parts = [rng.normal(0, 0.002, 16000).astype(np.float32)]
    with SpeechSession() as s:
        for text, voice in [("alexa", "en-us+m1"), ("a letter", "en+f2"), ("alexa", "en+m3")]:
            x = resample(s.speak(text, voice, 150, 50), TTS_RATE, 16000)
            parts += [0.5 * x / np.abs(x).max(), rng.normal(0, 0.002, 32000).astype(np.float32)]
    audio = np.concatenate(parts)
    write_audio(path, audio, 16000)
    return audio


def _reference(path: Path) -> tuple[list[float], list[float]]:
    """pymicro-wakeword's own loop over the file's PCM, as its README runs it: time and
    sliding-mean probability after every inference."""
    import soundfile as sf
    from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures

    mww = MicroWakeWord.from_config(ALEXA)
    feats = MicroWakeWordFeatures()
    pcm = sf.read(str(path), dtype="int16")[0].astype("<i2").tobytes()
    times, probs = [], []
    for frame, f in enumerate(feats.process_streaming(pcm), start=1):
        p = mww.process_streaming_prob(f)
        if frame % mww.stride == 0:
            times.append(frame * 0.01 + 0.02)
            probs.append(float(p or 0.0))
    return times, probs


def _score(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [SOUNDOPS, "score", *args], cwd=tmp_path, capture_output=True, text=True, env=env,
        timeout=300,
    )  # fmt: skip


def test_score_runs_microwakewords_own_model_as_pymicro_wakeword_does(tmp_path: Path) -> None:
    _speech(tmp_path / "speech.wav")
    proc = _score(tmp_path, "speech.wav", "--model", str(ALEXA), "--out", "out", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    windows = pd.read_csv(tmp_path / "out" / "windows.csv")
    times, probs = _reference(tmp_path / "speech.wav")
    assert len(windows) == len(probs) > 100
    np.testing.assert_allclose(windows["time_s"], times, atol=1e-3)
    np.testing.assert_allclose(windows["smoothed"], probs, atol=1e-6)  # the same numbers
    np.testing.assert_array_equal(windows["score"], windows["smoothed"])
    rule = json.loads((tmp_path / "out" / "rule.json").read_text())
    assert rule["threshold"] == 0.9 and rule["smoothing"] == 5
    events = pd.read_csv(tmp_path / "out" / "events.csv")
    # it hears both espeak "alexa"s (at about 1.5 s and 5.8 s) and not "a letter"
    assert len(events) == 2, events
    assert events["time_s"].iloc[0] < 3.0 < 4.5 < events["time_s"].iloc[1]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: d.pop("micro"), "no 'micro' section"),
        (lambda d: d.update(version=1), "manifest version 1; expected 2"),
        (lambda d: d["micro"].update(probability_cutoff="high"), "micro.probability_cutoff is"),
        (lambda d: d["micro"].update(sliding_window_size=0), "out of range"),
        (lambda d: d.update(model="../../etc/passwd"), "leads outside the manifest's folder"),
        (lambda d: d.update(model="gone.tflite"), "its model file gone.tflite is not beside it"),
    ],
)
def test_a_manifest_that_cannot_run_is_refused_in_one_sentence(
    tmp_path: Path, change: object, needle: str
) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(ALEXA.with_suffix(".tflite"), folder / "alexa.tflite")
    doc = json.loads(ALEXA.read_text())
    change(doc)  # type: ignore[operator]
    (folder / "alexa.json").write_text(json.dumps(doc))
    write_audio(tmp_path / "a.wav", np.zeros(16000, np.float32), 16000)
    proc = _score(tmp_path, "a.wav", "--model", "m/alexa.json", "--out", "out")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert needle in " ".join(proc.stderr.split()), proc.stderr
    assert not (tmp_path / "out").exists()
