"""export stage: FP32 ONNX, INT8 ONNX and full-integer INT8 TFLite of the calibrated model,
checked on the evaluation audio in the runtimes a device and a host will use.

Parity runs the test clips, the test background recordings and the positive stream through
FP32 PyTorch (the reference), onnxruntime INT8 (all of it) and TensorFlow Lite Micro (the
clips, the positive stream and ``export.tflm_background_minutes`` of background: its
reference kernels run one window at a time). All three see the same front-end windows.
Gates in params compare each runtime with FP32 on the audio that runtime saw; a failed gate
fails the stage naming the figures, and nothing is written. The device bundle (C array,
manifest, budgets, model card) is written only for a model that passed.
"""

from __future__ import annotations

import html
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pipeline_lib.artifacts.documents import (
    ESPHOME_DIR,
    EvaluateDoc,
    ExportDoc,
    Parity,
    RuntimeParity,
    StepAgreement,
    TargetFit,
    load_doc,
    write_doc,
)
from pipeline_lib.artifacts.manifests import load_split_manifest
from pipeline_lib.artifacts.parity_gates import (
    esphome_gate_failures,
    paired_counts,
    parity_gate_failures,
)
from pipeline_lib.base import html_page
from pipeline_lib.base.atomic import atomic_path, write_json
from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import Params
from pipeline_lib.detect import decision, metrics
from pipeline_lib.detect.checkpoint import ModelSpec, load_model
from pipeline_lib.detect.positives import clip_scores, positive_stream
from pipeline_lib.detect.runtimes import (
    CALIBRATION_KEY,
    SPEC_KEY,
    OnnxScorer,
    Scorer,
    TorchScorer,
    export_onnx,
)
from pipeline_lib.detect.streaming import Calibration, score_file
from pipeline_lib.detect.tflm import TflmScorer, measure_arena
from pipeline_lib.stages.export import bundle, esphome, esphome_pair

log = logging.getLogger(__name__)

VERIFIER_FILES = ("verifier.npz", "verifier.json")  # from the verifier stage, when it ran

FP32, ORT, TFLM = "fp32", "onnx_int8", "tflm_int8"


class _Tee:
    """A scorer that returns FP32 logits and records what each other runtime gives for the
    very same windows, so the front end runs once per recording."""

    def __init__(self, ref: Scorer, others: dict[str, Scorer], steps: Steps) -> None:
        self.ref, self.others, self.steps = ref, others, steps
        self.spec, self.name = ref.spec, "tee"
        self.calibration: dict[str, Any] | None = None
        self.logs: dict[str, list[np.ndarray]] = {FP32: [], **{n: [] for n in others}}

    def logits(self, windows: np.ndarray) -> np.ndarray:
        out = self.ref.logits(windows)
        self.logs[FP32].append(out)
        for name, scorer in self.others.items():
            self.logs[name].append(scorer.logits(windows))
        if TFLM in self.others:
            self.steps.add(self.logs[ORT][-1], self.logs[TFLM][-1])
        return out

    def take(self) -> dict[str, np.ndarray]:
        n = len(self.spec.classes)
        got = {k: np.concatenate(v) if v else np.zeros((0, n)) for k, v in self.logs.items()}
        for v in self.logs.values():
            v.clear()
        return got


@dataclass
class Series:
    """One runtime's smoothed scores on one recording (times shared across runtimes)."""

    times: np.ndarray
    smoothed: dict[str, np.ndarray] = field(default_factory=dict)


def _series(times: np.ndarray, logs: dict[str, np.ndarray], cal: Calibration) -> Series:
    s = Series(times)
    for name, raw in logs.items():
        prob = decision.event_probability(raw, cal.temperature)
        s.smoothed[name] = decision.smooth(prob, cal.rule.smoothing)
    return s


def _scored_file(path: Path, tee: _Tee, cal: Calibration) -> tuple[float, Series]:
    fs = score_file(path, tee, cal)
    return fs.duration_s, _series(fs.scored.times, tee.take(), cal)


def representative_windows(layout: Layout, spec: ModelSpec, n: int, seed: int) -> np.ndarray:
    """``n`` normalised train windows (all views, so augmentation is represented)."""
    from pipeline_lib.artifacts.store import Store

    store = Store.open(layout.features, "train")
    rng = np.random.default_rng([seed, 5])
    rows = np.sort(rng.choice(len(store.index), size=min(n, len(store.index)), replace=False))
    return spec.normalise(store.batch(rows))


@dataclass
class Steps:
    """How far TFLite Micro's int8 output is from onnxruntime INT8's, in output steps, per
    window. Both run the same integer graph; they requantise with different rounding
    (onnxruntime in float, TFLM in fixed point), so a trained model's windows can differ."""

    scale: float
    hist: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def add(self, ort_logits: np.ndarray, tflm_logits: np.ndarray) -> None:
        if len(ort_logits) == 0:
            return
        diff = np.round(ort_logits / self.scale) - np.round(tflm_logits / self.scale)
        counts = np.bincount(np.abs(diff).max(axis=1).astype(np.int64))
        size = max(self.hist.size, counts.size)
        self.hist = np.pad(self.hist, (0, size - self.hist.size)) + np.pad(
            counts, (0, size - counts.size)
        )

    @property
    def max(self) -> int:
        return int(np.flatnonzero(self.hist).max()) if self.hist.any() else 0

    def summary(self) -> dict[str, Any]:
        total = int(self.hist.sum())
        return {
            "windows": total,
            "max_steps": self.max,
            "within_one_step": round(float(self.hist[:2].sum() / total), 6) if total else 1.0,
            "mean_steps": round(float((self.hist * np.arange(self.hist.size)).sum() / total), 4)
            if total
            else 0.0,
            "histogram": [int(v) for v in self.hist],
        }


def positive_hits(
    pos: Series,
    who: str,
    spans: list[tuple[float, float]],
    cal: Calibration,
    window_s: float,
    tol: float,
) -> np.ndarray:
    """Which inserted positives runtime ``who`` detects at the calibrated rule."""
    events = decision.detect(
        pos.smoothed[who], pos.times, cal.rule.threshold, cal.rule.refractory_s
    )
    return metrics.match_events(events, spans, window_s, tol).hits


def _figures(
    name: str,
    bg: list[tuple[float, Series]],
    pos: Series,
    spans: list[tuple[float, float]],
    cal: Calibration,
    window_s: float,
    tol: float,
) -> dict[str, Any]:
    """FAH, recall and agreement with FP32 for runtime ``name`` on the recordings it saw."""
    thr, refr = cal.rule.threshold, cal.rule.refractory_s
    seen = [(d, s) for d, s in bg if name in s.smoothed]
    hours = sum(d for d, _ in seen) / 3600
    out: dict[str, Any] = {}
    hits = {}
    for who in (name, FP32):
        n = metrics.count_events(
            [s.smoothed[who] for _, s in seen], [s.times for _, s in seen], thr, refr
        )
        hits[who] = positive_hits(pos, who, spans, cal, window_s, tol)
        key = "" if who == name else "fp32_"
        out |= {f"{key}{k}": v for k, v in metrics.fah(n, hours).items()}
        out[f"{key}recall"] = round(float(hits[who].mean()) if spans else float("nan"), 5)
    out |= paired_counts(hits[name], hits[FP32])
    a = np.concatenate([s.smoothed[name] for _, s in seen] + [pos.smoothed[name]])
    b = np.concatenate([s.smoothed[FP32] for _, s in seen] + [pos.smoothed[FP32]])
    out |= {
        "windows": int(a.size),
        "decision_agreement": round(float(((a >= thr) == (b >= thr)).mean()), 6),
        "max_score_diff": round(float(np.abs(a - b).max()), 6),
        "mean_score_diff": round(float(np.abs(a - b).mean()), 6),
        "fah_increase": round(out["fah"] - out["fp32_fah"], 4),
        "recall_drop": round(out["fp32_recall"] - out["recall"], 5),
    }
    return out


def _clip_parity(
    layout: Layout, scorers: dict[str, Scorer], cal: Calibration, steps: Steps
) -> dict[str, Any]:
    raw = {}
    for name, scorer in scorers.items():
        raw[name], classes = clip_scores(scorer, layout)
    prob = {k: decision.event_probability(v, cal.temperature) for k, v in raw.items()}
    y = classes != 0
    out: dict[str, Any] = {"clips": int(y.size)}
    for name in (FP32, ORT, TFLM):
        roc = metrics.roc_curve(prob[name], y)
        out[name] = {
            "roc_auc": round(metrics.roc_auc(roc), 5),
            "agreement": round(
                float(
                    (
                        (prob[name] >= cal.rule.threshold) == (prob[FP32] >= cal.rule.threshold)
                    ).mean()
                ),
                5,
            ),
            "max_score_diff": round(float(np.abs(prob[name] - prob[FP32]).max()), 6),
        }
    steps.add(raw[ORT], raw[TFLM])
    return out


def run_export(params: Params, layout: Layout) -> dict[str, Any]:
    """The export stage: ``data/export`` (models, device bundle, report) and
    ``metrics/export.json``."""
    ex = params.export
    model, spec = load_model(layout.model)
    cal = Calibration.load(layout.calibration / "calibration.json")
    ref = TorchScorer(model, spec, name="fp32")
    window_s = spec.frames * 0.01
    meta = {
        SPEC_KEY: json.dumps(asdict(spec), sort_keys=True),
        CALIBRATION_KEY: json.dumps(cal.raw, sort_keys=True),
    }
    from pipeline_lib.stages.export import quantize

    with atomic_path(layout.export) as out:
        out.mkdir(parents=True)
        fp32_onnx = export_onnx(model, spec, out / "model_fp32.onnx", cal.raw)
        rep = representative_windows(layout, spec, ex.representative, params.seed)
        log.info("export: quantising with %d representative windows", len(rep))
        graph, quantizer = quantize.quantize_pt2e(model, spec.frames, spec.bins, rep)
        tflite = quantize.to_tflite(
            graph, quantizer, spec.frames, spec.bins, out / "model_int8.tflite"
        )
        int8_onnx = quantize.to_onnx_qdq(graph, spec, out / "model_int8.onnx", meta)
        arena = measure_arena(tflite)
        ort = OnnxScorer(int8_onnx)
        tflm = TflmScorer(tflite, spec, arena)

        steps = Steps(tflm.out_scale)
        clips = _clip_parity(layout, {FP32: ref, ORT: ort, TFLM: tflm}, cal, steps)
        frame = load_split_manifest(layout)
        streams = frame[
            (frame["role"] == "stream") & frame["split"].isin(params.evaluate.background_splits)
        ].sort_values("id")
        budget_s = ex.tflm_background_minutes * 60
        bg: list[tuple[float, Series]] = []
        for r in tqdm(list(streams.itertuples()), desc="export parity", unit="file"):
            with_tflm = budget_s > 0
            tee = _Tee(ref, {ORT: ort, TFLM: tflm} if with_tflm else {ORT: ort}, steps)
            dur, series = _scored_file(layout.ingest / str(r.path), tee, cal)
            budget_s -= dur if with_tflm else 0
            bg.append((dur, series))
        tee = _Tee(ref, {ORT: ort, TFLM: tflm}, steps)
        pos_audio, spans, scored = positive_stream(frame, layout, params, tee, cal)
        pos = _series(scored.times, tee.take(), cal)
        tol = params.evaluate.tolerance_s
        parity = Parity(
            clips=clips,
            runtimes={
                name: RuntimeParity.model_validate(
                    _figures(name, bg, pos, spans, cal, window_s, tol)
                )
                for name in (ORT, TFLM)
            },
            tflm_vs_onnx=StepAgreement.model_validate(steps.summary()),
        )
        failed = parity_gate_failures(params, parity.runtimes, parity.tflm_vs_onnx)
        if failed:
            raise SoundopsError("export: INT8 gate(s) failed: " + "; ".join(failed) + ".")
        skipped = esphome.unstreamable_reason(spec)
        esp = None
        if skipped is None:
            o_run = parity.runtimes[ORT]
            esp = esphome_pair.write_pair(
                params,
                spec,
                cal,
                tflite,
                ort,
                out,
                [layout.ingest / str(r.path) for r in streams.itertuples()],
                (pos_audio, spans),
                (o_run.fah, positive_hits(pos, ORT, spans, cal, window_s, tol)),
            )
            failed = esphome_gate_failures(params, esp)
            if failed:
                raise SoundopsError("export: ESPHome gate(s) failed: " + "; ".join(failed) + ".")
        else:
            log.info("export: no ESPHome model: %s", skipped)

        bundle.c_array(tflite, out / "model_data.h", out / "model_data.cc")
        feature_bytes = spec.frames * spec.bins  # the int8 input window
        rows = bundle.budgets(
            ex.targets,
            tflite.stat().st_size,
            arena + ex.arena_margin_bytes,
            feature_bytes,
            spec.macs,
            cal.rule.hop_frames * decision.STEP_S,
        )
        files = {
            "tflite_int8": tflite,
            "c_source": out / "model_data.cc",
            "c_header": out / "model_data.h",
            "onnx_int8": int8_onnx,
            "onnx_fp32": fp32_onnx,
        }
        if esp is not None:
            files["esphome_manifest"] = out / esp.manifest
            files["esphome_tflite"] = out / ESPHOME_DIR / f"{Path(esp.manifest).stem}.tflite"
        manifest = bundle.manifest(spec, cal, tflm.io(), arena + ex.arena_margin_bytes, files)
        manifest["targets"] = rows
        write_json(out / "device_manifest.json", manifest)
        doc = ExportDoc(
            tflite_bytes=tflite.stat().st_size,
            onnx_int8_bytes=int8_onnx.stat().st_size,
            onnx_fp32_bytes=fp32_onnx.stat().st_size,
            arena_bytes=arena,
            param_count=spec.params,
            macs=spec.macs,
            parity=parity,
            targets={
                r["target"]: TargetFit.model_validate(
                    {k: r[k] for k in ("fits", "latency_ms_estimate", "ram_bytes", "flash_bytes")}
                )
                for r in rows
            },
            esphome=esp,
            esphome_skipped=skipped,
        )
        evaluation = load_doc(layout.metrics / "evaluate.json", EvaluateDoc, "evaluate")
        (out / "model_card.md").write_text(
            bundle.model_card(spec, evaluation, doc, rows, _data_note(layout)), encoding="utf-8"
        )
        (out / "report.html").write_text(_report(spec, doc, rows, bg, pos, cal), encoding="utf-8")
        for name in VERIFIER_FILES:  # the server-side second stage travels with its model
            if (layout.verifier / name).is_file():
                shutil.copyfile(layout.verifier / name, out / name)
        write_doc(out / "export.json", doc)
    write_doc(layout.metrics / "export.json", doc)
    o, t = doc.parity.runtimes[ORT], doc.parity.runtimes[TFLM]
    log.info(
        "export: INT8 TFLite %d bytes, arena %d bytes; onnxruntime INT8 FAH %.2f (FP32 %.2f) "
        "recall %.4f (FP32 %.4f) over %.2f h; TFLite Micro FAH %.2f (FP32 %.2f) over %.2f h, "
        "recall %.4f; TFLM vs ORT max %d step(s), %.4f of windows within one",
        doc.tflite_bytes,
        doc.arena_bytes,
        o.fah,
        o.fp32_fah,
        o.recall,
        o.fp32_recall,
        o.hours,
        t.fah,
        t.fp32_fah,
        t.hours,
        t.recall,
        steps.max,
        doc.parity.tflm_vs_onnx.within_one_step,
    )
    return doc.model_dump(mode="json")


def _data_note(layout: Layout) -> str:
    path = layout.metrics / "split.json"
    if not path.is_file():
        return "See the project's split and validate reports."
    counts = json.loads(path.read_text(encoding="utf-8"))
    return (
        "Trained on the project's train split, calibrated on val, measured on test (groups "
        "never shared between splits). Split summary: `"
        + json.dumps(counts, sort_keys=True)[:600]
        + "`."
    )


def _report(
    spec: ModelSpec,
    doc: ExportDoc,
    rows: list[dict[str, Any]],
    bg: list[tuple[float, Series]],
    pos: Series,
    cal: Calibration,
) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, name in zip(axes, (ORT, TFLM), strict=True):
        seen = [s for _, s in bg if name in s.smoothed] + [pos]
        a = np.concatenate([s.smoothed[FP32] for s in seen])
        b = np.concatenate([s.smoothed[name] for s in seen])
        ax.scatter(a, b, s=2, alpha=0.3)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
        ax.axvline(cal.rule.threshold, color="red", lw=0.8)
        ax.axhline(cal.rule.threshold, color="red", lw=0.8)
        ax.set(xlabel="FP32 smoothed score", ylabel=f"{name} smoothed score", title=name)
    fig.tight_layout()
    plot = html_page.figure_uri(fig)
    plt.close(fig)
    columns = ("hours", "fah", "fp32_fah", "recall", "fp32_recall", "decision_agreement")
    runtime_rows = pd.DataFrame(
        [
            {"runtime": k} | v.model_dump(include={*columns, "max_score_diff", "windows"})
            for k, v in doc.parity.runtimes.items()
        ]
    )
    sizes = doc.model_dump(
        include={"tflite_bytes", "onnx_int8_bytes", "onnx_fp32_bytes", "arena_bytes"}
    )
    steps = doc.parity.tflm_vs_onnx
    sections = [
        ("Sizes", html_page.table(pd.DataFrame([sizes]))),
        ("Parity with FP32 on the evaluation audio", html_page.table(runtime_rows)),
        ("Scores, INT8 against FP32", f'<img src="{plot}" alt="INT8 vs FP32 scores">'),
        ("Targets (latency estimated from MACs)", html_page.table(pd.DataFrame(rows))),
    ]
    esp = doc.esphome
    if esp is not None:
        pair = {"manifest": esp.manifest} | esp.model_dump(
            include={"tflite_bytes", "arena_bytes", "tensor_arena_size", "stride",
                     "probability_cutoff", "sliding_window_size"}
        )  # fmt: skip
        checks = pd.DataFrame(
            [
                {"check": "TFLite Micro streaming vs whole-window INT8 (uint8 steps)"}
                | esp.vs_whole_window.model_dump(),
                {"check": "pymicro-wakeword from the manifest vs whole-window INT8"}
                | esp.device.model_dump(),
            ]
        )
        sections.insert(1, ("ESPHome micro_wake_word model", html_page.table(pd.DataFrame([pair]))))
        sections.insert(3, ("ESPHome model on the evaluation audio", html_page.table(checks)))
    else:
        why = html.escape(doc.esphome_skipped or "")
        sections.insert(1, ("ESPHome micro_wake_word model", f"<p>Not written: {why}.</p>"))
    return html_page.page(
        f"INT8 export: {spec.arch}",
        sections,
        intro=(
            f"TFLite Micro and onnxruntime INT8 differ by at most "
            f"{steps.max_steps} output step(s) on the {steps.windows} windows both ran; "
            f"{steps.within_one_step:.4f} of them within one step "
            "(the same integer graph, requantised with different rounding)."
        ),
    )
