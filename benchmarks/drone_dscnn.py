"""A DS-CNN trained by the pipeline's own stages on the real DroneAudioDataset chunks.

Drone (bebop + membo) vs unknown (environmental sounds, noise, silence) from
``../shared/data/drone``, split by recording so no recording's chunks span two splits; runs
ingest, validate, split, extract and train in a throw-away project and prints test
accuracy, F1 of the drone class and the confusion matrix:

    python benchmarks/drone_dscnn.py [DATA_DIR] [--epochs N]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline_lib.artifacts.store import Store
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import parse_params
from pipeline_lib.detect.checkpoint import load_model, logits
from pipeline_lib.stages.extract import run_extract
from pipeline_lib.stages.ingest import run_ingest
from pipeline_lib.stages.split import run_split
from pipeline_lib.stages.train import run_train
from pipeline_lib.stages.validate import run_validate

REPO = Path(__file__).resolve().parents[1]


def drone_params(data: Path, epochs: int) -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["labels"] = ["drone", "unknown"]
    raw["ingest"]["sources"] = [
        {
            "name": "drone",
            "kind": "drone",
            "root": str(data / "drone"),
            "label_map": {"drone_bebop": "drone", "drone_membo": "drone", "unknown": "unknown"},
        }
    ]
    raw["ingest"]["allow_silent_labels"] = ["unknown"]
    raw["task"]["classes"] = {"unknown": ["unknown"], "drone": ["drone"]}
    raw["features"]["window_s"] = 1.0
    raw["augment"] |= {"background_labels": ["unknown"], "views": 1, "stream_windows": 0}
    raw["model"] = {"arch": "dscnn", "options": {}}
    raw["train"] |= {"epochs": epochs}
    return raw


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("data", nargs="?", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--epochs", type=int, default=15)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = parse_params(drone_params(args.data.resolve(), args.epochs))
    tmp = Path(tempfile.mkdtemp(prefix="soundops-drone-"))
    try:
        layout = Layout(tmp)
        start = time.perf_counter()
        for stage in (run_ingest, run_validate, run_split, run_extract):
            stage(params, layout)
        summary = run_train(params, layout)
        model, spec = load_model(layout.model)
        test = Store.open(layout.features, "test")
        pred = logits(model, np.asarray(test.x, np.float32), spec).argmax(axis=1)
        y = test.index["class"].to_numpy()
        tp = int(((pred == 1) & (y == 1)).sum())
        fp = int(((pred == 1) & (y == 0)).sum())
        fn = int(((pred == 0) & (y == 1)).sum())
        tn = int(((pred == 0) & (y == 0)).sum())
        precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
        f1 = 2 * precision * recall / max(precision + recall, 1e-12)
        groups = test.index["group"].nunique()
        print(
            f"DS-CNN ({summary['param_count']} parameters, {summary['macs'] / 1e6:.2f} M MACs), "
            f"best epoch {summary['best_epoch']} of {summary['epochs_run']}, "
            f"{time.perf_counter() - start:.0f} s in all"
        )
        print(
            f"test: {len(y)} chunks from {groups} recordings; accuracy "
            f"{(pred == y).mean():.4f}, drone precision {precision:.4f}, recall {recall:.4f}, "
            f"F1 {f1:.4f}"
        )
        print(
            f"confusion (rows true unknown/drone, columns predicted): [[{tn}, {fp}], [{fn}, {tp}]]"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
