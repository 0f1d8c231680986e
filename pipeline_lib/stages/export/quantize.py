"""One INT8 graph, two artifacts: full-integer TFLite for TensorFlow Lite Micro and a QDQ
ONNX for onnxruntime.

The model is quantised once with PyTorch 2 export quantisation (PT2E: static, int8
activations, symmetric per-channel int8 weights, ranges from representative training
windows). ``litert-torch`` lowers that graph to a TFLite flatbuffer whose input and output
are int8, and the same graph is written as ONNX QuantizeLinear/DequantizeLinear pairs that
onnxruntime fuses into integer kernels (QLinearConv, QGemm). Both files therefore carry the
very same scales and zero points, so the device runtime can be checked against
onnxruntime step for step, not only against FP32.

The TFLite model takes *normalised* features (the firmware subtracts the per-bin mean and
divides by the standard deviation before quantising, see the device manifest); the ONNX
files take raw front-end output, as :class:`pipeline_lib.scorers.OnnxScorer` expects.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline_lib.base.atomic import atomic_path
from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.detect.checkpoint import ModelSpec
from pipeline_lib.detect.runtimes import Normalised
from pipeline_lib.detect.tflm import capture_fd

log = logging.getLogger(__name__)

OPSET = 17


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The converters print progress and deprecation notes meant for their own developers,
    and log to the root logger (jax looks for a TPU): keep all that out of the stage log."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            capture_fd(2) as native,  # absl/oneDNN lines from the converter's C++ core
        ):
            warnings.simplefilter("ignore")
            try:
                yield
            except Exception:
                log.debug("converter output:\n%s", "".join(native))
                raise
    finally:
        root.setLevel(level)


def quantize_pt2e(model: nn.Module, frames: int, bins: int, representative: np.ndarray) -> Any:
    """The PT2E-quantised graph of ``model`` (input: normalised (1, 1, frames, bins)).

    ``representative`` holds normalised windows (n, frames, bins); each is run once through
    the observers. ``fold_quantize`` stays off: litert-torch lowers the explicit
    quantize/dequantize pairs, not pre-folded int8 constants.
    """
    example = (torch.zeros(1, 1, frames, bins),)
    with _quiet():
        from litert_torch.quantize import pt2e_quantizer
        from torchao.quantization.pt2e import quantize_pt2e as qpt2e

        graph = torch.export.export(model.eval(), example).module()
        quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
            pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)
        )
        prepared = qpt2e.prepare_pt2e(graph, quantizer)
        with torch.no_grad():
            for window in representative:
                prepared(torch.from_numpy(np.ascontiguousarray(window, np.float32))[None, None])
        return qpt2e.convert_pt2e(prepared, fold_quantize=False), quantizer


def to_tflite(quantized: Any, quantizer: Any, frames: int, bins: int, path: Path) -> Path:
    """Full-integer TFLite (int8 input and output) of a PT2E graph; written atomically."""
    import litert_torch
    from litert_torch.quantize.quant_config import QuantConfig

    example = (torch.zeros(1, 1, frames, bins),)
    try:
        with _quiet():
            edge = litert_torch.convert(
                quantized, example, quant_config=QuantConfig(pt2e_quantizer=quantizer)
            )
    except Exception as exc:  # the converter raises plain Exceptions with MLIR text
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SoundopsError(f"TFLite conversion failed: {first}") from None
    with atomic_path(path) as tmp, _quiet():
        edge.export(str(tmp))
        _strip_names(tmp)
    return path


def _strip_names(path: Path) -> None:
    """Drop the tensor and subgraph names and the signature from a TFLite file.

    The converter names every tensor after the torch module path that made it
    (``pipeline_lib.detect.models.dscnn.DSCNN/...``): about a quarter of a DS-CNN's
    file, flash a microcontroller pays for and TFLite Micro never reads, and a file whose
    bytes change when the library's modules move. Inputs and outputs stay addressed by
    index, as TFLite Micro and ESPHome's micro_wake_word address them."""
    from ai_edge_litert.tools import flatbuffer_utils as fb

    model = fb.read_model(str(path))
    fb.strip_strings(model)
    fb.write_model(model, str(path))


def _register_qdq_symbolics() -> None:
    """ONNX symbolics for PT2E's quantize/dequantize ops (opset 17 QuantizeLinear et al.)."""
    import torch.onnx.symbolic_helper as sh
    from torch.onnx import register_custom_op_symbolic  # type: ignore[attr-defined]

    def const(g: Any, value: Any, kind: str, dtype: torch.dtype) -> Any:
        return g.op(
            "Constant",
            value_t=torch.tensor(
                sh._get_const(  # type: ignore[no-untyped-call]
                    value, kind, "q"
                ),
                dtype=dtype,
            ),
        )

    def q_tensor(g: Any, x: Any, scale: Any, zp: Any, *_: Any) -> Any:
        return g.op(
            "QuantizeLinear", x, const(g, scale, "f", torch.float32), const(g, zp, "i", torch.int8)
        )

    def dq_tensor(g: Any, x: Any, scale: Any, zp: Any, *_: Any) -> Any:
        return g.op(
            "DequantizeLinear",
            x,
            const(g, scale, "f", torch.float32),
            const(g, zp, "i", torch.int8),
        )

    def per_channel(op: str) -> Any:
        def symbolic(g: Any, x: Any, scales: Any, zps: Any, axis: Any, *_: Any) -> Any:
            zp = g.op("Cast", zps, to_i=3)  # ONNX INT8
            ax = sh._get_const(axis, "i", "axis")  # type: ignore[no-untyped-call]
            return g.op(op, x, scales, zp, axis_i=ax)

        return symbolic

    ns = "quantized_decomposed::"
    register_custom_op_symbolic(ns + "quantize_per_tensor", q_tensor, OPSET)
    register_custom_op_symbolic(ns + "dequantize_per_tensor", dq_tensor, OPSET)
    register_custom_op_symbolic(ns + "quantize_per_channel", per_channel("QuantizeLinear"), OPSET)
    register_custom_op_symbolic(
        ns + "dequantize_per_channel", per_channel("DequantizeLinear"), OPSET
    )


def to_onnx_qdq(
    quantized: Any, spec: ModelSpec, path: Path, metadata: dict[str, str] | None = None
) -> Path:
    """The PT2E graph as QDQ ONNX taking raw features (n, frames, bins); atomic.

    Call after :func:`to_tflite`: this switches the exported graph to eval behaviour for
    tracing, which the TFLite lowering must not see.
    """
    import onnx
    from torchao.quantization.pt2e import (
        allow_exported_model_train_eval,
        move_exported_model_to_eval,
    )

    _register_qdq_symbolics()
    move_exported_model_to_eval(quantized)
    allow_exported_model_train_eval(quantized)
    wrapper = Normalised(quantized, spec)  # raw (n, frames, bins) in, as FP32 ONNX
    with atomic_path(path) as tmp, _quiet():
        for dynamic in (True, False):
            torch.onnx.export(
                wrapper,
                (torch.zeros(1, spec.frames, spec.bins),),
                str(tmp),
                dynamo=False,
                input_names=["features"],
                output_names=["logits"],
                dynamic_axes={"features": {0: "n"}, "logits": {0: "n"}} if dynamic else None,
                opset_version=OPSET,
            )
            # The graph was exported for batch 1; a model that reshapes with its batch size
            # keeps it, and then the file says so (fixed batch 1) instead of failing later.
            if not dynamic or _runs_batched(tmp, spec):
                break
        proto = onnx.load(str(tmp))
        for key, value in (metadata or {}).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
    return path


def _runs_batched(path: Path, spec: ModelSpec) -> bool:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    try:
        session.run(None, {"features": np.zeros((2, spec.frames, spec.bins), np.float32)})
    except Exception:  # onnxruntime raises its own untyped errors
        return False
    return True
