"""Shared fixtures: tiny generated audio and throw-away projects built from params.yaml."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import yaml

from pipeline_lib.layout import Layout
from pipeline_lib.params import Params, parse_params

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


def shipped_params() -> dict[str, Any]:
    """The repository's params.yaml as a dict (tests change copies of it)."""
    raw: dict[str, Any] = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    return raw


def tone(seconds: float, rate: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


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
