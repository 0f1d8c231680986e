"""The metric documents later steps read, typed: ``metrics/evaluate.json`` and
``metrics/export.json``. The stage that writes one builds it through its model, and the
registry, the export stage's model card and the CLI read it back through the same model,
so a figure has one name from the stage to the MLflow key and a renamed or missing key
fails where it is written, not three readers later. A figure a small split cannot
measure is ``None`` (JSON null)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline_lib.base.atomic import write_json
from pipeline_lib.base.errors import SoundopsError

Num = float | None


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


D = TypeVar("D", bound=_Doc)


class Rate(_Doc):
    """False alarms over hours of target-free audio, with the rate's 95% interval."""

    false_alarms: int
    hours: float
    fah: Num
    fah_lo: Num
    fah_hi: Num


class OperatingPoint(Rate):
    """The calibrated preset on the test audio: its rate, and recall of inserted positives."""

    preset: str
    threshold: float
    smoothing: int
    refractory_s: float
    positives: int
    recall: Num
    recall_lo: Num
    recall_hi: Num
    stray_detections: int
    latency_median_s: Num
    latency_p90_s: Num


class FrrAtFah(_Doc):
    """The miss rate at the threshold where the test background reaches a FAH (DET)."""

    threshold: Num
    fah: Num
    frr: Num


class FahAtRecall(_Doc):
    """The FAH at the threshold where recall reaches a target (models at equal recall)."""

    threshold: Num
    fah: Num
    recall: Num


class AtThreshold(Rate):
    recall: Num


class Headline(_Doc):
    """What the test positives are (synthetic or real), said before any figure."""

    positives: str
    text: str
    real_target_sets: list[str]
    synthetic_positives: int
    test_positives: int


class EvaluateDoc(_Doc):
    """``metrics/evaluate.json``."""

    headline: Headline
    operating_point: OperatingPoint
    clips: dict[str, Any]  # clip-level figures (ROC-AUC, EER, pAUC, per class)
    frr_at_fah: dict[str, FrrAtFah]  # keyed by the FAH, as in evaluate.fah_targets
    fah_at_recall: dict[str, FahAtRecall]
    fah_at_threshold: dict[str, AtThreshold]
    fah_by_source: dict[str, Rate]
    extra: dict[str, dict[str, Any]]  # per evaluate.extra set: streams or clips figures


class RuntimeParity(Rate):
    """One INT8 runtime against FP32 on the same background and positives."""

    windows: int
    recall: Num
    decision_agreement: float
    max_score_diff: float
    mean_score_diff: float
    fah_increase: Num
    recall_drop: Num
    fp32_false_alarms: int
    fp32_hours: float
    fp32_fah: Num
    fp32_fah_lo: Num
    fp32_fah_hi: Num
    fp32_recall: Num
    # the positives behind the recall drop, paired (parity_gates.paired_counts); None in export
    # documents written before they were recorded, whose gate is the bare drop
    positives: int | None = None
    positives_lost: int | None = None
    positives_gained: int | None = None


class StepAgreement(_Doc):
    """TFLite Micro vs onnxruntime INT8, in output quantisation steps per window."""

    windows: int
    max_steps: int
    mean_steps: float
    within_one_step: float
    histogram: list[Any]


class Parity(_Doc):
    clips: dict[str, Any]  # test clips: their count, and per runtime agreement, ROC-AUC
    runtimes: dict[str, RuntimeParity]
    tflm_vs_onnx: StepAgreement


class StreamSteps(_Doc):
    """The streaming model in TFLite Micro against the whole-window INT8 model on the same
    windows, in steps of the device's uint8 probability (1/256)."""

    windows: int
    max_steps: int
    mean_steps: float
    within_one_step: float
    decision_agreement: float


class DeviceRate(Rate):
    """The ESPHome model run by pymicro-wakeword from its manifest (sliding mean, cutoff),
    against the whole-window INT8 model with the calibrated rule, on the same audio."""

    recall: Num
    whole_fah: Num
    whole_recall: Num
    fah_increase: Num
    recall_drop: Num
    positives: int | None = None  # as in RuntimeParity, against the whole-window model
    positives_lost: int | None = None
    positives_gained: int | None = None


ESPHOME_DIR = "esphome"  # the pair's folder in the export folder (written there, released)


class EsphomeDoc(_Doc):
    """The ESPHome ``micro_wake_word`` pair: ``esphome/<name>.json`` and ``.tflite``."""

    wake_word: str
    manifest: str  # path inside the export folder
    tflite_bytes: int
    arena_bytes: int  # measured by TensorFlow Lite Micro
    tensor_arena_size: int  # in the manifest: measured plus export.arena_margin_bytes
    stride: int
    probability_cutoff: float
    sliding_window_size: int
    variables: int
    ops: list[str]
    vs_whole_window: StreamSteps
    device: DeviceRate


class TargetFit(_Doc):
    fits: bool
    ram_bytes: int
    flash_bytes: int
    latency_ms_estimate: float


class ExportDoc(_Doc):
    """``metrics/export.json``."""

    tflite_bytes: int
    onnx_int8_bytes: int
    onnx_fp32_bytes: int
    arena_bytes: int  # measured by TensorFlow Lite Micro, before export.arena_margin_bytes
    param_count: int
    macs: int
    parity: Parity
    targets: dict[str, TargetFit]
    esphome: EsphomeDoc | None  # None when the model cannot stream (esphome_skipped says why)
    esphome_skipped: str | None


def load_doc(path: Path, kind: type[D], stage: str) -> D:
    """Read a metrics document; a missing one says which stage writes it, a stale or
    hand-edited one names its first bad key."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SoundopsError(f"{path}: not found; run the {stage} stage first.") from None
    except (OSError, ValueError) as exc:
        raise SoundopsError(f"{path}: cannot read it as JSON ({exc}).") from None
    try:
        return kind.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise SoundopsError(
            f"{path}: key '{key}': {err['msg']}; rerun the {stage} stage (dvc repro {stage})."
        ) from None


def write_doc(path: Path, doc: _Doc) -> None:
    write_json(path, doc.model_dump(mode="json"))
