"""Trained-model folders: ``model.safetensors`` (weights, never pickle) + ``spec.json``.

The spec is everything needed to run the model on new audio: architecture, classes and the
labels behind them, front end, window, and the train-split normalisation statistics.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline_lib.base.atomic import atomic_path, write_json
from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.params import FeatureParams
from pipeline_lib.detect.models import build


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    classes: dict[str, list[str]]
    frames: int
    bins: int
    rate: int
    features: dict[str, Any]
    norm_mean: list[float]
    norm_std: list[float]
    params: int
    macs: int
    options: dict[str, Any]

    @property
    def feature_params(self) -> FeatureParams:
        return FeatureParams.model_validate(self.features)

    def normalise(self, feats: np.ndarray) -> np.ndarray:
        mean = np.asarray(self.norm_mean, np.float32)
        std = np.asarray(self.norm_std, np.float32)
        out: np.ndarray = (np.asarray(feats, np.float32) - mean) / std
        return out


def save_model(
    folder: Path, model: nn.Module, spec: ModelSpec, extra: dict[str, Path] | None = None
) -> None:
    """Write the folder atomically; ``extra`` files (curves, plots) are copied in."""
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        write_json(tmp / "spec.json", asdict(spec))
        for name, src in (extra or {}).items():
            (tmp / name).write_bytes(src.read_bytes())


def load_model(folder: Path) -> tuple[nn.Module, ModelSpec]:
    """Load a model folder for inference (eval mode, CPU)."""
    spec_path, weights = folder / "spec.json", folder / "model.safetensors"
    for path in (spec_path, weights):
        if not path.is_file():
            raise SoundopsError(f"{path}: not found; is {folder} a trained model folder?")
    try:
        spec = ModelSpec(**json.loads(spec_path.read_text(encoding="utf-8")))
    except (TypeError, json.JSONDecodeError) as exc:
        raise SoundopsError(f"{spec_path}: not a soundops model spec ({exc}).") from None
    model = build(spec.arch, len(spec.classes), spec.frames, spec.bins, **spec.options)
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    return model, spec


def logits(model: nn.Module, batch: np.ndarray, spec: ModelSpec, chunk: int = 512) -> np.ndarray:
    """Logits for (n, frames, bins) raw features, normalised here; bounded memory."""
    outs = []
    with torch.inference_mode():
        for i in range(0, len(batch), chunk):
            x = torch.from_numpy(spec.normalise(batch[i : i + chunk]))[:, None]
            outs.append(model(x).float().numpy())
    if not outs:
        return np.zeros((0, len(spec.classes)), np.float32)
    return np.concatenate(outs)
