"""The export stage's parity gates as a check on its metrics document, shared by export
(which fails the stage) and the registry (which refuses to promote a version that failed)."""

from __future__ import annotations

from pipeline_lib.artifacts.documents import EsphomeDoc, RuntimeParity, StepAgreement
from pipeline_lib.base.params import Params


def _n(value: float | None) -> float:
    # a figure the split cannot measure (no positives: JSON null) fails no gate
    return float("nan") if value is None else value


def _rate_failures(
    params: Params,
    who: str,
    ref: str,
    fah: float | None,
    fah_lo: float | None,
    ref_fah: float | None,
    fah_increase: float | None,
    hours: float,
    recalls: tuple[float | None, float | None, float | None],
) -> list[str]:
    """The FAH and recall gates of one model against its reference on the same audio."""
    g = params.export.gates
    failed = []
    f, rf = _n(fah), _n(ref_fah)
    # an increase counts when it is more than chance: the rate's 95% lower bound above the
    # reference's rate plus the margin (one extra false alarm in TFLite Micro's 10 minutes
    # is 6 FAH, and evidence of nothing), as the field monitor decides
    lower = f if fah_lo is None else fah_lo
    if _n(fah_increase) > g.max_fah_increase and lower > rf + g.max_fah_increase:
        failed.append(
            f"{who} FAH {f:.2f} (95% lower bound {lower:.2f}) vs {ref} {rf:.2f} over "
            f"{hours:.2f} h (> export.gates.max_fah_increase {g.max_fah_increase} beyond chance)"
        )
    recall, ref_recall, drop = recalls
    if _n(drop) > g.max_recall_drop:
        failed.append(
            f"{who} recall {_n(recall):.4f} vs {ref} {_n(ref_recall):.4f} (drop "
            f"{_n(drop):.4f} > export.gates.max_recall_drop {g.max_recall_drop})"
        )
    return failed


def parity_gate_failures(
    params: Params, runtimes: dict[str, RuntimeParity], steps: StepAgreement
) -> list[str]:
    g = params.export.gates
    failed = []
    for name, r in runtimes.items():
        failed += _rate_failures(
            params, name, "FP32", r.fah, r.fah_lo, r.fp32_fah, r.fah_increase, r.hours,
            (r.recall, r.fp32_recall, r.recall_drop),
        )  # fmt: skip
        if r.decision_agreement < g.min_decision_agreement:
            failed.append(
                f"{name} decision agreement {r.decision_agreement:.4f} < "
                f"export.gates.min_decision_agreement {g.min_decision_agreement}"
            )
    if steps.mean_steps > g.max_tflm_onnx_mean_steps:
        failed.append(
            f"TFLite Micro and onnxruntime INT8 differ by {steps.mean_steps:.2f} output "
            f"steps on average over {steps.windows} windows (at most {steps.max_steps}) "
            f"> export.gates.max_tflm_onnx_mean_steps {g.max_tflm_onnx_mean_steps}"
        )
    return failed


def esphome_gate_failures(params: Params, doc: EsphomeDoc) -> list[str]:
    """The ESPHome model against the whole-window INT8 model: the same FAH and recall gates
    as INT8 against FP32, and a bound on how far its probabilities are from the model's."""
    g = params.export.gates
    d = doc.device
    failed = _rate_failures(
        params, "ESPHome model (pymicro-wakeword)", "whole-window INT8", d.fah, d.fah_lo,
        d.whole_fah, d.fah_increase, d.hours, (d.recall, d.whole_recall, d.recall_drop),
    )  # fmt: skip
    s = doc.vs_whole_window
    if s.mean_steps > g.max_stream_mean_steps:
        failed.append(
            f"the streaming model's probability is {s.mean_steps:.2f} uint8 steps from the "
            f"whole-window model's on average over {s.windows} windows "
            f"> export.gates.max_stream_mean_steps {g.max_stream_mean_steps}"
        )
    return failed
