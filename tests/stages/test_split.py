"""Group-safe, stable, ratio-respecting split."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import Params, SplitParams
from pipeline_lib.stages.split import assign, run_split

Project = Callable[[dict[str, Any]], tuple[Params, Layout]]
SPLIT = SplitParams(ratios={"train": 0.8, "val": 0.1, "test": 0.1}, salt="t")


def frame(n: int, seed: int, prefix: str = "") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "id": [f"{prefix}{i}" for i in range(n)],
            "group": [f"g{g}" for g in rng.integers(0, n // 4, n)],
            "label": rng.choice(["target", "speech", "noise"], n),
            "fixed_split": "",
        }
    )


def test_no_group_spans_two_splits() -> None:
    df = frame(4000, 0).assign(split=lambda d: assign(d, SPLIT))
    assert (df.groupby("group")["split"].nunique() == 1).all()


def test_adding_data_moves_no_old_clip() -> None:
    old = frame(2000, 1)
    new = pd.concat([old, frame(3000, 2, prefix="new")], ignore_index=True)
    before = assign(old, SPLIT)
    after = assign(new, SPLIT)
    assert after.iloc[: len(old)].tolist() == before.tolist()


def test_ratios_are_met_per_label() -> None:
    df = frame(40000, 3)
    df["group"] = [f"u{i}" for i in range(len(df))]
    shares = (
        df.assign(split=assign(df, SPLIT)).groupby("label")["split"].value_counts(normalize=True)
    )
    for lab in ("target", "speech", "noise"):
        assert shares[lab]["train"] == pytest.approx(0.8, abs=0.02)
        assert shares[lab]["test"] == pytest.approx(0.1, abs=0.02)


def test_pinned_split_wins_for_whole_group() -> None:
    df = frame(400, 4)
    g = df["group"].iloc[0]
    first = df.index[df["group"] == g][0]
    df.loc[first, "fixed_split"] = "test"
    out = df.assign(split=assign(df, SPLIT))
    assert set(out.loc[out["group"] == g, "split"]) == {"test"}


def test_split_refuses_without_gate(make_project: Project, raw_params: dict[str, Any]) -> None:
    params, layout = make_project(raw_params)
    with pytest.raises(SoundopsError, match=r"gate\.json: not found; the validate gate has not"):
        run_split(params, layout)
