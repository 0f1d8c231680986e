"""The feature store as its readers use it: a missing split is one sentence, a batch of
rows comes back in the order asked for, and an object array is refused, not unpickled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline_lib.artifacts.store import Store
from pipeline_lib.base.errors import SoundopsError


def test_a_missing_split_says_to_run_extract(tmp_path: Path) -> None:
    with pytest.raises(SoundopsError, match=r"val\.npy: not found; run the extract stage"):
        Store.open(tmp_path, "val")


def test_batches_come_back_in_the_order_asked(tmp_path: Path) -> None:
    x = np.arange(6 * 2 * 3, dtype=np.float16).reshape(6, 2, 3)
    np.save(tmp_path / "train.npy", x, allow_pickle=False)
    pd.DataFrame({"id": list("abcdef"), "view": 0}).to_csv(tmp_path / "train.csv", index=False)
    store = Store.open(tmp_path, "train")
    assert list(store.index["id"]) == list("abcdef")
    rows = np.array([4, 0, 5, 1])
    got = store.batch(rows)
    assert got.dtype == np.float32 and np.array_equal(got, x[rows].astype(np.float32))


def test_a_store_holding_python_objects_is_never_unpickled(tmp_path: Path) -> None:
    np.save(tmp_path / "train.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    pd.DataFrame({"id": ["a"]}).to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(ValueError, match="Python objects"):
        Store.open(tmp_path, "train")
