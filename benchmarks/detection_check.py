"""Recall and false alarms per hour of the calibrated detector on the *test* split.

Applies the rule the calibrate stage chose on validation audio (temperature, smoothing,
threshold, refractory) to the test background recordings and to the test event clips
inserted into test background at known times, and prints recall and FAH per preset:

    python benchmarks/detection_check.py [PROJECT_DIR]
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import load_params
from pipeline_lib.detect import decision, metrics
from pipeline_lib.detect.checkpoint import load_model
from pipeline_lib.detect.positives import recall_on, split_audio


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    layout = Layout(root)
    params = load_params(layout.params)
    cal = json.loads((layout.calibration / "calibration.json").read_text())
    model, spec = load_model(layout.model)
    audio = split_audio(model, spec, layout, params, "test", cal["hop_frames"], cal["temperature"])
    print(
        f"test: {audio.background.hours:.2f} h of background, "
        f"{len(audio.positives.spans)} inserted positives"
    )
    for name, rule in cal["presets"].items():
        k, thr = rule["smoothing"], rule["threshold"]
        smoothed = [decision.smooth(s, k) for s in audio.background.scores]
        fa = metrics.count_events(smoothed, audio.background.times, thr, cal["refractory_s"])
        ps, pt = audio.positive_scores
        rec = recall_on(
            decision.smooth(ps, k),
            pt,
            audio.positives.spans,
            thr,
            cal["refractory_s"],
            cal["window_s"],
            params.calibrate.tolerance_s,
        )
        print(
            f"{name:9s} target {rule['target_fah']:.1f} FAH: test recall {rec:.4f}, "
            f"test FAH {fa / audio.background.hours:.2f} ({fa} false alarms), "
            f"threshold {thr:.4f}, smoothing {k}"
        )


if __name__ == "__main__":
    main()
