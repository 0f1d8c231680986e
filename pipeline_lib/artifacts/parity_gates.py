"""The export stage's parity gates as a check on its metrics document, shared by export
(which fails the stage) and the registry (which refuses to promote a version that failed)."""

from __future__ import annotations

from typing import Any

from pipeline_lib.base.params import Params


def parity_gate_failures(
    params: Params, runtimes: dict[str, dict[str, Any]], steps: dict[str, Any]
) -> list[str]:
    g = params.export.gates
    failed = []
    for name, read in runtimes.items():
        # a figure the split cannot measure (no positives: NaN, JSON null) fails no gate
        f = {k: (float("nan") if v is None else v) for k, v in read.items()}
        # an increase counts when it is more than chance: the INT8 rate's 95% lower bound
        # above FP32's rate plus the margin (one extra false alarm in TFLite Micro's 10
        # minutes is 6 FAH, and evidence of nothing), as the field monitor decides
        lower = f.get("fah_lo", f["fah"])
        if f["fah_increase"] > g.max_fah_increase and lower > f["fp32_fah"] + g.max_fah_increase:
            failed.append(
                f"{name} FAH {f['fah']:.2f} (95% lower bound {lower:.2f}) vs FP32 "
                f"{f['fp32_fah']:.2f} over {f['hours']:.2f} h "
                f"(> export.gates.max_fah_increase {g.max_fah_increase} beyond chance)"
            )
        if f["recall_drop"] > g.max_recall_drop:
            failed.append(
                f"{name} recall {f['recall']:.4f} vs FP32 {f['fp32_recall']:.4f} (drop "
                f"{f['recall_drop']:.4f} > export.gates.max_recall_drop {g.max_recall_drop})"
            )
        if f["decision_agreement"] < g.min_decision_agreement:
            failed.append(
                f"{name} decision agreement {f['decision_agreement']:.4f} < "
                f"export.gates.min_decision_agreement {g.min_decision_agreement}"
            )
    if steps["mean_steps"] > g.max_tflm_onnx_mean_steps:
        failed.append(
            f"TFLite Micro and onnxruntime INT8 differ by {steps['mean_steps']:.2f} output "
            f"steps on average over {steps['windows']} windows (at most {steps['max_steps']}) "
            f"> export.gates.max_tflm_onnx_mean_steps {g.max_tflm_onnx_mean_steps}"
        )
    return failed
