"""The ingest stage on generated fixtures: odd formats, bad files, duplicates, conflicts."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import Params
from pipeline_lib.stages.ingest import run_ingest
from tests.conftest import tone, write_audio

Project = Callable[[dict[str, Any]], tuple[Params, Layout]]


def build_fixture(root: Path) -> None:
    f = root / "raw" / "f"
    write_audio(f / "target" / "good.wav", tone(0.5, 16000, 440), 16000)
    write_audio(f / "target" / "dup.wav", tone(0.5, 16000, 440), 16000)
    left = tone(0.5, 44100, 550)
    write_audio(f / "target" / "stereo44.wav", np.stack([left, left], axis=1), 44100)
    write_audio(f / "target" / "rate8k.wav", tone(0.5, 8000, 660), 8000)
    write_audio(f / "target" / "c1.wav", tone(0.5, 16000, 770), 16000)
    write_audio(f / "noise" / "c2.wav", tone(0.5, 16000, 770), 16000)
    (f / "target" / "corrupt.wav").write_bytes(b"RIFF" + bytes(range(200)))
    write_audio(f / "target" / "empty.wav", np.zeros(0, np.float32), 16000)
    nan = tone(0.5, 16000)
    nan[100] = np.nan
    write_audio(f / "target" / "nan.wav", nan, 16000, subtype="FLOAT")
    write_audio(f / "target" / "silent.wav", np.zeros(8000, np.float32), 16000)
    write_audio(f / "noise" / "silent.wav", np.zeros(8000, np.float32), 16000)
    m = root / "raw" / "m"
    write_audio(m / "s.wav", tone(2.0, 16000, 300), 16000)
    pd.DataFrame(
        {
            "path": ["s.wav", "../f/target/good.wav"],
            "label": ["background", "target"],
            "role": ["stream", "clip"],
        }
    ).to_csv(m / "list.csv", index=False)


@pytest.fixture
def ingested(make_project: Project, raw_params: dict[str, Any]) -> tuple[Params, Layout]:
    raw_params["ingest"]["sources"] = [
        {"name": "f", "kind": "folder", "root": "raw/f"},
        {"name": "m", "kind": "manifest", "root": "raw/m", "path": "raw/m/list.csv"},
    ]
    params, layout = make_project(raw_params)
    build_fixture(layout.root)
    run_ingest(params, layout)
    return params, layout


def test_bad_files_are_quarantined_with_reasons(ingested: tuple[Params, Layout]) -> None:
    _, layout = ingested
    q = pd.read_csv(layout.quarantine)
    reasons = dict(zip(q["source"] + "/" + q["source_path"], q["reason"], strict=True))
    assert set(reasons) == {
        "f/target/corrupt.wav",
        "f/target/empty.wav",
        "f/target/nan.wav",
        "f/target/silent.wav",
        "m/../f/target/good.wav",
    }
    assert reasons["f/target/corrupt.wav"].startswith("undecodable audio")
    assert reasons["f/target/empty.wav"] == "empty audio (no samples)"
    assert reasons["f/target/nan.wav"] == "audio holds NaN or infinite samples"
    assert reasons["f/target/silent.wav"].startswith("all-silent")
    assert reasons["m/../f/target/good.wav"] == "path escapes the source root"


def test_clips_are_normalised_mono_flac(ingested: tuple[Params, Layout]) -> None:
    params, layout = ingested
    m = pd.read_csv(layout.manifest, keep_default_na=False).set_index("source_path")
    assert m["id"].is_unique
    for row in m.itertuples():
        info = sf.info(str(layout.ingest / row.path))
        assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
    assert (
        m.loc["target/stereo44.wav", "orig_rate"],
        m.loc["target/stereo44.wav", "orig_channels"],
    ) == (44100, 2)
    assert m.loc["target/rate8k.wav", "orig_rate"] == 8000
    assert m.loc["target/rate8k.wav", "duration_s"] == pytest.approx(0.5, abs=1e-3)
    assert m.loc["target/stereo44.wav", "peak_dbfs"] == pytest.approx(-6.0, abs=0.1)  # pre-gain
    assert m.loc["s.wav", "role"] == "stream" and m.loc["s.wav", "label"] == "background"
    assert m.loc["noise/silent.wav", "label"] == "noise"  # silence is what "noise" may be
    assert params.audio.sample_rate == 16000


def test_duplicates_once_and_conflicts_flagged(ingested: tuple[Params, Layout]) -> None:
    _, layout = ingested
    m = pd.read_csv(layout.manifest, keep_default_na=False)
    copies = m[m["source_path"].isin(["target/good.wav", "target/dup.wav"])]
    assert len(copies) == 1 and copies.iloc[0]["duplicates"] == 1
    conflict = m[m["label_conflict"]]
    assert len(conflict) == 1 and conflict.iloc[0]["conflict_labels"] == "noise|target"


def test_rerun_is_byte_identical_whatever_the_workers(
    ingested: tuple[Params, Layout], raw_params: dict[str, Any]
) -> None:
    params, layout = ingested
    first = layout.manifest.read_bytes()
    files = sorted(p.relative_to(layout.ingest) for p in layout.ingest.rglob("*.flac"))
    two = params.model_copy(update={"runtime": params.runtime.model_copy(update={"workers": 2})})
    run_ingest(two, layout)
    assert layout.manifest.read_bytes() == first
    assert sorted(p.relative_to(layout.ingest) for p in layout.ingest.rglob("*.flac")) == files


def test_missing_source_root_fails_cleanly(ingested: tuple[Params, Layout]) -> None:
    params, layout = ingested
    before = layout.manifest.read_bytes()
    shutil.rmtree(layout.root / "raw" / "f")
    with pytest.raises(SoundopsError, match=r"source 'f': root folder .* does not exist"):
        run_ingest(params, layout)
    assert layout.manifest.read_bytes() == before
