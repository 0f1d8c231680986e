"""The extract stage on a tiny generated project: one row per clip view in a float16
store beside its index, augmented views only for train, normalisation from train alone,
and the same bytes whatever the worker count."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline_lib.artifacts.store import Store
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import load_params
from pipeline_lib.stages import STAGES
from tests.conftest import folder_digest, shipped_params
from tests.stages.test_dvc_pipeline import tiny


def _write_params(root: Path, raw: dict[str, Any]) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")


@pytest.fixture(scope="module")
def split_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project generated, ingested, validated and split: extract's inputs."""
    root = tmp_path_factory.mktemp("extract")
    raw = tiny(shipped_params())
    raw["augment"]["views"] = 2
    _write_params(root, raw)
    for name in ("generate", "ingest", "validate", "split"):
        STAGES[name](load_params(root / "params.yaml"), Layout(root))
    return root


def _extract(src: Path, dest: Path, workers: int) -> Layout:
    shutil.copytree(src, dest)
    raw = yaml.safe_load((dest / "params.yaml").read_text(encoding="utf-8"))
    raw["runtime"]["workers"] = workers
    _write_params(dest, raw)
    layout = Layout(dest)
    STAGES["extract"](load_params(dest / "params.yaml"), layout)
    return layout


def test_views_for_train_only_and_normalisation_from_train(
    split_project: Path, tmp_path: Path
) -> None:
    layout = _extract(split_project, tmp_path / "one", workers=1)
    summary = json.loads((layout.metrics / "extract.json").read_text(encoding="utf-8"))
    manifest = pd.read_csv(layout.assignment, dtype=str).set_index("id")["split"]
    for split in ("train", "val", "test"):
        store = Store.open(layout.features, split)
        assert store.x.dtype == np.float16
        assert store.x.shape == (len(store.index), summary["frames"], summary["bins"])
        clips = store.index[store.index["id"].isin(manifest.index)]
        assert set(manifest[clips["id"]]) == {split}  # no clip in another split's store
        views = clips.groupby("id")["view"].apply(sorted)
        expected = [0, 1, 2] if split == "train" else [0]
        assert len(views) > 0 and all(v == expected for v in views), split
    train = np.asarray(Store.open(layout.features, "train").x, np.float64)
    norm = json.loads((layout.features / "norm.json").read_text(encoding="utf-8"))
    flat = train.reshape(-1, train.shape[-1])
    assert np.allclose(norm["mean"], flat.mean(0), atol=1e-5)
    assert np.allclose(norm["std"], flat.std(0) + 1e-3, atol=1e-5)


def test_the_same_store_whatever_the_workers(split_project: Path, tmp_path: Path) -> None:
    one = folder_digest(_extract(split_project, tmp_path / "one", workers=1).features)
    two = folder_digest(_extract(split_project, tmp_path / "two", workers=2).features)
    assert one == two and {"train.npy", "val.csv", "norm.json", "rirs.npy"} <= set(one)
