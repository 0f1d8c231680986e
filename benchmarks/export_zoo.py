"""INT8 against FP32 for every model in the zoo: file sizes, the tensor arena TensorFlow
Lite Micro measures, host latency per window, and TFLM-vs-onnxruntime agreement.

Models are freshly initialised (sizes, arena and latency do not depend on training) and
quantised with random normal windows; the input is the default 1.5 s micro_speech window
(148 x 40). Latency is one window at a time on this CPU, median of ``--repeat`` runs:

    python benchmarks/export_zoo.py [--repeat 50] [--arch dscnn tcresnet8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from pipeline_lib.detect.checkpoint import ModelSpec
from pipeline_lib.detect.models import ZOO, build, count_params_macs
from pipeline_lib.detect.runtimes import SPEC_KEY, export_onnx
from pipeline_lib.detect.tflm import TflmScorer, measure_arena
from pipeline_lib.stages.export import quantize

FRAMES, BINS = 148, 40
OPTIONS: dict[str, dict[str, object]] = {"dscnn": {}, "tcresnet8": {"width": 1.5}}


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--arch", nargs="*", default=list(ZOO))
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rep = rng.standard_normal((64, FRAMES, BINS)).astype(np.float32)
    window = rng.standard_normal((1, FRAMES, BINS)).astype(np.float32)
    rows = []
    for arch in args.arch:
        opts = OPTIONS.get(arch, {})
        net = build(arch, 2, FRAMES, BINS, **opts).eval()
        n_params, macs = count_params_macs(net, FRAMES, BINS)
        spec = ModelSpec(
            arch,
            {"other": [], "target": []},
            FRAMES,
            BINS,
            16000,
            {},
            [0.0] * BINS,
            [1.0] * BINS,
            n_params,
            macs,
            dict(opts),
        )
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            fp32 = export_onnx(net, spec, d / "fp32.onnx")
            t = time.perf_counter()
            graph, quantizer = quantize.quantize_pt2e(net, FRAMES, BINS, rep)
            tfl = quantize.to_tflite(graph, quantizer, FRAMES, BINS, d / "int8.tflite")
            int8 = quantize.to_onnx_qdq(graph, spec, d / "int8.onnx", {SPEC_KEY: "{}"})
            convert_s = time.perf_counter() - t
            arena = measure_arena(tfl)
            tflm = TflmScorer(tfl, spec, arena)
            import onnxruntime as ort

            opts_ = ort.SessionOptions()
            opts_.intra_op_num_threads = 1
            s32 = ort.InferenceSession(str(fp32), opts_, providers=["CPUExecutionProvider"])
            s8 = ort.InferenceSession(str(int8), opts_, providers=["CPUExecutionProvider"])
            x = {"features": window}
            q = tflm.int8_logits(rep[:32]).astype(np.int64)
            o = np.concatenate([s8.run(None, {"features": rep[i : i + 1]})[0] for i in range(32)])
            steps = int(np.abs(np.round(o / tflm.out_scale) + tflm.out_zp - q).max())
            rows.append(
                {
                    "arch": arch,
                    "param_count": n_params,
                    "MMACs": macs / 1e6,
                    "fp32 onnx KB": fp32.stat().st_size / 1024,
                    "int8 onnx KB": int8.stat().st_size / 1024,
                    "int8 tflite KB": tfl.stat().st_size / 1024,
                    "arena KB": arena / 1024,
                    "ort fp32 ms": _median_ms(partial(s32.run, None, x), args.repeat),
                    "ort int8 ms": _median_ms(partial(s8.run, None, x), args.repeat),
                    "tflm ms": _median_ms(partial(tflm.int8_logits, window), args.repeat),
                    "tflm-ort steps": steps,
                    "convert s": convert_s,
                }
            )
    cols = list(rows[0])
    print("  ".join(f"{c:>14}" for c in cols))
    for r in rows:
        cells = [f"{r[c]:>14.2f}" if isinstance(r[c], float) else f"{r[c]!s:>14}" for c in cols]
        print("  ".join(cells))
    print(
        "latency: one window, one thread, median of "
        f"{args.repeat}; tflm is TensorFlow Lite Micro's reference kernels on this host CPU"
    )


if __name__ == "__main__":
    main()
