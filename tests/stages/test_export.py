"""INT8 export: a tiny model trained here is quantised once and run in TensorFlow Lite
Micro and onnxruntime; the two must agree within one output quantisation step."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from pipeline_lib.artifacts.documents import RuntimeParity, StepAgreement
from pipeline_lib.artifacts.parity_gates import parity_gate_failures
from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.params import McuTarget, parse_params
from pipeline_lib.detect.checkpoint import ModelSpec
from pipeline_lib.detect.models import build, count_params_macs
from pipeline_lib.detect.runtimes import SPEC_KEY, OnnxScorer, load_scorer
from pipeline_lib.detect.streaming import Calibration
from pipeline_lib.detect.tflm import TflmScorer, measure_arena
from pipeline_lib.stages.export import bundle, quantize
from tests.conftest import calibration_dict, shipped_params

FRAMES, BINS = 48, 20


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw 'feature' windows: class 1 has a bright band in bins 5-9, class 0 does not."""
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 1.0, (n, FRAMES, BINS)).astype(np.float32)
    y = rng.integers(0, 2, n)
    x[y == 1, :, 5:10] += 2.5
    return x, y


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, ModelSpec]:
    torch.manual_seed(0)
    net = build("dscnn", 2, FRAMES, BINS, channels=12, blocks=2, stride=[2, 2])
    x, y = _data(512, 1)
    mean, std = x.mean(axis=(0, 1)), x.std(axis=(0, 1))
    xn = torch.from_numpy((x - mean) / std)[:, None]
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    net.train()
    for _ in range(4):
        for i in range(0, 512, 32):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(xn[i : i + 32]), torch.from_numpy(y[i : i + 32]))
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    net.eval()
    n_params, macs = count_params_macs(net, FRAMES, BINS)
    spec = ModelSpec(
        arch="dscnn",
        classes={"other": ["speech"], "target": ["target"]},
        frames=FRAMES,
        bins=BINS,
        rate=16000,
        features=dict(shipped_params()["features"]),
        norm_mean=[float(v) for v in mean],
        norm_std=[float(v) for v in std],
        params=n_params,
        macs=macs,
        options={"channels": 12, "blocks": 2, "stride": [2, 2]},
    )
    return net, spec


def _convert(net: nn.Module, spec: ModelSpec, n: int, folder: Path) -> tuple[Any, Path]:
    """PT2E-quantise with ``n`` representative windows; the graph and its TFLite file."""
    rep, _ = _data(n, 2)
    graph, quantizer = quantize.quantize_pt2e(net, FRAMES, BINS, spec.normalise(rep))
    return graph, quantize.to_tflite(graph, quantizer, FRAMES, BINS, folder / "m.tflite")


def test_tflm_matches_onnxruntime_int8_within_one_step(
    tmp_path: Path, trained: tuple[nn.Module, ModelSpec]
) -> None:
    net, spec = trained
    graph, tfl = _convert(net, spec, 64, tmp_path)
    onx = quantize.to_onnx_qdq(graph, spec, tmp_path / "m.onnx", {SPEC_KEY: _spec_json(spec)})
    arena = measure_arena(tfl)
    assert 1000 < arena < 200_000
    # no tensor names: they named the torch modules, flash the device never reads
    assert b"pipeline_lib" not in tfl.read_bytes() and b"torch.nn" not in tfl.read_bytes()
    tflm = TflmScorer(tfl, spec, arena)  # runs in exactly the measured arena
    io = tflm.io()
    assert io["input"]["dtype"] == "int8" and io["output"]["dtype"] == "int8"
    ort = OnnxScorer(onx)
    x, y = _data(200, 3)
    q_tflm = tflm.int8_logits(x).astype(np.int64)
    q_ort = np.round(ort.logits(x) / tflm.out_scale) + tflm.out_zp
    assert np.abs(q_tflm - q_ort).max() <= 1
    # INT8 still does the task the FP32 model learnt.
    with torch.no_grad():
        fp32 = net(torch.from_numpy(spec.normalise(x))[:, None]).numpy()
    int8 = tflm.logits(x)
    assert (int8.argmax(1) == fp32.argmax(1)).mean() >= 0.97
    assert (fp32.argmax(1) == y).mean() >= 0.9

    # `soundops score --model model_int8.tflite` finds its spec in the device manifest.
    with pytest.raises(SoundopsError, match=r"needs the device_manifest\.json"):
        load_scorer(tfl)
    cal = Calibration.from_dict(calibration_dict())
    manifest = bundle.manifest(spec, cal, io, arena, {"tflite_int8": tfl})
    (tmp_path / "device_manifest.json").write_text(json.dumps(manifest))
    scorer = load_scorer(tfl)
    assert isinstance(scorer, TflmScorer) and scorer.calibration == cal.raw
    np.testing.assert_array_equal(scorer.logits(x[:20]), int8[:20])


def test_too_small_an_arena_is_one_sentence(
    tmp_path: Path, trained: tuple[nn.Module, ModelSpec]
) -> None:
    net, spec = trained
    _, tfl = _convert(net, spec, 16, tmp_path)
    with pytest.raises(Exception, match=r"cannot allocate it in 512 bytes"):
        TflmScorer(tfl, spec, 512)


def _spec_json(spec: ModelSpec) -> str:
    return json.dumps(asdict(spec))


def test_c_array_holds_the_model_bytes_aligned(tmp_path: Path) -> None:
    blob = tmp_path / "m.tflite"
    blob.write_bytes(bytes(range(256)) * 3 + b"\x07")
    bundle.c_array(blob, tmp_path / "model_data.h", tmp_path / "model_data.cc")
    src = (tmp_path / "model_data.cc").read_text()
    assert "alignas(16) const unsigned char soundops_model[]" in src
    values = bytes(int(v, 16) for v in re.findall(r"0x([0-9a-f]{2})", src))
    assert values == blob.read_bytes()
    assert f"soundops_model_len = {blob.stat().st_size};" in src
    assert (
        "extern const unsigned int soundops_model_len;" in (tmp_path / "model_data.h").read_text()
    )


def test_budgets_give_a_verdict_per_target() -> None:
    targets = [
        McuTarget(
            name="big",
            description="big",
            mhz=240,
            macs_per_cycle=1.0,
            ram_budget_kb=160,
            flash_budget_kb=1024,
        ),
        McuTarget(
            name="small",
            description="small",
            mhz=80,
            macs_per_cycle=0.5,
            ram_budget_kb=32,
            flash_budget_kb=256,
        ),
    ]
    rows = bundle.budgets(targets, 30_000, 30_000, 5_920, 4_000_000, 0.1)
    big, small = rows
    assert big["fits"] and big["latency_ms_estimate"] == pytest.approx(16.67, abs=0.01)
    assert not small["fits"]
    # 4 M MACs at 80 MHz x 0.5 is 100 ms: exactly the hop, so only RAM fails
    assert small["verdict"] == "does not fit: RAM 35.1 KB > budget 32 KB"


def _runtime(**kw: Any) -> RuntimeParity:
    base = {
        "false_alarms": 3, "hours": 3.0, "fah": 1.0, "fah_lo": 0.2, "fah_hi": 2.9,
        "fp32_false_alarms": 3, "fp32_hours": 3.0, "fp32_fah": 1.0, "fp32_fah_lo": 0.2,
        "fp32_fah_hi": 2.9, "recall": 0.98, "fp32_recall": 0.98, "windows": 1000,
        "decision_agreement": 0.999, "max_score_diff": 0.05, "mean_score_diff": 0.001,
        "fah_increase": 0.0, "recall_drop": 0.0,
        "positives": 100, "positives_lost": 0, "positives_gained": 0,
    }  # fmt: skip
    return RuntimeParity.model_validate(base | kw)


def _steps(mean: float, most: int) -> StepAgreement:
    return StepAgreement(
        windows=100, max_steps=most, mean_steps=mean, within_one_step=0.9, histogram=[]
    )


def test_gates_name_each_failed_figure() -> None:
    params = parse_params(shipped_params())
    ok = {"onnx_int8": _runtime(), "tflm_int8": _runtime()}
    assert parity_gate_failures(params, ok, _steps(0.6, 3)) == []
    bad = {
        "onnx_int8": _runtime(fah=2.0, fah_lo=2.0, fah_increase=1.0),
        "tflm_int8": _runtime(
            recall=0.9, recall_drop=0.08, positives_lost=8, decision_agreement=0.9
        ),
    }
    failed = parity_gate_failures(params, bad, _steps(8.2, 11))
    assert len(failed) == 4
    assert "onnx_int8 FAH 2.00 (95% lower bound 2.00) vs FP32 1.00" in failed[0]
    assert "max_fah_increase" in failed[0]
    assert "tflm_int8 recall 0.9000" in failed[1]
    assert "decision agreement 0.9000" in failed[2]
    assert "differ by 8.20 output steps on average over 100 windows (at most 11)" in failed[3]


def test_a_recall_drop_fails_only_beyond_chance() -> None:
    """One or two positives of 32 that two runtimes a grid step apart decide differently are
    no evidence; the same share of many positives, or many lost of 32, is."""
    params = parse_params(shipped_params())  # max_recall_drop 0.02
    steps = _steps(0.0, 0)

    def failures(lost: int, gained: int, n: int) -> list[str]:
        drop = (lost - gained) / n
        r = _runtime(recall=0.8 - drop, fp32_recall=0.8, recall_drop=drop, positives=n,
                     positives_lost=lost, positives_gained=gained)  # fmt: skip
        return parity_gate_failures(params, {"tflm_int8": r}, steps)

    assert failures(2, 0, 32) == []  # 0.0625, the jarvis export that failed
    assert failures(1, 0, 32) == []
    assert "8 lost and 0 gained of 32 positives" in failures(8, 0, 32)[0]
    assert "beyond chance" in failures(60, 0, 1000)[0]  # 0.06 of 1000
    assert failures(30, 10, 1000) == []  # drop 0.02: not above the margin at all
    # a document from before the counts were kept has only the bare drop
    bare = _runtime(recall=0.75, recall_drop=0.05, positives=None, positives_lost=None,
                    positives_gained=None)  # fmt: skip
    assert (
        "(drop 0.0500, 95% lower bound 0.0500;"
        in parity_gate_failures(params, {"tflm_int8": bare}, steps)[0]
    )


def test_a_parity_figure_the_split_cannot_measure_fails_no_gate_when_read_back() -> None:
    """The registry re-reads export's metrics from JSON, where an unmeasurable recall
    drop (no positives in a tiny split: NaN) is null; that must neither crash nor pass a
    figure that really failed."""
    params = parse_params(shipped_params())
    unmeasured = _runtime(recall=None, fp32_recall=None, recall_drop=None)
    runtime = RuntimeParity.model_validate(json.loads(unmeasured.model_dump_json()))
    assert runtime.recall_drop is None
    steps = _steps(0.0, 0)
    assert parity_gate_failures(params, {"onnx": runtime}, steps) == []
    worse = runtime.model_copy(update={"fah_increase": 5.0, "fah": 6.0, "fah_lo": 3.0})
    assert "max_fah_increase" in parity_gate_failures(params, {"onnx": worse}, steps)[0]
    # one extra false alarm in 10 minutes: 6 FAH, but its lower bound (0.15) is chance
    chance = runtime.model_copy(
        update={"fah_increase": 6.0, "fah": 6.0, "fah_lo": 0.15, "fp32_fah": 0.0}
    )
    assert parity_gate_failures(params, {"tflm_int8": chance}, steps) == []


def test_a_stale_or_missing_metrics_document_is_one_sentence(tmp_path: Path) -> None:
    from pipeline_lib.artifacts.documents import ExportDoc, load_doc

    path = tmp_path / "export.json"
    with pytest.raises(SoundopsError, match=r"export\.json: not found; run the export stage"):
        load_doc(path, ExportDoc, "export")
    path.write_text(json.dumps({"sizes": {"tflite_int8": 1}}), encoding="utf-8")
    with pytest.raises(SoundopsError, match=r"export\.json: key '[a-z_.]+': .*dvc repro export"):
        load_doc(path, ExportDoc, "export")
