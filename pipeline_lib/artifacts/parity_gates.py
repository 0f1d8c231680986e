"""The export stage's parity gates as a check on its metrics document, shared by export
(which fails the stage) and the registry (which refuses to promote a version that failed)."""

from __future__ import annotations

from pipeline_lib.artifacts.documents import EsphomeDoc, RuntimeParity, StepAgreement
from pipeline_lib.base.params import Params


def _n(value: float | None) -> float:
    # a figure the split cannot measure (no positives: JSON null) fails no gate
    return float("nan") if value is None else value


def parity_gate_failures(
    params: Params, runtimes: dict[str, RuntimeParity], steps: StepAgreement
) -> list[str]:
    g = params.export.gates
    failed = []
    for name, r in runtimes.items():
        fah, fp32_fah = _n(r.fah), _n(r.fp32_fah)
        # an increase counts when it is more than chance: the INT8 rate's 95% lower bound
        # above FP32's rate plus the margin (one extra false alarm in TFLite Micro's 10
        # minutes is 6 FAH, and evidence of nothing), as the field monitor decides
        lower = fah if r.fah_lo is None else r.fah_lo
        if _n(r.fah_increase) > g.max_fah_increase and lower > fp32_fah + g.max_fah_increase:
            failed.append(
                f"{name} FAH {fah:.2f} (95% lower bound {lower:.2f}) vs FP32 "
                f"{fp32_fah:.2f} over {r.hours:.2f} h "
                f"(> export.gates.max_fah_increase {g.max_fah_increase} beyond chance)"
            )
        if _n(r.recall_drop) > g.max_recall_drop:
            failed.append(
                f"{name} recall {_n(r.recall):.4f} vs FP32 {_n(r.fp32_recall):.4f} (drop "
                f"{_n(r.recall_drop):.4f} > export.gates.max_recall_drop {g.max_recall_drop})"
            )
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
    failed = []
    lower = _n(d.fah) if d.fah_lo is None else d.fah_lo
    if _n(d.fah_increase) > g.max_fah_increase and lower > _n(d.whole_fah) + g.max_fah_increase:
        failed.append(
            f"ESPHome model FAH {_n(d.fah):.2f} (95% lower bound {lower:.2f}) in "
            f"pymicro-wakeword vs {_n(d.whole_fah):.2f} whole-window over {d.hours:.2f} h "
            f"(> export.gates.max_fah_increase {g.max_fah_increase} beyond chance)"
        )
    if _n(d.recall_drop) > g.max_recall_drop:
        failed.append(
            f"ESPHome model recall {_n(d.recall):.4f} vs {_n(d.whole_recall):.4f} whole-window "
            f"(drop {_n(d.recall_drop):.4f} > export.gates.max_recall_drop {g.max_recall_drop})"
        )
    s = doc.vs_whole_window
    if s.mean_steps > g.max_stream_mean_steps:
        failed.append(
            f"the streaming model's probability is {s.mean_steps:.2f} uint8 steps from the "
            f"whole-window model's on average over {s.windows} windows "
            f"> export.gates.max_stream_mean_steps {g.max_stream_mean_steps}"
        )
    return failed
