"""Window scorers: one interface over the PyTorch model folder and an exported ONNX file.

A scorer turns raw front-end windows ``(n, frames, bins)`` into logits. Both kinds carry
the model spec (front end, window, classes, normalisation), so the streaming detector can
run either on audio without knowing which it has. ONNX files written by
:func:`export_onnx` hold the spec, and the calibration when given, in their metadata, so an
exported file is self-describing on a machine that has no project checkout.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from pipeline_lib.base.atomic import atomic_path
from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.threads import current as compute_threads
from pipeline_lib.detect.checkpoint import ModelSpec, load_model, logits

log = logging.getLogger(__name__)

SPEC_KEY = "soundops.spec"
CALIBRATION_KEY = "soundops.calibration"


class Scorer(Protocol):
    spec: ModelSpec
    name: str
    calibration: dict[str, Any] | None

    def logits(self, windows: np.ndarray) -> np.ndarray:
        """Logits of raw (un-normalised) feature windows, (n, frames, bins) -> (n, classes)."""
        ...


class TorchScorer:
    """A trained model folder (``model.safetensors`` + ``spec.json``), run on CPU."""

    def __init__(self, model: nn.Module, spec: ModelSpec, name: str = "torch") -> None:
        self.model, self.spec, self.name = model, spec, name
        self.calibration: dict[str, Any] | None = None

    def logits(self, windows: np.ndarray) -> np.ndarray:
        return logits(self.model, windows, self.spec)


class Normalised(nn.Module):
    """Normalisation inside the graph: the exported file takes front-end output as is."""

    def __init__(self, model: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.model = model
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(spec.norm_mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(spec.norm_std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(((x - self.mean) / self.std)[:, None])
        return out


def export_onnx(
    model: nn.Module, spec: ModelSpec, path: Path, calibration: dict[str, Any] | None = None
) -> Path:
    """FP32 ONNX of ``model`` taking raw features ``(n, frames, bins)``; written atomically."""
    import onnx

    wrapper = Normalised(model, spec).eval()
    example = torch.zeros(1, spec.frames, spec.bins)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter, on purpose
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
        torch.onnx.export(
            wrapper,
            (example,),
            str(tmp),
            dynamo=False,  # the TorchScript exporter needs no onnxscript and is deterministic
            input_names=["features"],
            output_names=["logits"],
            dynamic_axes={"features": {0: "n"}, "logits": {0: "n"}},
            opset_version=17,
        )
        proto = onnx.load(str(tmp))
        meta = {SPEC_KEY: json.dumps(asdict(spec), sort_keys=True)}
        if calibration is not None:
            meta[CALIBRATION_KEY] = json.dumps(calibration, sort_keys=True)
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
    return path


class OnnxScorer:
    """An exported ONNX model in onnxruntime (CPU), with its spec from the file's metadata."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or compute_threads()
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise SoundopsError(f"{path}: not a loadable ONNX model ({exc}).") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if SPEC_KEY not in meta:
            raise SoundopsError(
                f"{path}: ONNX file has no '{SPEC_KEY}' metadata; export it with soundops."
            )
        self.spec = ModelSpec(**json.loads(meta[SPEC_KEY]))
        self.calibration = json.loads(meta[CALIBRATION_KEY]) if CALIBRATION_KEY in meta else None
        self.name = f"onnx:{path.name}"
        inp = self.session.get_inputs()[0]
        self.input = inp.name
        # INT8 graphs of models that reshape with their batch size are fixed to batch 1
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None

    def logits(self, windows: np.ndarray, chunk: int = 512) -> np.ndarray:
        chunk = self.fixed_batch or chunk
        outs = []
        for i in range(0, len(windows), chunk):
            batch = np.ascontiguousarray(windows[i : i + chunk], dtype=np.float32)
            outs.append(self.session.run(None, {self.input: batch})[0])
        if not outs:
            return np.zeros((0, len(self.spec.classes)), np.float32)
        return np.concatenate(outs)


def load_scorer(path: Path) -> Scorer:
    """A model folder, an ``.onnx`` file, or an INT8 ``.tflite`` file with the export
    stage's ``device_manifest.json`` beside it (run in TensorFlow Lite Micro); a missing or
    unknown path is one sentence."""
    if path.is_dir():
        model, spec = load_model(path)
        return TorchScorer(model, spec, name=f"torch:{path.name}")
    if path.suffix.lower() == ".onnx" and path.is_file():
        return OnnxScorer(path)
    if path.suffix.lower() == ".tflite" and path.is_file():
        return _tflite_scorer(path)
    if not path.exists():
        raise SoundopsError(
            f"{path}: model not found (a model folder, an .onnx or a .tflite file)."
        )
    raise SoundopsError(f"{path}: not a model folder, an .onnx or a .tflite file.")


def _tflite_scorer(path: Path) -> Scorer:
    from pipeline_lib.detect.tflm import TflmScorer

    manifest_path = path.parent / "device_manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        spec = ModelSpec(**manifest["spec"])
        arena = int(manifest["arena_alloc_bytes"])
    except FileNotFoundError:
        raise SoundopsError(
            f"{path}: a .tflite model needs the device_manifest.json the export stage "
            "writes beside it."
        ) from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SoundopsError(f"{manifest_path}: not a soundops device manifest ({exc}).") from None
    scorer = TflmScorer(path, spec, arena)
    scorer.calibration = manifest.get("calibration")
    return scorer
