"""The ESPHome pair: the trained detector rebuilt as a streaming INT8 model with a
version-2 manifest, loaded by pymicro-wakeword as ESPHome's loader, and checked against the
whole-window model ``soundops score`` runs, in time, in ops and in memory."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline_lib.artifacts.parity_gates import esphome_gate_failures
from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.params import Params
from pipeline_lib.detect import decision, metrics
from pipeline_lib.detect.checkpoint import ModelSpec
from pipeline_lib.detect.models import build, count_params_macs
from pipeline_lib.detect.runtimes import OnnxScorer, load_scorer
from pipeline_lib.detect.streaming import Calibration, FrontEnd, score_file
from pipeline_lib.detect.tflm import StreamingTflm, TflmScorer, measure_arena, runs_in
from pipeline_lib.stages.export import esphome, esphome_pair, quantize
from tests import chirp_model
from tests.conftest import shipped_params, write_audio

RATE = chirp_model.RATE
CHIRPS = [4.0, 13.0, 22.5, 31.0, 44.0, 53.5]
DECOYS = [8.5, 27.0, 48.5]
# ESPHome's v2 manifest schema (micro_wake_word/__init__.py): required keys
V2_KEYS = {"type", "model", "author", "version", "wake_word", "trained_languages", "micro"}
V2_MICRO = {
    "feature_step_size",
    "tensor_arena_size",
    "probability_cutoff",
    "sliding_window_size",
    "minimum_esphome_version",
}


def _params() -> Params:
    raw = shipped_params()
    raw["export"]["esphome"]["wake_word"] = "rising chirp"
    return Params.model_validate(raw)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("esphome")
    folder = chirp_model.export(
        root / "export", 0, "stream_dscnn", chirp_model.STREAM_OPTIONS, chirp_model.STREAM_WINDOW_S
    )
    spec = ModelSpec(**json.loads((folder / "device_manifest.json").read_text())["spec"])
    cal = Calibration.from_dict(_calibration())
    params = _params()
    background = root / "background.wav"
    write_audio(background, chirp_model.scene(90.0, [], 7, [10.0, 40.0, 70.0]), RATE)
    scene = chirp_model.scene(60.0, CHIRPS, 3, DECOYS)
    spans = [(t, t + chirp_model.CHIRP_S) for t in CHIRPS]
    whole = OnnxScorer(folder / "model_int8.onnx")
    fs = score_file(background, whole, cal)
    pos = score_file(_wav(root / "scene.wav", scene), whole, cal)
    match = metrics.match_events(pos.scored.events, spans, spec.frames * 0.01, 0.5)
    whole_rate = (len(fs.scored.events) / (fs.duration_s / 3600), match.hits)
    doc = esphome_pair.write_pair(
        params, spec, cal, folder / "model_int8.tflite", whole, folder, [background],
        (scene, spans), whole_rate,
    )  # fmt: skip
    return {
        "folder": folder, "doc": doc, "spec": spec, "cal": cal, "params": params,
        "scene": root / "scene.wav", "audio": scene,
    }  # fmt: skip


def _calibration() -> dict[str, Any]:
    """The chirp model's rule with the hop at the streaming stride (5 frames): the bench
    then decides at the instants the device does, so events can be compared hop for hop."""
    cal = chirp_model.calibration()
    for rule in cal["presets"].values():  # type: ignore[attr-defined]
        rule |= {"hop_frames": 5, "smoothing": 4}
    return cal


def _wav(path: Path, audio: np.ndarray) -> Path:
    write_audio(path, audio, RATE)
    return path


def _pymicro_events(manifest: Path, audio: np.ndarray, refractory_s: float) -> list[float]:
    """Detections as pymicro-wakeword makes them: its front end, its stride and sliding
    mean, ``prob > cutoff``; one per refractory time."""
    from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures

    mww = MicroWakeWord.from_config(manifest)
    feats = MicroWakeWordFeatures()
    pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype("<i2").tobytes()
    events: list[float] = []
    for frame, f in enumerate(feats.process_streaming(pcm), start=1):
        fired = mww.process_streaming(f)
        t = frame * 0.01  # frames seen, the clock the pipeline's detector keeps
        if fired and (not events or t - events[-1] >= refractory_s):
            events.append(t)
    return events


def test_pymicro_wakeword_hears_what_soundops_score_hears(pair: dict[str, Any]) -> None:
    doc = pair["doc"]
    manifest = pair["folder"] / doc.manifest
    got = _pymicro_events(manifest, pair["audio"], pair["cal"].rule.refractory_s)
    whole = score_file(
        pair["scene"], load_scorer(pair["folder"] / "model_int8.tflite"), pair["cal"]
    )
    want = [t for t, _ in whole.scored.events]
    assert len(want) == len(CHIRPS)  # the whole-window model hears every chirp, no decoy
    assert len(got) == len(want), (got, want)
    hop = pair["cal"].rule.hop_s
    # both decide every 50 ms over the same 200 ms of probabilities: within one hop
    assert hop == 0.05
    assert max(abs(g - w) for g, w in zip(got, want, strict=True)) <= hop + 1e-9


def test_the_manifest_is_what_esphome_reads(pair: dict[str, Any]) -> None:
    doc = pair["doc"]
    m = json.loads((pair["folder"] / doc.manifest).read_text())
    assert set(m) >= V2_KEYS and set(m["micro"]) >= V2_MICRO
    assert m["version"] == 2 and m["type"] == "micro" and m["wake_word"] == "Rising chirp"
    assert m["model"] == "rising_chirp.tflite" and m["micro"]["feature_step_size"] == 10
    assert m["micro"]["probability_cutoff"] == pytest.approx(pair["cal"].rule.threshold)
    # smoothing over 4 windows 50 ms apart = 4 probabilities a stride (50 ms) apart
    assert m["micro"]["sliding_window_size"] == 4 and doc.stride == 5


def test_only_esphome_ops_and_an_arena_tflm_measured(pair: dict[str, Any]) -> None:
    doc = pair["doc"]
    tflite = pair["folder"] / "esphome" / "rising_chirp.tflite"
    ops = esphome.op_names(tflite)
    assert ops <= esphome.ESPHOME_OPS, ops - esphome.ESPHOME_OPS
    assert {"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE"} <= ops
    m = json.loads((pair["folder"] / doc.manifest).read_text())
    measured = measure_arena(tflite)
    assert m["micro"]["tensor_arena_size"] >= measured == doc.arena_bytes
    stream = StreamingTflm(tflite, m["micro"]["tensor_arena_size"])
    assert stream.probabilities(np.zeros((50, 40), np.float32)).shape == (10,)
    with pytest.raises(SoundopsError, match="cannot allocate"):
        StreamingTflm(tflite, measured // 4).probabilities(np.zeros((50, 40), np.float32))


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, esphome.StreamingModel]:
    """A random 64-channel stream_dscnn's ESPHome file, built from its whole-window INT8 file."""
    import torch

    tmp_path = tmp_path_factory.mktemp("wide")
    torch.manual_seed(0)
    options: dict[str, object] = {"channels": 64, "kernel": 7}
    net = build("stream_dscnn", 2, 148, 40, **options).eval()
    n_params, macs = count_params_macs(net, 148, 40)
    spec = ModelSpec(
        arch="stream_dscnn",
        classes={"other": ["noise"], "target": ["target"]},
        frames=148,
        bins=40,
        rate=RATE,
        features=dict(shipped_params()["features"]),
        norm_mean=[0.0] * 40,
        norm_std=[1.0] * 40,
        params=n_params,
        macs=macs,
        options=options,
    )
    rep = np.random.default_rng(0).standard_normal((64, 148, 40)).astype(np.float32)
    graph, quantizer = quantize.quantize_pt2e(net, 148, 40, rep)
    whole = quantize.to_tflite(graph, quantizer, 148, 40, tmp_path / "whole.tflite")
    stream = tmp_path / "stream.tflite"
    info = esphome.build_streaming(whole, spec, 1.0, stream)
    return stream, info


def test_an_arena_probe_that_crashes_tflm_is_a_no_not_a_crash(
    wide: tuple[Path, esphome.StreamingModel],
) -> None:
    """TFLM's Python binding crashes (SIGSEGV) instead of raising when a 64-channel
    stream_dscnn's ESPHome model is built in the arena its allocation record states; the
    export stage died with it (exit -11). Each probe now runs in a child process."""
    stream, info = wide
    arena = measure_arena(stream)
    assert runs_in(stream, arena) and not runs_in(stream, arena - 1)
    probs = StreamingTflm(stream, arena).probabilities(np.zeros((50, 40), np.float32))
    assert probs.shape == (50 // info.stride,)


@pytest.mark.parametrize(
    ("probe", "timeout_s", "timed_out"),
    [
        ("import ctypes; ctypes.string_at(0)", 60.0, False),
        ("import time; time.sleep(60)", 1.0, True),
    ],
    ids=["segfaults", "hangs"],
)
def test_a_probe_that_segfaults_or_hangs_says_no(
    probe: str,
    timeout_s: float,
    timed_out: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whatever the binding does in the child (here: a SIGSEGV, or no answer), the
    bisection hears "does not run" and this process goes on; a hang is logged, since the
    arena then grows for a reason other than its size."""
    import time

    from pipeline_lib.detect import tflm

    monkeypatch.setattr(tflm, "_PROBE", probe)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="pipeline_lib.detect.tflm"):
        assert not tflm.runs_in(tmp_path / "any.tflite", 30_000, timeout_s=timeout_s)
    assert time.monotonic() - start < 30
    assert ("timed out after 1 s" in caplog.text) is timed_out


def test_a_64_channel_esphome_model_fits_64_kb(
    wide: tuple[Path, esphome.StreamingModel],
) -> None:
    """The streaming file carries no per-channel quantization tables on its convolution
    biases (int8 kernels never read them) and one buffer for identical zeroed states: with
    them a 64-channel model's file was 66,528 B, over the 64 KB a wake word may take."""
    from ai_edge_litert.tools import flatbuffer_utils as fb

    stream, _ = wide
    assert stream.stat().st_size <= 64 * 1024
    model = fb.read_model(str(stream))
    main, init = model.subgraphs
    conv_biases = [main.tensors[o.inputs[2]] for o in main.operators if len(o.inputs) == 3
                   and o.inputs[2] >= 0 and main.tensors[o.inputs[2]].type == 2]  # fmt: skip
    assert conv_biases and all(t.quantization is None for t in conv_biases[:-1])
    assert conv_biases[-1].quantization is not None  # FULLY_CONNECTED checks its bias scale
    zeros = [t.buffer for t in init.tensors if t.buffer]
    assert len(set(zeros)) < len(zeros)


def test_streaming_matches_the_whole_window_model_step_for_step(pair: dict[str, Any]) -> None:
    """After a window's worth of steps the streaming model computes what the whole-window
    model computes on that window: the same integers but for the folded input and head."""
    spec, cal = pair["spec"], pair["cal"]
    folder = pair["folder"]
    feats = FrontEnd(spec.feature_params, RATE).push(pair["audio"])
    stream = StreamingTflm(folder / "esphome" / "rising_chirp.tflite", 60000)
    on_grid = (stream.quantize(feats).astype(np.float32) + 128) * esphome.INPUT_SCALE
    probs = stream.probabilities(feats)
    ends = np.arange(1, probs.size + 1) * stream.stride
    keep = ends >= spec.frames
    whole = TflmScorer(folder / "model_int8.tflite", spec, 60000)
    wins = np.stack([on_grid[e - spec.frames : e] for e in ends[keep]])
    p = decision.event_probability(whole.logits(wins), cal.temperature)
    steps = np.abs(np.round(p * 256) - probs[keep])
    assert (steps <= 1).mean() >= 0.8 and steps.mean() <= 2.0, np.bincount(steps.astype(int))
    doc = pair["doc"].vs_whole_window
    assert doc.windows > 0 and doc.mean_steps <= pair["params"].export.gates.max_stream_mean_steps


def test_the_device_figures_pass_the_export_gates(pair: dict[str, Any]) -> None:
    doc = pair["doc"]
    assert doc.device.recall == 1.0 and doc.device.false_alarms == 0
    assert esphome_gate_failures(pair["params"], doc) == []
    assert doc.device.positives == len(CHIRPS) and doc.device.positives_lost == 0
    half = len(CHIRPS) // 2
    lost = {"recall": 0.5, "recall_drop": 0.5, "positives_lost": half}
    worse = doc.model_copy(update={"device": doc.device.model_copy(update=lost)})
    assert (
        f"{half} lost and 0 gained of {len(CHIRPS)} positives"
        in esphome_gate_failures(pair["params"], worse)[0]
    )


def test_a_model_that_cannot_stream_is_named(pair: dict[str, Any], tmp_path: Path) -> None:
    whole = pair["folder"] / "model_int8.tflite"
    for change, words in [
        ({"arch": "dscnn"}, "model.arch dscnn does not stream"),
        ({"classes": {"a": ["x"], "b": ["y"], "c": ["z"]}}, "has 3 classes"),
        ({"features": {**pair["spec"].features, "front_end": "logmel"}}, "must be micro"),
    ]:
        spec = dataclasses.replace(pair["spec"], **change)
        with pytest.raises(SoundopsError, match=words):
            esphome.build_streaming(whole, spec, 1.0, tmp_path / "x.tflite")
    assert not (tmp_path / "x.tflite").exists()


def test_a_cutoff_the_uint8_output_cannot_pass_is_capped() -> None:
    # ESPHome fires when the sliding mean of uint8 probabilities (scale 1/256) is above
    # the cutoff: the mean never exceeds 255/256, so a calibrated 0.9969 would never fire
    top = 255 * esphome.OUTPUT_SCALE
    for thr in (0.9969, 0.9999, 1.0):
        cutoff = esphome_pair.probability_cutoff(thr)
        assert cutoff < top and cutoff == esphome_pair.TOP_CUTOFF == 0.996
    # below the top step the cutoff is the threshold rounded up, as before
    assert esphome_pair.probability_cutoff(0.95) == 0.95
    assert esphome_pair.probability_cutoff(0.99531) == 0.9954
