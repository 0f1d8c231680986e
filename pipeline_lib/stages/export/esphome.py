"""The exported INT8 model rebuilt as a streaming model ESPHome's ``micro_wake_word`` runs.

microWakeWord's convention, which ESPHome and ``pymicro-wakeword`` load: one invoke takes
``stride`` int8 micro_speech frames (``[1, stride, 40]``, scale 26/255, zero point -128, as
the firmware quantises its front end's output), keeps what later invokes need in TFLite
resource variables (``VAR_HANDLE``/``READ_VARIABLE``/``ASSIGN_VARIABLE``, set to zero once by
a ``CALL_ONCE`` subgraph), and returns one uint8 probability (scale 1/256).

The streaming graph is written from the whole-window INT8 TFLite file, not re-quantised
from PyTorch: every convolution keeps its int8 weights, biases and output scales, so after
a window's worth of steps each layer's output equals, integer for integer, what the
whole-window model computes on the same window. Three places differ by design, each by at
most a rounding step: the first convolution absorbs the per-bin normalisation (the
firmware feeds raw features), the two-logit head becomes one logit difference (the event
probability is a logistic of it), and the uint8 output is the logistic's rounding. The
parity checks in the export stage measure what that costs.

Only architectures whose layers stream exactly are accepted (``stream_dscnn``): valid
convolutions over time, a stride only in the first, and an average over the whole window.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline_lib.base.atomic import atomic_path
from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.detect.checkpoint import ModelSpec

log = logging.getLogger(__name__)

# ESPHome's micro_wake_word registers exactly these ops for a streaming model
# (MicroWakeWord::register_streaming_ops_, a MicroMutableOpResolver<20>); a model using any
# other op fails to load on the device.
ESPHOME_OPS = frozenset(
    {
        "CALL_ONCE", "VAR_HANDLE", "RESHAPE", "READ_VARIABLE", "STRIDED_SLICE",
        "CONCATENATION", "ASSIGN_VARIABLE", "CONV_2D", "MUL", "ADD", "MEAN",
        "FULLY_CONNECTED", "LOGISTIC", "QUANTIZE", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D",
        "MAX_POOL_2D", "PAD", "PACK", "SPLIT_V",
    }
)  # fmt: skip
INPUT_SCALE = 26.0 / 255.0  # ESPHome: int8 = feature * 256 / 666 - 128 (666 = 25.6 * 26)
INPUT_ZERO_POINT = -128
OUTPUT_SCALE = 1.0 / 256.0
MAX_VARIABLES = 20  # ESPHome creates MicroResourceVariables for at most 20
STREAMABLE_ARCHS = ("stream_dscnn",)

_VERSIONS = {  # operator versions as microWakeWord's own models declare them
    "CALL_ONCE": 1, "VAR_HANDLE": 1, "RESHAPE": 1, "READ_VARIABLE": 1, "ASSIGN_VARIABLE": 1,
    "CONCATENATION": 2, "STRIDED_SLICE": 2, "CONV_2D": 3, "DEPTHWISE_CONV_2D": 3,
    "AVERAGE_POOL_2D": 2, "FULLY_CONNECTED": 4, "LOGISTIC": 2, "QUANTIZE": 1,
}  # fmt: skip


def unstreamable_reason(spec: ModelSpec) -> str | None:
    """Why ``spec``'s model has no ESPHome form, or None when it has one."""
    if spec.arch not in STREAMABLE_ARCHS:
        return (
            f"model.arch {spec.arch} does not stream (convolutions padded in time, or pooling "
            f"that is not over the window); use {' or '.join(STREAMABLE_ARCHS)}"
        )
    if len(spec.classes) != 2:
        return f"task.classes has {len(spec.classes)} classes; a wake-word model has 2"
    if spec.features.get("front_end") != "micro" or spec.bins != 40 or spec.rate != 16000:
        return "features.front_end must be micro (40 channels at 16 kHz), as ESPHome computes"
    return None


@dataclass(frozen=True)
class StreamingModel:
    """What the export stage states about the streaming file."""

    stride: int  # feature frames per invoke
    window_frames: int  # frames one output depends on (the whole-window model's input)
    variables: int
    state_bytes: int
    ops: tuple[str, ...]


def _schema() -> Any:
    from ai_edge_litert import schema_py_generated as schema

    return schema


def op_names(path: Path) -> set[str]:
    """Builtin operator names a TFLite file uses."""
    from ai_edge_litert.tools import flatbuffer_utils as fb

    schema = _schema()
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = fb.read_model(str(path))
    return {names[max(c.builtinCode, c.deprecatedBuiltinCode)] for c in model.operatorCodes}


class _Builder:
    """A two-subgraph TFLite model (main, and the CALL_ONCE initialiser) built op by op."""

    def __init__(self) -> None:
        s = _schema()
        self.s = s
        self.model = s.ModelT()
        self.model.version = 3
        self.model.description = b"soundops streaming model"
        self.model.buffers = [s.BufferT()]
        self.model.operatorCodes = []
        self.main = self._subgraph(b"main")
        self.init = self._subgraph(b"init")
        self.model.subgraphs = [self.main, self.init]
        self.codes: dict[str, int] = {}
        self.buffer_of: dict[bytes, int] = {}
        self.state_bytes = 0
        self.variables = 0

    def _subgraph(self, name: bytes) -> Any:
        g = self.s.SubGraphT()
        g.tensors, g.operators, g.inputs, g.outputs, g.name = [], [], [], [], name
        return g

    def tensor(
        self,
        g: Any,
        shape: list[int],
        ttype: str,
        quant: tuple[list[float], list[int]] | None = None,
        data: np.ndarray | None = None,
        axis: int = 0,
    ) -> int:
        t = self.s.TensorT()
        t.shape = np.asarray(shape, np.int32)
        t.type = getattr(self.s.TensorType, ttype)
        t.buffer = 0
        if data is not None:
            raw = np.ascontiguousarray(data).tobytes()
            if raw not in self.buffer_of:  # identical constants (the zeroed states) share one
                b = self.s.BufferT()
                b.data = np.frombuffer(raw, np.uint8)
                self.model.buffers.append(b)
                self.buffer_of[raw] = len(self.model.buffers) - 1
            t.buffer = self.buffer_of[raw]
        if quant is not None:
            q = self.s.QuantizationParametersT()
            q.scale = [float(v) for v in quant[0]]
            q.zeroPoint = [int(v) for v in quant[1]]
            q.quantizedDimension = axis
            t.quantization = q
        g.tensors.append(t)
        return len(g.tensors) - 1

    def op(
        self, g: Any, name: str, inputs: list[int], outputs: list[int], options: Any = None
    ) -> None:
        if name not in self.codes:
            code = self.s.OperatorCodeT()
            value = getattr(self.s.BuiltinOperator, name)
            code.builtinCode = value
            code.deprecatedBuiltinCode = min(value, 127)
            code.version = _VERSIONS.get(name, 1)
            self.model.operatorCodes.append(code)
            self.codes[name] = len(self.model.operatorCodes) - 1
        o = self.s.OperatorT()
        o.opcodeIndex = self.codes[name]
        o.inputs, o.outputs = list(inputs), list(outputs)
        if options is not None:
            kind = type(options).__name__.removesuffix("T")
            o.builtinOptionsType = getattr(self.s.BuiltinOptions, kind)
            o.builtinOptions = options
        g.operators.append(o)

    def const_i32(self, values: list[int]) -> int:
        return self.tensor(self.main, [len(values)], "INT32", data=np.asarray(values, np.int32))

    def ring(self, cur: int, steps_in: int, keep: int, channels: int, quant: Any) -> int:
        """Concatenate the last ``keep`` steps (a resource variable) before ``cur`` and
        store the newest ``keep`` steps back; returns the concatenated tensor."""
        s, g = self.s, self.main
        name = f"state_{self.variables}".encode()
        self.variables += 1
        self.state_bytes += keep * channels
        handle_opts = s.VarHandleOptionsT()
        handle_opts.sharedName = name
        handle = self.tensor(g, [], "RESOURCE")
        self.op(g, "VAR_HANDLE", [], [handle], handle_opts)
        state = self.tensor(g, [1, keep, 1, channels], "INT8", quant)
        self.op(g, "READ_VARIABLE", [handle], [state])
        cat = self.tensor(g, [1, keep + steps_in, 1, channels], "INT8", quant)
        cat_opts = s.ConcatenationOptionsT()
        cat_opts.axis = 1
        self.op(g, "CONCATENATION", [state, cur], [cat], cat_opts)
        newest = self.tensor(g, [1, keep, 1, channels], "INT8", quant)
        begin = self.const_i32([0, steps_in, 0, 0])
        end = self.const_i32([1, keep + steps_in, 1, channels])
        strides = self.const_i32([1, 1, 1, 1])
        self.op(g, "STRIDED_SLICE", [cat, begin, end, strides], [newest], s.StridedSliceOptionsT())
        self.op(g, "ASSIGN_VARIABLE", [handle, newest], [])
        # the initialiser: the same variable, set to real zero once
        ig = self.init
        init_opts = s.VarHandleOptionsT()
        init_opts.sharedName = name
        ih = self.tensor(ig, [], "RESOURCE")
        self.op(ig, "VAR_HANDLE", [], [ih], init_opts)
        zp = int(quant[1][0])
        zeros = self.tensor(
            ig, [1, keep, 1, channels], "INT8", quant, np.full((keep, channels), zp, np.int8)
        )
        self.op(ig, "ASSIGN_VARIABLE", [ih, zeros], [])
        return cat


def _read(model: Any, g: Any, index: int) -> tuple[Any, np.ndarray | None]:
    t = g.tensors[index]
    data = model.buffers[t.buffer].data
    if data is None or len(data) == 0:
        return t, None
    dtype = {9: np.int8, 2: np.int32, 3: np.uint8}[int(t.type)]
    return t, np.frombuffer(bytes(bytearray(data)), dtype).reshape([int(v) for v in t.shape])


def _quant(t: Any) -> tuple[list[float], list[int]]:
    q = t.quantization
    return [float(v) for v in q.scale], [int(v) for v in q.zeroPoint]


def _per_channel(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 of float weights (first axis): values, scales.
    A channel of zeros gets scale 1, so its bias (quantized at input scale x this) stays
    inside int32."""
    flat = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    scales = np.where(flat > 0, flat / 127.0, 1.0)
    shape = (-1,) + (1,) * (w.ndim - 1)
    q = np.clip(np.round(w / scales.reshape(shape)), -127, 127).astype(np.int8)
    return q, scales


def build_streaming(whole: Path, spec: ModelSpec, temperature: float, path: Path) -> StreamingModel:
    """Write the streaming form of the whole-window INT8 file ``whole``; atomic.

    ``temperature`` is the calibration's: the device's probability is the one the
    calibrated threshold applies to."""
    from ai_edge_litert.tools import flatbuffer_utils as fb

    reason = unstreamable_reason(spec)
    if reason:
        raise SoundopsError(f"export: no ESPHome model: {reason}.")
    src = fb.read_model(str(whole))
    s = _schema()
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    g = src.subgraphs[0]
    ops = [
        (names[max(src.operatorCodes[o.opcodeIndex].builtinCode,
                   src.operatorCodes[o.opcodeIndex].deprecatedBuiltinCode)], o)
        for o in g.operators
    ]  # fmt: skip
    b = _Builder()
    mean = np.asarray(spec.norm_mean, np.float64)
    std = np.asarray(spec.norm_std, np.float64)
    if not ops or ops[0][0] != "RESHAPE":
        raise SoundopsError(f"{whole}: expected the input reshape first, found {ops[0][0]}.")
    stride = 0
    in_q = ([INPUT_SCALE], [INPUT_ZERO_POINT])
    cur, steps, channels, q_cur = -1, 0, spec.bins, in_q
    for k, (name, o) in enumerate(ops[1:], start=1):
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            wt, w = _read(src, g, o.inputs[1])
            bt, bias = _read(src, g, o.inputs[2])
            out_t = g.tensors[o.outputs[0]]
            opts = o.builtinOptions
            if w is None or bias is None or int(w.shape[2]) != 1:
                raise SoundopsError(f"{whole}: op {k} ({name}) is not a convolution over time.")
            kh = int(w.shape[1])
            if k == 1:  # the first layer: takes the device's raw int8 frames
                stride = int(opts.strideH)
                if name != "CONV_2D" or kh < stride:
                    raise SoundopsError(f"{whole}: the first layer cannot take {stride} frames.")
                wf = w.astype(np.float64) * np.asarray(_quant(wt)[0])[:, None, None, None]
                bf = bias.astype(np.float64) * np.asarray(_quant(bt)[0])
                w_raw = wf / std[None, None, None, :]
                b_raw = bf - (wf * (mean / std)[None, None, None, :]).sum(axis=(1, 2, 3))
                qw, sw = _per_channel(w_raw)
                qb = np.round(b_raw / (INPUT_SCALE * sw)).astype(np.int32)
                inp = b.tensor(b.main, [1, stride, spec.bins], "INT8", in_q)
                b.main.inputs = [inp]
                shaped = b.tensor(b.main, [1, stride, 1, spec.bins], "INT8", in_q)
                ro = s.ReshapeOptionsT()
                ro.newShape = [1, stride, 1, spec.bins]
                b.op(b.main, "RESHAPE", [inp, b.const_i32([1, stride, 1, spec.bins])], [shaped], ro)
                cur, steps = shaped, stride
                weights = b.tensor(b.main, list(w.shape), "INT8", (list(sw), [0] * len(sw)), qw)
                biases = b.tensor(b.main, [len(qb)], "INT32", data=qb)
            else:
                if int(opts.strideH) != 1 and kh > 1:
                    raise SoundopsError(f"{whole}: op {k} ({name}) strides in time.")
                weights = b.tensor(
                    b.main, list(w.shape), "INT8", _quant(wt), w, wt.quantization.quantizedDimension
                )
                biases = b.tensor(b.main, list(bias.shape), "INT32", data=bias)
            # no quantization on the biases: int8 CONV_2D and DEPTHWISE_CONV_2D take the
            # bias as int32 at input scale x filter scale and never read its parameters
            # (TFLite's PopulateConvolutionQuantizationParams), and nine per-channel tables
            # of 64 float scales and 64 int64 zero points would cost 6.9 KB of the 64 KB
            if kh > steps:
                cur = b.ring(cur, steps, kh - steps, channels, q_cur)
            if kh < steps:
                raise SoundopsError(f"{whole}: op {k} ({name}) drops frames between invokes.")
            out_ch = int(out_t.shape[3])
            q_out = _quant(out_t)
            out = b.tensor(b.main, [1, 1, 1, out_ch], "INT8", q_out)
            opts.strideH, opts.strideW, opts.padding = 1, 1, s.Padding.VALID
            b.op(b.main, name, [cur, weights, biases], [out], opts)
            cur, steps, channels, q_cur = out, 1, out_ch, q_out
        elif name == "AVERAGE_POOL_2D":
            opts = o.builtinOptions
            in_t = g.tensors[o.inputs[0]]
            if int(opts.filterHeight) != int(in_t.shape[1]) or int(opts.filterWidth) != 1:
                raise SoundopsError(f"{whole}: op {k} (AVERAGE_POOL_2D) is not over the window.")
            cur = b.ring(cur, steps, int(opts.filterHeight) - 1, channels, q_cur)
            q_out = _quant(g.tensors[o.outputs[0]])
            out = b.tensor(b.main, [1, 1, 1, channels], "INT8", q_out)
            opts.strideH, opts.strideW = 1, 1
            b.op(b.main, name, [cur], [out], opts)
            cur, q_cur = out, q_out
        elif name == "QUANTIZE":
            q_out = _quant(g.tensors[o.outputs[0]])
            out = b.tensor(b.main, [1, 1, 1, channels], "INT8", q_out)
            b.op(b.main, name, [cur], [out])
            cur, q_cur = out, q_out
        elif name == "FULLY_CONNECTED" and k == len(ops) - 1:
            cur = _head(b, src, g, o, cur, q_cur, temperature)
        else:
            raise SoundopsError(f"{whole}: op {k} ({name}) has no streaming form here.")
    if b.variables > MAX_VARIABLES:
        raise SoundopsError(f"export: {b.variables} state buffers; ESPHome allows {MAX_VARIABLES}.")
    call = s.CallOnceOptionsT()
    call.initSubgraphIndex = 1
    b.op(b.main, "CALL_ONCE", [], [], call)
    b.main.operators.insert(0, b.main.operators.pop())  # the initialiser runs first
    b.main.outputs = [cur]
    with atomic_path(path) as tmp:
        fb.write_model(b.model, str(tmp))
    return StreamingModel(
        stride=stride,
        window_frames=spec.frames,
        variables=b.variables,
        state_bytes=b.state_bytes,
        ops=tuple(sorted(op_names(path))),
    )


def _head(b: _Builder, src: Any, g: Any, o: Any, cur: int, q_in: Any, temperature: float) -> int:
    """Two logits -> one uint8 probability: FC on the logit difference, logistic, uint8."""
    wt, w = _read(src, g, o.inputs[1])
    if w is None or w.shape[0] != 2:
        raise SoundopsError("export: the model's head is not a two-class linear layer.")
    wf = w.astype(np.float64) * np.asarray(_quant(wt)[0])[:, None]
    bf = np.zeros(2)
    if len(o.inputs) > 2 and o.inputs[2] >= 0:  # the converter drops an all-zero bias
        bt, bias = _read(src, g, o.inputs[2])
        if bias is not None:
            bf = bias.astype(np.float64) * np.asarray(_quant(bt)[0])
    wd = (wf[1] - wf[0])[None] / temperature
    bd = (bf[1] - bf[0]) / temperature
    qw, sw = _per_channel(wd)
    s_in = q_in[0][0]
    qb = np.round(np.asarray([bd]) / (s_in * sw)).astype(np.int32)
    out_t = g.tensors[o.outputs[0]]
    # the difference spans twice a logit's range; beyond +-8 the uint8 logistic saturates,
    # so a finer step there costs nothing and rounds the steep middle less
    s_logit = min(_quant(out_t)[0][0] * 2.0 / temperature, 8.0 / 127.0)
    weights = b.tensor(b.main, [1, int(w.shape[1])], "INT8", (list(sw), [0]), qw)
    biases = b.tensor(b.main, [1], "INT32", ([s_in * float(sw[0])], [0]), qb)
    diff = b.tensor(b.main, [1, 1], "INT8", ([s_logit], [0]))
    fo = b.s.FullyConnectedOptionsT()
    b.op(b.main, "FULLY_CONNECTED", [cur, weights, biases], [diff], fo)
    prob8 = b.tensor(b.main, [1, 1], "INT8", ([OUTPUT_SCALE], [-128]))
    b.op(b.main, "LOGISTIC", [diff], [prob8])
    prob = b.tensor(b.main, [1, 1], "UINT8", ([OUTPUT_SCALE], [0]))
    b.op(b.main, "QUANTIZE", [prob8], [prob])
    return prob
