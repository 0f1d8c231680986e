"""Scoring speed of the streaming detector, in multiples of real time, on this CPU.

For the DS-CNN (the MCU-sized zoo member, geometry as in params.yaml's comment) and the
configured default model, scores generated long recordings end to end (audio -> front end
-> model -> smoothing -> events) with PyTorch and with the FP32 ONNX export in
onnxruntime, in one process and with one process per core over several files; then the
model alone on ready-made feature windows. All figures come from one run, so the ratios
between them are fair (machines here are shared and noisy):

    python benchmarks/scoring_speed.py [--minutes 5] [--files 4] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import yaml

from pipeline_lib.audio import features
from pipeline_lib.base.parallel import pmap
from pipeline_lib.base.params import parse_params
from pipeline_lib.detect.checkpoint import ModelSpec
from pipeline_lib.detect.models import build, count_params_macs
from pipeline_lib.detect.runtimes import OnnxScorer, TorchScorer, export_onnx
from pipeline_lib.detect.streaming import Calibration, score_file

REPO = Path(__file__).resolve().parents[1]
DSCNN = {"channels": 48, "stride": [4, 4]}


def _spec(arch: str, options: dict[str, Any]) -> tuple[torch.nn.Module, ModelSpec]:
    params = parse_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    rate = params.audio.sample_rate
    frames = features.window_frames(params.features, rate)
    bins = features.frame_spec(params.features, rate).bins
    torch.manual_seed(0)
    net = build(arch, 2, frames, bins, **options).eval()
    n, macs = count_params_macs(net, frames, bins)
    spec = ModelSpec(
        arch,
        {"other": ["x"], "target": ["y"]},
        frames,
        bins,
        rate,
        params.features.model_dump(mode="json"),
        [0.0] * bins,
        [1.0] * bins,
        n,
        macs,
        options,
    )
    return net, spec


def _audio(path: Path, minutes: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(minutes * 60 * 16000)
    x = 0.02 * rng.standard_normal(n)
    t = np.arange(n) / 16000
    x += 0.2 * np.sin(2 * np.pi * 440 * t) * (np.sin(0.5 * t) > 0.7)
    sf.write(str(path), x.astype(np.float32), 16000, subtype="PCM_16")


def _cal(hop_frames: int) -> Calibration:
    rule = {"hop_frames": hop_frames, "smoothing": 2, "threshold": 0.9, "refractory_s": 2.0}
    return Calibration.from_dict({"temperature": 1.0, "preset": "b", "presets": {"b": rule}})


def _score_onnx(args: tuple[str, str, int]) -> float:
    onnx_path, audio, hop = args
    scorer = OnnxScorer(Path(onnx_path), threads=1)
    return score_file(Path(audio), scorer, _cal(hop)).duration_s


def _score_torch(args: tuple[str, str, int]) -> float:
    from pipeline_lib.detect.checkpoint import load_model

    folder, audio, hop = args
    net, spec = load_model(Path(folder))
    return score_file(Path(audio), TorchScorer(net, spec), _cal(hop)).duration_s


def bench(
    arch: str, options: dict[str, Any], files: list[Path], workers: int, hop: int, tmp: Path
) -> dict[str, Any]:
    from pipeline_lib.detect.checkpoint import save_model

    net, spec = _spec(arch, options)
    folder = tmp / f"{arch}-model"
    save_model(folder, net, spec)
    onnx_path = export_onnx(net, spec, tmp / f"{arch}.onnx")
    seconds = sum(sf.info(str(f)).duration for f in files)
    out: dict[str, Any] = {
        "arch": arch,
        "options": options,
        "param_count": spec.params,
        "macs": spec.macs,
    }
    cal = _cal(hop)
    torch_scorer, onnx_scorer = TorchScorer(net, spec), OnnxScorer(onnx_path)
    for name, scorer in (("torch_1proc", torch_scorer), ("onnx_1proc", onnx_scorer)):
        start = time.perf_counter()
        for f in files:
            score_file(f, scorer, cal)
        out[name] = seconds / (time.perf_counter() - start)
    for name, fn, model in (
        ("onnx_%dproc", _score_onnx, onnx_path),
        ("torch_%dproc", _score_torch, folder),
    ):
        start = time.perf_counter()
        pmap(
            fn,
            [(str(model), str(f), hop) for f in files],
            workers=workers,
            desc=name % workers,
            chunksize=1,
        )
        out[name % workers] = seconds / (time.perf_counter() - start)
    # the model alone on ready feature windows (what the front end costs is the rest)
    rng = np.random.default_rng(0)
    windows = rng.standard_normal((2000, spec.frames, spec.bins)).astype(np.float32)
    for name, scorer in (("torch_model_only", torch_scorer), ("onnx_model_only", onnx_scorer)):
        scorer.logits(windows[:64])
        start = time.perf_counter()
        scorer.logits(windows)
        per_s = windows.shape[0] / (time.perf_counter() - start)
        out[name] = per_s * hop * 0.01  # windows/s times seconds of audio per window
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="length of each recording")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = parse_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    hop = max(1, round(params.calibrate.hop_s / 0.01))
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        files = []
        for i in range(args.files):
            files.append(tmp / f"rec{i}.wav")
            _audio(files[-1], args.minutes, i)
        # the front end alone, one process
        x, _ = sf.read(str(files[0]), dtype="float32")
        start = time.perf_counter()
        features.compute(x, params.features, 16000)
        front = x.size / 16000 / (time.perf_counter() - start)
        rows = [bench("dscnn", DSCNN, files, args.workers, hop, tmp)]
        if (params.model.arch, dict(params.model.options)) != ("dscnn", DSCNN):
            rows.append(
                bench(params.model.arch, dict(params.model.options), files, args.workers, hop, tmp)
            )
    cols = [
        "torch_1proc",
        "onnx_1proc",
        f"torch_{args.workers}proc",
        f"onnx_{args.workers}proc",
        "torch_model_only",
        "onnx_model_only",
    ]
    print(
        f"scoring speed, multiples of real time ({args.files} x {args.minutes:g} min of "
        f"audio, hop {hop * 10} ms, {params.features.front_end} front end, "
        f"{os.cpu_count()} CPU(s), torch threads {torch.get_num_threads()})"
    )
    print(f"front end alone, 1 process: {front:,.0f}x")
    print(f"{'model':<22}{'params':>9}{'MACs':>8}" + "".join(f"{c:>18}" for c in cols))
    for r in rows:
        label = f"{r['arch']} {json.dumps(r['options'], separators=(',', ':'))}"
        print(
            f"{label[:22]:<22}{r['param_count']:>9,}{r['macs'] / 1e6:>7.2f}M"
            + "".join(f"{r[c]:>17,.0f}x" for c in cols)
        )
    if args.json:
        args.json.write_text(json.dumps({"front_end_x": front, "models": rows}, indent=2))


if __name__ == "__main__":
    main()
