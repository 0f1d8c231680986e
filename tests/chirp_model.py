"""A small detector trained here in seconds, registered in a throw-away MLflow registry.

The target is a rising chirp; noise, hum and falling chirps are not. It goes through the
real front end, training loop pieces, PT2E quantisation, INT8 ONNX and TFLite export and
the MLflow registry, so the service tests serve a real INT8 model that really detects
something, without the whole pipeline's ten minutes.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline_lib.base.params import Params
from pipeline_lib.detect.checkpoint import ModelSpec
from pipeline_lib.detect.models import build, count_params_macs
from pipeline_lib.detect.runtimes import CALIBRATION_KEY, SPEC_KEY
from pipeline_lib.detect.streaming import FrontEnd
from pipeline_lib.detect.tflm import measure_arena
from pipeline_lib.stages.export import quantize
from tests.conftest import shipped_params

RATE = 16000
CHIRP_S = 0.6
OPTIONS = {"channels": 16, "blocks": 2, "stride": [2, 2]}
# the streaming DS-CNN on a 1.52 s window (150 frames, a multiple of its 5-frame stride, so
# the bench's windows end where the device's steps do): 29 steps after a 10-frame kernel
STREAM_OPTIONS = {"channels": 16, "blocks": 2, "first_kernel": 10, "kernel": 5}
STREAM_WINDOW_S = 1.52


def chirp(rising: bool = True, amp: float = 0.4) -> np.ndarray:
    """A 0.6 s linear chirp, 700 -> 2400 Hz (or falling), with soft edges."""
    t = np.arange(int(CHIRP_S * RATE)) / RATE
    f0, f1 = (700.0, 2400.0) if rising else (2400.0, 700.0)
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * CHIRP_S))
    return (amp * np.sin(phase) * np.hanning(t.size) ** 0.25).astype(np.float32)


def scene(
    seconds: float, chirps_at: list[float], seed: int, decoys_at: list[float] | None = None
) -> np.ndarray:
    """Noise at a level that changes every 5 s, a 120 Hz hum now and then, rising chirps
    at ``chirps_at`` and falling ones (decoys) at ``decoys_at``."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    out = np.zeros(n, np.float32)
    for start in range(0, n, 5 * RATE):
        seg = min(5 * RATE, n - start)
        level = 10 ** (rng.uniform(-50, -28) / 20)
        out[start : start + seg] = rng.normal(0, level, seg)
        if rng.random() < 0.3:
            t = np.arange(seg) / RATE
            out[start : start + seg] += 0.05 * np.sin(2 * np.pi * 120 * t)
    for at, rising in [(a, True) for a in chirps_at] + [(a, False) for a in decoys_at or []]:
        c = chirp(rising, amp=float(rng.uniform(0.15, 0.5)))
        i = int(at * RATE)
        out[i : i + c.size] += c[: max(0, n - i)]
    return np.clip(out, -1, 1)


def train(
    seed: int = 0,
    arch: str = "dscnn",
    options: dict[str, object] | None = None,
    window_s: float | None = None,
) -> tuple[nn.Module, ModelSpec, np.ndarray]:
    """Five minutes of generated audio through the configured front end, a few epochs;
    the model, its spec and some training windows (for quantisation ranges)."""
    feats_cfg = dict(shipped_params()["features"])
    if window_s is not None:
        feats_cfg["window_s"] = window_s
    rng = np.random.default_rng(seed)
    seconds = 300.0
    times = np.arange(2.0, seconds - 2, 3.3)
    times += rng.uniform(-0.6, 0.6, times.size)
    chirps = [float(t) for t in times[::2]]
    decoys = [float(t) for t in times[1::2]]
    audio = scene(seconds, chirps, seed, decoys)

    from pipeline_lib.base.params import FeatureParams

    cfg = FeatureParams.model_validate(feats_cfg)
    frames_all = FrontEnd(cfg, RATE).push(audio)
    frames, bins = round(cfg.window_s / 0.01) - 2, frames_all.shape[1]
    starts = np.arange(0, len(frames_all) - frames, 4)
    b0 = np.array([int(t / 0.01) for t in chirps])
    b1 = b0 + int(CHIRP_S / 0.01)
    inside = (starts[:, None] <= b0[None]) & (b1[None] <= starts[:, None] + frames)
    touches = (starts[:, None] < b1[None]) & (b0[None] < starts[:, None] + frames)
    pos, neg = inside.any(axis=1), ~touches.any(axis=1)
    keep = pos | neg
    view = np.lib.stride_tricks.sliding_window_view(frames_all, frames, axis=0)
    x = np.ascontiguousarray(view[starts[keep]].transpose(0, 2, 1))
    y = pos[keep].astype(np.int64)
    mean, std = x.mean(axis=(0, 1)), x.std(axis=(0, 1)) + 1e-3
    torch.manual_seed(seed)
    options = dict(OPTIONS if options is None else options)
    net = build(arch, 2, frames, bins, **options)
    xn = torch.from_numpy((x - mean) / std)[:, None]
    yt = torch.from_numpy(y)
    opt = torch.optim.Adam(net.parameters(), lr=0.005)
    net.train()
    for _ in range(4):
        order = torch.randperm(len(yt))
        for i in range(0, len(yt), 64):
            idx = order[i : i + 64]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(xn[idx]), yt[idx])
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    net.eval()
    n_params, macs = count_params_macs(net, frames, bins)
    spec = ModelSpec(
        arch=arch,
        classes={"other": ["noise"], "target": ["target"]},
        frames=frames,
        bins=bins,
        rate=RATE,
        features=dict(feats_cfg),
        norm_mean=[float(v) for v in mean],
        norm_std=[float(v) for v in std],
        params=n_params,
        macs=macs,
        options=options,
    )
    return net, spec, x[:256]


def calibration() -> dict[str, object]:
    def rule(threshold: float) -> dict[str, float]:
        return {"hop_frames": 10, "smoothing": 2, "threshold": threshold, "refractory_s": 2.0}

    return {
        "temperature": 1.0,
        "preset": "balanced",
        "presets": {"strict": rule(0.8), "balanced": rule(0.5), "lenient": rule(0.3)},
    }


def export(
    folder: Path,
    seed: int = 0,
    arch: str = "dscnn",
    options: dict[str, object] | None = None,
    window_s: float | None = None,
) -> Path:
    """``model_int8.onnx``, ``model_int8.tflite`` and ``device_manifest.json`` in ``folder``."""
    net, spec, rep = train(seed, arch, options, window_s)
    folder.mkdir(parents=True, exist_ok=True)
    cal = calibration()
    graph, quantizer = quantize.quantize_pt2e(net, spec.frames, spec.bins, spec.normalise(rep))
    tflite = quantize.to_tflite(
        graph, quantizer, spec.frames, spec.bins, folder / "model_int8.tflite"
    )
    meta = {
        SPEC_KEY: json.dumps(asdict(spec), sort_keys=True),
        CALIBRATION_KEY: json.dumps(cal, sort_keys=True),
    }
    quantize.to_onnx_qdq(graph, spec, folder / "model_int8.onnx", meta)
    manifest = {
        "spec": asdict(spec),
        "arena_alloc_bytes": measure_arena(tflite),
        "calibration": cal,
    }
    (folder / "device_manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


def publish(root: Path, params: Params, folder: Path, aliases: tuple[str, ...] = ("edge",)) -> int:
    """Log ``folder``'s files as a run's ``export`` artifacts, register the INT8 ONNX as a
    new version of ``release.model_name`` and point ``aliases`` at it."""
    import mlflow
    import mlflow.onnx
    import onnx
    from mlflow import MlflowClient

    from pipeline_lib.release.tracking import configure

    configure(root, params)
    with mlflow.start_run() as run:
        info = mlflow.onnx.log_model(
            onnx.load(str(folder / "model_int8.onnx")), name="model", pip_requirements=["onnx"]
        )
        for f in sorted(folder.iterdir()):
            if f.is_dir():  # esphome/: the pair, as the registry logs it
                mlflow.log_artifacts(str(f), f"export/{f.name}")
            else:
                mlflow.log_artifact(str(f), "export")
    client = MlflowClient()
    name = params.release.model_name
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    mv = client.create_model_version(name, info.model_uri, run_id=run.info.run_id)
    for alias in aliases:
        client.set_registered_model_alias(name, alias, mv.version)
    return int(mv.version)
