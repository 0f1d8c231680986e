"""calibrate stage: temperature scaling and the streaming decision rule, on validation only.

Temperature scaling fits one scalar on validation clip logits (ECE before and after, with
a reliability curve). The decision rule (hop, smoothing, threshold, refractory) is chosen
per preset so that validation background streams stay at or under the preset's false
alarms per hour while recall of validation positives, inserted into validation background
at known times, is highest. One calibration file serves every later stage and the device.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline_lib.base.atomic import atomic_path, json_text, write_csv, write_json
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import CalibrateParams, Params
from pipeline_lib.detect import decision, metrics
from pipeline_lib.detect.calibration import fit_temperature, reliability
from pipeline_lib.detect.checkpoint import load_model, logits
from pipeline_lib.detect.positives import SplitAudio, recall_on, split_audio

log = logging.getLogger(__name__)


def choose_rule(
    audio: SplitAudio, cal: CalibrateParams, target_fah: float, window_s: float, hop: int
) -> dict[str, float]:
    """The smoothing and threshold with the best recall at or under ``target_fah``."""
    best: dict[str, float] = {}
    for k in cal.smoothing:
        bg = [decision.smooth(s, k) for s in audio.background.scores]
        thr = decision.threshold_for_fah(
            bg,
            audio.background.times,
            audio.background.hours,
            target_fah,
            cal.refractory_s,
            cal.fah_confidence,
        )
        fa = metrics.count_events(bg, audio.background.times, thr, cal.refractory_s)
        ps, pt = audio.positive_scores
        rec = recall_on(
            decision.smooth(ps, k),
            pt,
            audio.positives.spans,
            thr,
            cal.refractory_s,
            window_s,
            cal.tolerance_s,
        )
        cand = {
            "target_fah": target_fah,
            "smoothing": k,
            "threshold": round(thr, 6),
            "hop_frames": hop,
            "refractory_s": cal.refractory_s,
            "fah": round(fa / audio.background.hours, 4),
            "false_alarms": fa,
            "hours": round(audio.background.hours, 4),
            "recall": round(rec, 5),
        }
        if not best or cand["recall"] > best["recall"]:
            best = cand
    return best


def plot_reliability(before: pd.DataFrame, after: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k:", label="perfect")
    ax.plot(before["confidence"], before["accuracy"], "o-", label="before")
    ax.plot(after["confidence"], after["accuracy"], "s-", label="after temperature")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability (validation)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_calibrate(params: Params, layout: Layout) -> dict[str, object]:
    """The calibrate stage: ``data/calibration/calibration.json`` plus reliability plots."""
    from pipeline_lib.artifacts.store import Store

    model, spec = load_model(layout.model)
    cal = params.calibrate
    val = Store.open(layout.features, "val")
    raw = logits(model, np.asarray(val.x, np.float32), spec)
    y = val.index["class"].to_numpy()
    temperature = fit_temperature(raw, y)
    ece_before, rel_before = reliability(raw, y, 1.0)
    ece_after, rel_after = reliability(raw, y, temperature)
    hop = max(1, round(cal.hop_s / decision.STEP_S))
    window_s = spec.frames * decision.STEP_S
    audio = split_audio(model, spec, layout, params, "val", hop, temperature)
    presets = {
        name: choose_rule(audio, cal, fah, window_s, hop) for name, fah in cal.presets.items()
    }
    result: dict[str, object] = {
        "temperature": round(temperature, 6),
        "ece_before": round(ece_before, 5),
        "ece_after": round(ece_after, 5),
        "window_frames": spec.frames,
        "window_s": round(window_s, 3),
        "hop_frames": hop,
        "refractory_s": cal.refractory_s,
        "preset": cal.preset,
        "presets": presets,
        "selected": presets[cal.preset],
        "val_positives": len(audio.positives.spans),
    }
    sel = presets[cal.preset]
    summary = {
        "temperature": result["temperature"],
        "ece_before": result["ece_before"],
        "ece_after": result["ece_after"],
        "val_fah": sel["fah"],
        "val_recall": sel["recall"],
        "threshold": sel["threshold"],
        "smoothing": sel["smoothing"],
    }
    with (
        atomic_path(layout.metrics / "calibrate.json") as metrics,
        atomic_path(layout.calibration) as out,
    ):
        out.mkdir(parents=True)
        write_json(out / "calibration.json", result)
        write_csv(
            out / "reliability.csv",
            pd.concat([rel_before.assign(stage="before"), rel_after.assign(stage="after")]),
        )
        plot_reliability(rel_before, rel_after, out / "reliability.png")
        metrics.write_text(json_text(summary), encoding="utf-8")
    log.info(
        "calibrate: T=%.3f, ECE %.4f -> %.4f; %s: threshold %.4f, smoothing %d, val FAH "
        "%.2f, val recall %.4f",
        temperature,
        ece_before,
        ece_after,
        cal.preset,
        sel["threshold"],
        sel["smoothing"],
        sel["fah"],
        sel["recall"],
    )
    return result
