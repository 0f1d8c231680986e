"""Shared fixtures: tiny generated audio and throw-away projects built from params.yaml."""

from __future__ import annotations

import copy
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import yaml

from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import Params, parse_params

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Prefect writes its home on import: a throw-away one, never ~/.prefect
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="soundops-test-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def shipped_params() -> dict[str, Any]:
    """The repository's params.yaml as a dict (tests change copies of it)."""
    raw: dict[str, Any] = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    return raw


def tone(seconds: float, rate: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def folder_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by relative path, with its SHA-256: byte-identity of outputs."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def write_audio(path: Path, samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, rate, subtype=subtype)
    return path


@pytest.fixture
def raw_params() -> dict[str, Any]:
    raw = copy.deepcopy(shipped_params())
    raw["runtime"]["workers"] = 1
    return raw


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[[dict[str, Any]], tuple[Params, Layout]]:
    """Write params.yaml into a fresh project folder and return (params, layout)."""

    def make(raw: dict[str, Any]) -> tuple[Params, Layout]:
        root = tmp_path / "project"
        root.mkdir(exist_ok=True)
        (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        return parse_params(raw), Layout(root)

    return make


def tiny_model(folder: Path, front_end: str = "micro", seed: int = 0) -> Path:
    """An untrained TC-ResNet8 model folder with a real spec: scores are arbitrary but
    deterministic, which is all the streaming and scoring tests need."""
    import torch

    from pipeline_lib.detect.checkpoint import ModelSpec, save_model
    from pipeline_lib.detect.models import build, count_params_macs

    raw = shipped_params()
    feats = dict(raw["features"]) | {"front_end": front_end, "window_s": 0.5}
    torch.manual_seed(seed)
    frames, bins = 48, 40
    net = build("tcresnet8", 2, frames, bins).eval()
    n_params, macs = count_params_macs(net, frames, bins)
    spec = ModelSpec(
        arch="tcresnet8",
        classes={"other": ["confusable"], "target": ["target"]},
        frames=frames,
        bins=bins,
        rate=16000,
        features=feats,
        norm_mean=[0.0] * bins,
        norm_std=[1.0] * bins,
        params=n_params,
        macs=macs,
        options={},
    )
    save_model(folder, net, spec)
    return folder


def calibration_dict(threshold: float = 0.5, smoothing: int = 2) -> dict[str, Any]:
    rule = {"hop_frames": 10, "smoothing": smoothing, "threshold": threshold, "refractory_s": 2.0}
    return {"temperature": 1.0, "preset": "balanced", "presets": {"balanced": rule}}


@pytest.fixture(scope="session")
def chirp_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A chirp detector trained and exported to INT8 once per test session (~40 s)."""
    from tests import chirp_model

    return chirp_model.export(tmp_path_factory.mktemp("chirp"))
