"""The demo corpus: deterministic, labelled as asked, and a source like any other."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pipeline_lib.demo.generate import generate_demo
from pipeline_lib.demo.phrases import confusables
from pipeline_lib.errors import SoundopsError
from pipeline_lib.layout import Layout
from pipeline_lib.params import parse_params
from pipeline_lib.tts import SpeechSession


def tiny_demo(raw: dict[str, Any], per_label: int = 6) -> dict[str, Any]:
    """A demo corpus of a few clips per label and seconds-long streams."""
    raw = copy.deepcopy(raw)
    raw["demo"]["counts"] = dict.fromkeys(("target", "confusable", "speech", "noise"), per_label)
    raw["demo"]["background"] |= {
        "train_minutes": 0,
        "val_minutes": 0.1,
        "test_minutes": 0.2,
        "mine_minutes": 0.2,
        "stream_minutes": 0.1,
    }
    return raw


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_deterministic_whatever_the_workers(tmp_path: Path, raw_params: dict[str, Any]) -> None:
    raw = tiny_demo(raw_params)
    generate_demo(parse_params(raw), Layout(tmp_path / "a"))
    raw["runtime"]["workers"] = 2
    generate_demo(parse_params(raw), Layout(tmp_path / "b"))
    a, b = _digest(tmp_path / "a" / "data" / "demo"), _digest(tmp_path / "b" / "data" / "demo")
    assert a == b and len(a) == 24 + 3 + 2 + 2  # clips, streams, mining pool, tables


def test_corpus_content(tmp_path: Path, raw_params: dict[str, Any]) -> None:
    layout = Layout(tmp_path)
    generate_demo(parse_params(tiny_demo(raw_params)), layout)
    m = pd.read_csv(layout.demo / "manifest.csv", keep_default_na=False)
    clips = m[m["role"] == "clip"]
    assert clips["label"].value_counts().to_dict() == {
        "target": 6,
        "confusable": 6,
        "speech": 6,
        "noise": 6,
    }
    streams = m[m["role"] == "stream"]
    assert streams["split"].value_counts().to_dict() == {"test": 2, "val": 1}
    phrase = raw_params["demo"]["phrase"]
    targets = clips[clips["label"] == "target"]
    assert all(t.lower().strip("!?.").replace(",", "") == phrase for t in targets["text"])
    assert not set(clips.loc[clips["label"] == "confusable", "text"]) & {phrase}
    for row in targets.itertuples():  # speech is there, well above the noise bed
        x, rate = sf.read(str(layout.demo / row.path))
        assert rate == 22050 and x.size >= int(1.5 * rate)
        frames = np.sqrt(np.mean(x[: x.size // 441 * 441].reshape(-1, 441) ** 2, axis=1))
        assert frames.max() > 2 * np.percentile(frames, 10)
    stream, rate = sf.read(str(layout.demo / streams.iloc[0]["path"]))
    assert stream.size == pytest.approx(6.0 * rate, abs=2)


def test_confusables_share_sounds_but_are_not_the_phrase() -> None:
    with SpeechSession() as session:
        found = confusables("amber lantern", ["lamp lighter"], session)
    assert {"amber", "lantern", "lantern amber", "lamp lighter"} <= set(found)
    assert "amber lantern" not in found
    assert any(c.endswith(" lantern") and c != "lantern" for c in found)


def test_unknown_voice_is_named(tmp_path: Path, raw_params: dict[str, Any]) -> None:
    raw = tiny_demo(raw_params)
    raw["demo"]["variants"] = ["m1", "nobody"]
    with pytest.raises(
        SoundopsError, match=r"demo\.variants: espeak-ng has no voice variant 'nobody'"
    ):
        generate_demo(parse_params(raw), Layout(tmp_path))
    assert not (tmp_path / "data" / "demo").exists()
