"""The export stage's ESPHome pair: ``esphome/<name>.tflite`` and its version-2 manifest,
and the checks that it behaves on the device as the model did on the bench.

Two checks, on the evaluation audio:

- *Step for step*: the streaming model in TensorFlow Lite Micro, fed the front end's frames
  quantised as the firmware quantises them, against the whole-window INT8 model on the
  very same windows (the positive stream and ``export.tflm_background_minutes`` of test
  background), in uint8 probability steps.
- *As the device decides*: the manifest loaded by ``pymicro-wakeword`` (its own front end,
  stride and sliding mean, the manifest's cutoff) over all the test background and the
  positive stream, its false alarms per hour and recall against the whole-window INT8
  model's with the calibrated rule.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pipeline_lib.artifacts.documents import ESPHOME_DIR, DeviceRate, EsphomeDoc, StreamSteps
from pipeline_lib.artifacts.parity_gates import paired_counts
from pipeline_lib.audio.io import audio_blocks
from pipeline_lib.base.atomic import write_json
from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.params import Params
from pipeline_lib.detect import decision, metrics
from pipeline_lib.detect.checkpoint import ModelSpec
from pipeline_lib.detect.esphome_model import ManifestModel
from pipeline_lib.detect.runtimes import Scorer
from pipeline_lib.detect.streaming import Calibration, FrontEnd
from pipeline_lib.detect.tflm import StreamingTflm, measure_arena
from pipeline_lib.stages.export import esphome

log = logging.getLogger(__name__)


def file_name(wake_word: str) -> str:
    """A file name for the wake word: ``Amber lantern`` -> ``amber_lantern``."""
    slug = re.sub(r"[^a-z0-9]+", "_", wake_word.lower()).strip("_")
    return slug or "wake_word"


def wake_word(params: Params) -> str:
    name = params.export.esphome.wake_word or params.generate.phrase
    return name[:1].upper() + name[1:]


def sliding_window(cal: Calibration, stride: int) -> int:
    """The calibrated smoothing (windows a hop apart) as ESPHome's sliding mean length
    (probabilities a stride apart): the same span of time."""
    return max(1, round(cal.rule.smoothing * cal.rule.hop_frames / stride))


# The highest 4-decimal cutoff the uint8 output (scale 1/256) can still pass: ESPHome fires
# when the sliding mean is above the cutoff, and the mean never exceeds 255/256 = 0.99609.
TOP_CUTOFF = math.floor(255 * esphome.OUTPUT_SCALE * 1e4 - 1e-6) / 1e4


def probability_cutoff(threshold: float) -> float:
    """The calibrated threshold at the manifest's 4 decimals, rounded up: rounded down it
    could let back the alarm that calibration set it just above (the inner round keeps
    float noise, 0.6 * 1e4 = 6000.000000000001, from adding a step). A threshold above
    what the uint8 output can reach is capped at ``TOP_CUTOFF``: the device then fires on
    a full-scale output held for the whole sliding window, where the uncapped cutoff would
    never fire (the export's FAH gate measures what the cap costs)."""
    return min(TOP_CUTOFF, math.ceil(round(float(threshold) * 1e4, 6)) / 1e4)


def manifest(
    params: Params, name: str, model: str, cutoff: float, window: int, arena: int
) -> dict[str, object]:
    """A version-2 micro_wake_word manifest, as ESPHome and pymicro-wakeword read it."""
    e = params.export.esphome
    return {
        "type": "micro",
        "wake_word": name,
        "author": "soundops",
        "model": model,
        "trained_languages": list(e.trained_languages),
        "version": 2,
        "micro": {
            "probability_cutoff": probability_cutoff(cutoff),
            "sliding_window_size": int(window),
            "feature_step_size": 10,
            "tensor_arena_size": int(arena),
            "minimum_esphome_version": e.minimum_esphome_version,
        },
    }


def _features(spec: ModelSpec, blocks: Iterable[np.ndarray]) -> np.ndarray:
    fe = FrontEnd(spec.feature_params, spec.rate)
    parts = [fe.push(b) for b in blocks]
    return np.concatenate(parts) if parts else np.zeros((0, spec.bins), np.float32)


class _StepLog:
    def __init__(self) -> None:
        self.diffs: list[np.ndarray] = []
        self.agree: list[np.ndarray] = []

    def add(
        self,
        stream: StreamingTflm,
        whole: Scorer,
        spec: ModelSpec,
        cal: Calibration,
        feats: np.ndarray,
    ) -> None:
        probs = stream.probabilities(feats)
        ends = np.arange(1, probs.size + 1) * stream.stride
        usable = ends >= spec.frames  # the streaming model has seen a whole window
        if not usable.any():
            return
        ends, probs = ends[usable], probs[usable]
        view = np.lib.stride_tricks.sliding_window_view(feats, spec.frames, axis=0)
        wins = view[ends - spec.frames].transpose(0, 2, 1)
        p = np.concatenate(
            [
                decision.event_probability(
                    whole.logits(np.ascontiguousarray(wins[i : i + 512])), cal.temperature
                )
                for i in range(0, len(wins), 512)
            ]
        )
        self.diffs.append(np.abs(np.round(p * 256) - probs.astype(np.float64)))
        thr = cal.rule.threshold
        self.agree.append((p >= thr) == (probs / 256.0 >= thr))

    def summary(self) -> StreamSteps:
        d = np.concatenate(self.diffs) if self.diffs else np.zeros(0)
        a = np.concatenate(self.agree) if self.agree else np.zeros(0, bool)
        return StreamSteps(
            windows=int(d.size),
            max_steps=int(d.max()) if d.size else 0,
            mean_steps=round(float(d.mean()), 4) if d.size else 0.0,
            within_one_step=round(float((d <= 1).mean()), 6) if d.size else 1.0,
            decision_agreement=round(float(a.mean()), 6) if a.size else 1.0,
        )


def write_pair(
    params: Params,
    spec: ModelSpec,
    cal: Calibration,
    whole_tflite: Path,
    whole: Scorer,
    out: Path,
    background: list[Path],
    positives: tuple[np.ndarray, list[tuple[float, float]]],
    whole_rate: tuple[float | None, np.ndarray],
) -> EsphomeDoc:
    """Build, measure and check the ESPHome pair in ``out/esphome``; ``background`` are the
    test background recordings, ``positives`` the positive stream and its spans, and
    ``whole_rate`` the whole-window INT8 model's FAH on that same audio and which of the
    positives it detects."""
    name = wake_word(params)
    stem = file_name(name)
    folder = out / ESPHOME_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tflite = folder / f"{stem}.tflite"
    info = esphome.build_streaming(whole_tflite, spec, cal.temperature, tflite)
    foreign = sorted(set(info.ops) - esphome.ESPHOME_OPS)
    if foreign:
        raise SoundopsError(
            f"export: {tflite.name} uses {', '.join(foreign)}, which ESPHome's micro_wake_word "
            "does not register."
        )
    arena = measure_arena(tflite)
    window = sliding_window(cal, info.stride)
    if probability_cutoff(cal.rule.threshold) < cal.rule.threshold:
        log.warning(
            "export: the calibrated threshold %.4f is above what the ESPHome model's uint8 "
            "output can reach; its probability_cutoff is capped at %.4f (a higher FAH target, "
            "calibrate.preset, keeps the two alike)",
            cal.rule.threshold,
            TOP_CUTOFF,
        )
    doc_path = folder / f"{stem}.json"
    write_json(
        doc_path,
        manifest(params, name, tflite.name, cal.rule.threshold, window,
                 arena + params.export.arena_margin_bytes),
    )  # fmt: skip

    stream = StreamingTflm(tflite, arena)
    steps = _StepLog()
    audio, spans = positives
    steps.add(stream, whole, spec, cal, _features(spec, [audio]))
    budget_s = params.export.tflm_background_minutes * 60
    for path in background:
        if budget_s <= 0:
            break
        feats = _features(spec, audio_blocks(path, spec.rate))
        budget_s -= len(feats) * decision.STEP_S
        steps.add(stream, whole, spec, cal, feats)

    device = ManifestModel(doc_path, cal.rule.refractory_s)
    seconds, alarms = 0.0, 0
    for path in background:
        fs = device.score_file(path)
        seconds += fs.duration_s
        alarms += len(fs.scored.events)
    scored, _ = device.score_samples([audio[i : i + 480000] for i in range(0, audio.size, 480000)])
    match = metrics.match_events(
        scored.events, spans, spec.frames * decision.STEP_S, params.evaluate.tolerance_s
    )
    rate = metrics.fah(alarms, seconds / 3600)
    whole_fah, whole_hits = whole_rate
    recall = round(match.recall, 5) if spans else None
    whole_recall = round(float(whole_hits.mean()), 5) if spans else None
    doc = EsphomeDoc(
        wake_word=name,
        manifest=f"{ESPHOME_DIR}/{doc_path.name}",
        tflite_bytes=tflite.stat().st_size,
        arena_bytes=arena,
        tensor_arena_size=arena + params.export.arena_margin_bytes,
        stride=info.stride,
        probability_cutoff=probability_cutoff(cal.rule.threshold),
        sliding_window_size=window,
        variables=info.variables,
        ops=list(info.ops),
        vs_whole_window=steps.summary(),
        device=DeviceRate.model_validate(
            rate
            | {
                "recall": recall,
                "whole_fah": whole_fah,
                "whole_recall": whole_recall,
                "fah_increase": None if whole_fah is None else round(rate["fah"] - whole_fah, 4),
                "recall_drop": None
                if recall is None or whole_recall is None
                else round(whole_recall - recall, 5),
            }
            | paired_counts(match.hits, whole_hits)
        ),
    )
    log.info(
        "export: ESPHome %s: %d bytes, arena %d, stride %d frames, sliding window %d; "
        "%.2f uint8 steps from the whole-window model on average (%d windows); in "
        "pymicro-wakeword FAH %.2f (whole-window %.2f) over %.2f h, recall %s (whole-window %s)",
        tflite.name,
        doc.tflite_bytes,
        arena,
        info.stride,
        window,
        doc.vs_whole_window.mean_steps,
        doc.vs_whole_window.windows,
        rate["fah"],
        whole_fah if whole_fah is not None else float("nan"),
        rate["hours"],
        recall,
        whole_recall,
    )
    return doc


def read_manifest(folder: Path) -> dict[str, object] | None:
    """The ESPHome manifest in an export folder, or None when it has none."""
    found = sorted((folder / ESPHOME_DIR).glob("*.json")) if (folder / ESPHOME_DIR).is_dir() else []
    return json.loads(found[0].read_text(encoding="utf-8")) if found else None
