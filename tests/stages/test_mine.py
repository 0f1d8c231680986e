"""Mining: overlapping windows become one mined clip, near-duplicates one, and accepting
refuses what would never be trained on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline_lib.artifacts.mined import MINED
from pipeline_lib.audio.sources import list_source
from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import Params
from pipeline_lib.release.accept import accept
from pipeline_lib.stages.mine import dedupe, runs_above
from tests.conftest import tone, write_audio

Make = Callable[[dict[str, Any]], tuple[Params, Layout]]


def test_runs_of_overlapping_windows_are_one_mined_clip() -> None:
    s = np.array([0.1, 0.5, 0.7, 0.2, 0.1, 0.9, 0.95, 0.9, 0.0, 0.6])
    assert runs_above(s, 0.3) == [(1, 3), (5, 8), (9, 10)]
    assert runs_above(np.zeros(5), 0.3) == []


def test_near_duplicates_keep_the_best_score() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((48, 40))
    feats = [a, a + 0.01 * rng.standard_normal(a.shape), rng.standard_normal((48, 40))]
    assert dedupe(feats, [0.4, 0.9, 0.5], 0.97) == [1, 2]
    assert dedupe(feats, [0.4, 0.9, 0.5], 1.0) == [1, 2, 0]


def _mined(layout: Layout, ids: list[str]) -> None:
    (layout.mine / "clips").mkdir(parents=True)
    rows = []
    for i, cid in enumerate(ids):
        write_audio(layout.mine / "clips" / f"{cid}.wav", tone(1.5, 16000, 300 + 50 * i), 16000)
        rows.append(
            {
                "id": cid,
                "path": f"clips/{cid}.wav",
                "source": "s.flac",
                "offset_s": i,
                "duration_s": 1.5,
                "score": 0.9 - 0.1 * i,
                "model_hash": "abc",
            }
        )
    pd.DataFrame(rows).to_csv(layout.mine / MINED, index=False)


def test_accept_writes_a_train_only_source(make_project: Make, raw_params: dict[str, Any]) -> None:
    params, layout = make_project(raw_params)
    hard = next(s for s in params.ingest.sources if s.name == "hard_negatives")
    assert list_source(hard, layout.root, params.labels, [".wav"]).items == []  # optional
    _mined(layout, ["aa", "bb", "cc"])
    done = accept(params, layout, min_score=0.75, exclude=frozenset({"aa"}), track=False)
    assert done == {"accepted": 1, "clips": 1, "new": 1, "tracked": False}
    items = list_source(hard, layout.root, params.labels, [".wav"]).items
    assert [(i.rel, i.label, i.fixed_split) for i in items] == [
        ("confusable/bb.wav", "confusable", "train")
    ]
    accept(params, layout, track=False)  # accepting again adds, never duplicates
    assert len(list_source(hard, layout.root, params.labels, [".wav"]).items) == 3


def test_accept_refuses_unknown_ids_and_orphan_folders(
    make_project: Make, raw_params: dict[str, Any]
) -> None:
    params, layout = make_project(raw_params)
    with pytest.raises(SoundopsError, match="run the mine stage first"):
        accept(params, layout, track=False)
    _mined(layout, ["aa"])
    with pytest.raises(SoundopsError, match="mined clip id\\(s\\) zz not in"):
        accept(params, layout, exclude=frozenset({"zz"}), track=False)
    raw_params["ingest"]["sources"] = raw_params["ingest"]["sources"][:1]
    params, layout = make_project(raw_params)
    with pytest.raises(SoundopsError, match="not the root of any folder source"):
        accept(params, layout, track=False)
    assert not (layout.root / "data" / "raw" / "hard_negatives").exists()
