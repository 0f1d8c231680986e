"""The feature store extract writes and train, calibrate, evaluate and export read: one
memory-mapped ``.npy`` of windows per split beside its CSV index."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline_lib.base.errors import SoundopsError


@dataclass
class Store:
    """One split of the feature store: memory-mapped features plus the index."""

    x: np.ndarray
    index: pd.DataFrame

    @classmethod
    def open(cls, folder: Path, split: str) -> Store:
        path = folder / f"{split}.npy"
        if not path.is_file():
            raise SoundopsError(f"{path}: not found; run the extract stage first.")
        x = np.load(path, mmap_mode="r", allow_pickle=False)
        index = pd.read_csv(folder / f"{split}.csv", keep_default_na=False)
        return cls(x, index)

    def batch(self, rows: np.ndarray) -> np.ndarray:
        order = np.argsort(rows)
        out = np.empty((len(rows), *self.x.shape[1:]), np.float32)
        out[order] = self.x[rows[order]]
        return out
