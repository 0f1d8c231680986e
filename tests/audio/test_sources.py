"""Each source kind on a tiny generated layout: labels, groups, pinned splits, rejects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from pipeline_lib.audio.sources import list_source
from pipeline_lib.audio.sources.corpora import drone_group
from pipeline_lib.base.params import parse_params
from tests.conftest import tone, write_audio

LABELS = ["target", "confusable", "speech", "noise", "background"]


def _source(raw_params: dict[str, Any], spec: dict[str, Any]) -> Any:
    raw_params["ingest"]["sources"] = [spec]
    return parse_params(raw_params).ingest.sources[0]


def _wav(path: Path, freq: float = 440.0) -> None:
    write_audio(path, tone(0.3, 16000, freq), 16000)


def test_folder_maps_labels_and_groups(tmp_path: Path, raw_params: dict[str, Any]) -> None:
    for rel in ("yes/ann_1.wav", "yes/bob_1.wav", "no/ann_2.wav", "other/x.wav", "yes/.hidden.wav"):
        _wav(tmp_path / "c" / rel)
    src = _source(
        raw_params,
        {
            "name": "c",
            "kind": "folder",
            "root": "c",
            "label_map": {"yes": "target", "no": "speech"},
            "group_regex": r"/([a-z]+)_",
        },
    )
    listing = list_source(src, tmp_path, LABELS, [".wav"])
    assert [(i.rel, i.label, i.group) for i in listing.items] == [
        ("no/ann_2.wav", "speech", "c:ann"),
        ("yes/ann_1.wav", "target", "c:ann"),
        ("yes/bob_1.wav", "target", "c:bob"),
    ]
    assert listing.unmapped == {"other": 1}


def test_manifest_csv_and_parquet(tmp_path: Path, raw_params: dict[str, Any]) -> None:
    root = tmp_path / "m"
    _wav(root / "a.wav")
    _wav(root / "sub" / "b.wav")
    _wav(tmp_path / "outside.wav")
    rows = pd.DataFrame(
        {
            "path": ["a.wav", "sub/b.wav", "../outside.wav", "missing.wav"],
            "label": ["target", "speech", "target", "target"],
            "speaker": ["s1", "s2", "s1", "s1"],
            "split": ["test", "", "", ""],
        }
    )
    rows.to_csv(root / "list.csv", index=False)
    rows.to_parquet(root / "list.parquet")
    for name in ("list.csv", "list.parquet"):
        src = _source(
            raw_params, {"name": "m", "kind": "manifest", "root": "m", "path": f"m/{name}"}
        )
        listing = list_source(src, tmp_path, LABELS, [".wav"])
        assert [(i.rel, i.group, i.fixed_split) for i in listing.items] == [
            ("a.wav", "m:s1", "test"),
            ("sub/b.wav", "m:s2", ""),
        ]
        assert sorted((r.rel, r.reason) for r in listing.rejects) == [
            ("../outside.wav", "path escapes the source root"),
            ("missing.wav", "file not found"),
        ]


def test_speech_commands_speakers_and_lists(tmp_path: Path, raw_params: dict[str, Any]) -> None:
    root = tmp_path / "sc"
    for rel in (
        "marvin/aa11_nohash_0.wav",
        "marvin/aa11_nohash_1.wav",
        "marvin/bb22_nohash_0.wav",
        "dog/cc33_nohash_0.wav",
        "_background_noise_/white_noise.wav",
    ):
        _wav(root / rel)
    (root / "validation_list.txt").write_text("marvin/bb22_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("dog/cc33_nohash_0.wav\n")
    src = _source(
        raw_params,
        {
            "name": "sc",
            "kind": "speech_commands",
            "root": "sc",
            "label_map": {"marvin": "target", "_background_noise_": "background"},
            "default_label": "speech",
        },
    )
    items = {i.rel: i for i in list_source(src, tmp_path, LABELS, [".wav"]).items}
    assert items["marvin/aa11_nohash_0.wav"].group == items["marvin/aa11_nohash_1.wav"].group
    assert items["marvin/bb22_nohash_0.wav"].fixed_split == "val"
    assert items["dog/cc33_nohash_0.wav"].label == "speech"
    assert items["dog/cc33_nohash_0.wav"].fixed_split == "test"
    assert items["_background_noise_/white_noise.wav"].role == "stream"


def test_esc50_groups_by_source_clip(tmp_path: Path, raw_params: dict[str, Any]) -> None:
    root = tmp_path / "esc"
    meta = pd.DataFrame(
        {
            "filename": ["1-100-A-0.wav", "1-100-B-0.wav", "5-200-A-1.wav", "2-300-A-2.wav"],
            "fold": [1, 1, 5, 2],
            "target": [0, 0, 1, 2],
            "category": ["dog", "dog", "rain", "cat"],
            "esc10": [True, True, False, False],
            "src_file": ["100", "100", "200", "300"],
            "take": ["A", "B", "A", "A"],
        }
    )
    (root / "meta").mkdir(parents=True)
    meta.to_csv(root / "meta" / "esc50.csv", index=False)
    for name in meta["filename"][:3]:
        _wav(root / "audio" / name)
    src = _source(
        raw_params,
        {
            "name": "esc",
            "kind": "esc50",
            "root": "esc",
            "label_map": {"dog": "noise", "rain": "noise"},
            "fold_splits": {5: "test"},
        },
    )
    listing = list_source(src, tmp_path, LABELS, [".wav"])
    groups = [(i.rel, i.group, i.fixed_split) for i in listing.items]
    assert groups == [
        ("audio/1-100-A-0.wav", "esc:100", ""),
        ("audio/1-100-B-0.wav", "esc:100", ""),
        ("audio/5-200-A-1.wav", "esc:200", "test"),
    ]
    assert listing.unmapped == {"cat": 1}


def test_picovoice_layout(tmp_path: Path, raw_params: dict[str, Any]) -> None:
    for rel in ("audio/alexa/alexa_1.flac", "audio/jarvis/jarvis_1.flac"):
        write_audio(tmp_path / "pv" / rel, tone(0.3, 16000), 16000)
    src = _source(
        raw_params,
        {
            "name": "pv",
            "kind": "picovoice",
            "root": "pv",
            "label_map": {"alexa": "target", "jarvis": "confusable"},
        },
    )
    items = list_source(src, tmp_path, LABELS, [".flac"]).items
    assert [(i.rel, i.label, i.group) for i in items] == [
        ("alexa/alexa_1.flac", "target", "pv:alexa_1"),
        ("jarvis/jarvis_1.flac", "confusable", "pv:jarvis_1"),
    ]


def test_drone_groups_by_recording(tmp_path: Path, raw_params: dict[str, Any]) -> None:
    assert (
        drone_group("drone_bebop", Path("B_S2_D1_067-bebop_000_.flac"))
        == drone_group("drone_bebop", Path("B_S2_D1_067-bebop_004_.flac"))
        == "drone_bebop/B_S2_D1_067-bebop"
    )
    assert drone_group("unknown", Path("1-100032-A-00.flac")) == "unknown/1-100032-A-0"
    assert drone_group("unknown", Path("silence182.flac")) == "unknown/silence18"
    for rel in (
        "yes_drone/B_S2_D1_067-bebop_000_.wav",
        "yes_drone/B_S2_D1_067-bebop_001_.wav",
        "unknown/pink_noise000.wav",
    ):
        _wav(tmp_path / "dr" / rel)
    src = _source(
        raw_params,
        {
            "name": "dr",
            "kind": "drone",
            "root": "dr",
            "label_map": {"yes_drone": "target", "unknown": "noise"},
        },
    )
    items = list_source(src, tmp_path, LABELS, [".wav"]).items
    assert len({i.group for i in items if i.label == "target"}) == 1
