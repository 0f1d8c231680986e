"""The INT8 TFLite model in TensorFlow Lite Micro's own interpreter (the ``tflite-micro``
package): the kernels and memory planner the firmware links, run on the host.

:class:`TflmScorer` does what the firmware does with a window of front-end output:
normalise per bin, quantise with the input tensor's scale and zero point, invoke, and
dequantise the int8 logits. :func:`measure_arena` reads the tensor arena the interpreter's
recording allocator actually used, so the device manifest states a measured size.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.detect.checkpoint import ModelSpec

log = logging.getLogger(__name__)

_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")


@contextlib.contextmanager
def capture_fd(fd: int) -> Iterator[list[str]]:
    """Collect what C++ code writes to a file descriptor (TFLM's MicroPrintf goes to
    stderr), restoring it afterwards."""
    out: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield out
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", "replace"))


def _interpreter(path: Path, arena_size: int) -> Any:
    from tflite_micro.python.tflite_micro import runtime

    try:
        return runtime.Interpreter.from_file(str(path), arena_size=int(arena_size))
    except RuntimeError as exc:
        raise SoundopsError(
            f"{path}: TensorFlow Lite Micro cannot allocate it in {arena_size} bytes ({exc})."
        ) from None


def measure_arena(path: Path) -> int:
    """Tensor arena bytes the TFLM recording allocator used for one invoke of ``path``.

    The interpreter is created with a generous arena, run once, and its allocation record
    read; the figure is then checked by running the model in an arena of exactly that size.
    """
    generous = 65536 + 10 * path.stat().st_size  # an upper bound, then measured
    interp = _interpreter(path, generous)
    det = interp.get_input_details(0)
    interp.set_input(np.zeros(det["shape"], det["dtype"]), 0)
    interp.invoke()
    with capture_fd(1) as out, capture_fd(2) as err:
        interp.print_allocations()
    text = out + err
    match = _TOTAL.search("".join(text))
    if match is None:
        raise SoundopsError(f"{path}: TensorFlow Lite Micro printed no arena allocation total.")
    used = int(match.group(1))
    if runs_in(path, used):
        return used
    # A streaming model allocates its resource variables in the arena on its first invoke,
    # after the record was taken: the smallest arena that runs it twice is then the figure.
    lo, hi = used, generous
    if not runs_in(path, hi):
        raise SoundopsError(f"{path}: TensorFlow Lite Micro cannot run it in {hi} bytes.")
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if runs_in(path, mid) else (mid + 1, hi)
    return hi


# One probe of measure_arena, in a child process: TFLM's Python binding can crash the
# process (SIGSEGV) rather than raise when an arena is just too small to build the
# interpreter (a 64-channel stream_dscnn's ESPHome model did, at its recorded figure).
_PROBE = """
import sys
import numpy as np
from tflite_micro.python.tflite_micro import runtime
interp = runtime.Interpreter.from_file(sys.argv[1], arena_size=int(sys.argv[2]))
det = interp.get_input_details(0)
for _ in range(2):
    interp.set_input(np.zeros(det["shape"], det["dtype"]), 0)
    interp.invoke()
"""


def to_int8(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Affine int8 quantization of a model input, rounding and saturating as TFLite does."""
    q = np.round(values / scale) + zero_point
    out: np.ndarray = np.clip(q, -128, 127).astype(np.int8)
    return out


def runs_in(path: Path, arena: int, timeout_s: float = 300.0) -> bool:
    """Whether ``path`` builds and runs twice in ``arena`` bytes; a probe that fails,
    crashes or outlives ``timeout_s`` says no, and never takes this process with it."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, str(path), str(int(arena))],
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:  # a probe that hangs says no as well
        log.warning(
            "%s: TFLite Micro probe in %d bytes timed out after %.0f s", path, arena, timeout_s
        )
        return False
    return done.returncode == 0


class StreamingTflm:
    """A streaming model (microWakeWord's convention: ``[1, stride, 40]`` int8 frames in,
    one uint8 probability out, state in resource variables) in TFLite Micro, as ESPHome
    runs it."""

    def __init__(self, path: Path, arena_size: int) -> None:
        self.path, self.arena_size = path, arena_size
        interp = _interpreter(path, arena_size)
        inp, out = interp.get_input_details(0), interp.get_output_details(0)
        if inp["dtype"] is not np.int8 or out["dtype"] is not np.uint8:
            raise SoundopsError(f"{path}: not a streaming model (int8 frames in, uint8 out).")
        self.stride = int(inp["shape"][1])
        self.scale = float(inp["quantization_parameters"]["scales"][0])
        self.zero_point = int(inp["quantization_parameters"]["zero_points"][0])

    def quantize(self, feats: np.ndarray) -> np.ndarray:
        """Front-end output (frames, 40) as the firmware hands it to the model."""
        return to_int8(np.asarray(feats, np.float64), self.scale, self.zero_point)

    def probabilities(self, feats: np.ndarray) -> np.ndarray:
        """uint8 outputs of a fresh model over ``feats``, one per ``stride`` frames; output
        ``n`` has seen frames ``0 .. (n + 1) * stride - 1``."""
        interp = _interpreter(self.path, self.arena_size)
        q = self.quantize(feats)
        n = len(q) // self.stride
        out = np.empty(n, np.uint8)
        for i in range(n):
            interp.set_input(q[i * self.stride : (i + 1) * self.stride][None], 0)
            interp.invoke()
            out[i] = interp.get_output(0).reshape(-1)[0]
        return out


class TflmScorer:
    """Windows of raw front-end output through the INT8 TFLite model in TFLM, one by one."""

    def __init__(self, path: Path, spec: ModelSpec, arena_size: int) -> None:
        self.spec, self.name = spec, f"tflm:{path.name}"
        self.calibration: dict[str, Any] | None = None
        self.interp = _interpreter(path, arena_size)
        self.details = {
            "input": self.interp.get_input_details(0),
            "output": self.interp.get_output_details(0),
        }
        inp, out = self.details["input"], self.details["output"]
        self.in_shape = tuple(int(v) for v in inp["shape"])
        self.in_scale = float(inp["quantization_parameters"]["scales"][0])
        self.in_zp = int(inp["quantization_parameters"]["zero_points"][0])
        self.out_scale = float(out["quantization_parameters"]["scales"][0])
        self.out_zp = int(out["quantization_parameters"]["zero_points"][0])
        if inp["dtype"] is not np.int8 or out["dtype"] is not np.int8:
            raise SoundopsError(f"{path}: not a full-integer model (int8 input and output).")

    def io(self) -> dict[str, Any]:
        """Input/output tensors as the device manifest states them."""
        return {
            kind: {
                "shape": [int(v) for v in det["shape"]],
                "dtype": np.dtype(det["dtype"]).name,
                "scale": float(det["quantization_parameters"]["scales"][0]),
                "zero_point": int(det["quantization_parameters"]["zero_points"][0]),
            }
            for kind, det in self.details.items()
        }

    def quantize_input(self, windows: np.ndarray) -> np.ndarray:
        """Raw (n, frames, bins) -> int8, as the firmware computes it."""
        return to_int8(self.spec.normalise(windows), self.in_scale, self.in_zp)

    def int8_logits(self, windows: np.ndarray) -> np.ndarray:
        q = self.quantize_input(windows)
        out = np.empty((len(q), len(self.spec.classes)), np.int8)
        for i, window in enumerate(q):
            self.interp.set_input(window.reshape(self.in_shape), 0)
            self.interp.invoke()
            out[i] = self.interp.get_output(0).reshape(-1)
        return out

    def logits(self, windows: np.ndarray) -> np.ndarray:
        q = self.int8_logits(windows).astype(np.float32)
        result: np.ndarray = (q - self.out_zp) * self.out_scale
        return result
