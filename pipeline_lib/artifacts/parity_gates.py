"""The export stage's parity gates as a check on its metrics document, shared by export
(which fails the stage) and the registry (which refuses to promote a version that failed)."""

from __future__ import annotations

import numpy as np

from pipeline_lib.artifacts.documents import EsphomeDoc, RuntimeParity, StepAgreement
from pipeline_lib.base.params import Params


def _n(value: float | None) -> float:
    # a figure the split cannot measure (no positives: JSON null) fails no gate
    return float("nan") if value is None else value


def paired_counts(model: np.ndarray, ref: np.ndarray) -> dict[str, int]:
    """The positives only the reference found (lost) and only the model found (gained),
    from each model's hit flags over the same positives."""
    return {
        "positives": int(ref.size),
        "positives_lost": int((ref & ~model).sum()),
        "positives_gained": int((model & ~ref).sum()),
    }


def paired_drop_lower(lost: int, gained: int, n: int, z: float = 1.96) -> float:
    """95% lower bound of a recall drop on ``n`` positives both models saw. Paired (Wald),
    so positives both find or both miss add no noise; NaN without positives."""
    if n == 0:
        return float("nan")
    drop = (lost - gained) / n
    var = (lost + gained - (lost - gained) ** 2 / n) / (n * n)
    return float(drop - z * np.sqrt(max(var, 0.0)))


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
    paired: tuple[int | None, int | None, int | None],
) -> list[str]:
    """The FAH and recall gates of one model against its reference on the same audio;
    ``paired`` is (positives, lost, gained) from paired_counts."""
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
    n, lost, gained = paired
    # so does a drop: its paired 95% lower bound above the margin (one positive of 32 is a
    # drop of 0.031, and two models a grid step apart disagree on one or two near the
    # threshold); a document without the counts has only the bare drop
    drop_lo = _n(drop) if n is None else paired_drop_lower(lost or 0, gained or 0, n)
    if _n(drop) > g.max_recall_drop and drop_lo > g.max_recall_drop:
        counts = "" if n is None else f", {lost} lost and {gained} gained of {n} positives"
        failed.append(
            f"{who} recall {_n(recall):.4f} vs {ref} {_n(ref_recall):.4f} (drop "
            f"{_n(drop):.4f}, 95% lower bound {drop_lo:.4f}{counts}; "
            f"> export.gates.max_recall_drop {g.max_recall_drop} beyond chance)"
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
            (r.positives, r.positives_lost, r.positives_gained),
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
        (d.positives, d.positives_lost, d.positives_gained),
    )  # fmt: skip
    s = doc.vs_whole_window
    if s.mean_steps > g.max_stream_mean_steps:
        failed.append(
            f"the streaming model's probability is {s.mean_steps:.2f} uint8 steps from the "
            f"whole-window model's on average over {s.windows} windows "
            f"> export.gates.max_stream_mean_steps {g.max_stream_mean_steps}"
        )
    return failed
