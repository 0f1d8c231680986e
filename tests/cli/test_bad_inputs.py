"""The bad-input corpus (issue 14) for the command line and the stages: each hostile or
careless input gets one sentence naming the file or key, a non-zero exit where a command
failed, no traceback, and nothing written outside its root or left half-written inside it.
The service's cases are in ``test_bad_inputs_service.py``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from pipeline_lib.artifacts.documents import ESPHOME_DIR
from pipeline_lib.base import threads
from pipeline_lib.base.atomic import atomic_path
from pipeline_lib.base.errors import GateError, ParamsError, SoundopsError
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import Params, parse_params
from pipeline_lib.release import registry
from pipeline_lib.release.tracking import flatten_params, redact_uri
from pipeline_lib.stages.ingest import run_ingest
from pipeline_lib.stages.split import run_split
from tests.conftest import calibration_dict, shipped_params, tiny_model, tone, write_audio

Project = Callable[[dict[str, Any]], tuple[Params, Layout]]
SOUNDOPS = str(Path(sys.executable).parent / "soundops")


def soundops(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.run(
        [SOUNDOPS, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300
    )


def one_sentence(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The command failed with one ``error:`` line holding every needle, and no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, proc.stderr
    text = " ".join(proc.stderr.split())  # rich wraps long lines
    for needle in needles:
        assert needle in text, (needle, proc.stderr)
    return text


def _set(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


# -- params ------------------------------------------------------------------------------
ABSURD = [
    ("seed", 2**70, "seed"),
    ("train.lr", float("inf"), "train.lr"),
    ("model.options.channels", -4, "model.options.channels"),
    ("train.batch_size", 10**12, "train.batch_size"),
    ("generate.background.test_minutes", float("inf"), "generate.background.test_minutes"),
    ("augment.stream_windows", 10**12, "augment.stream_windows"),
    ("calibrate.refractory_s", float("inf"), "calibrate.refractory_s"),
    ("ingest.max_file_s", float("nan"), "ingest.max_file_s"),
    ("runtime.threads", -1, "runtime.threads"),
]


@pytest.mark.parametrize(("key", "value", "named"), ABSURD, ids=[a[0] for a in ABSURD])
def test_absurd_params_are_refused_by_the_model(key: str, value: Any, named: str) -> None:
    raw = shipped_params()
    _set(raw, key, value)
    with pytest.raises(ParamsError, match=rf"key '{named}'"):
        parse_params(raw)


def test_params_check_names_the_key_and_keeps_brackets(tmp_path: Path) -> None:
    raw = shipped_params()
    _set(raw, "calibrate.refractory_s", float("inf"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    one_sentence(soundops("params", "check", cwd=tmp_path), "calibrate.refractory_s", "finite")
    # a message with brackets is shown whole, not eaten or crashed on as markup
    raw = shipped_params()
    raw["labels"] = [*raw["labels"][:-1], "[/x]"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    one_sentence(soundops("params", "check", cwd=tmp_path), "^[a-z0-9_]+$", "'[/x]'")


def test_unreadable_params_files_are_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_bytes(b"seed: 1\n\xff\xfe\x00 labels")
    one_sentence(soundops("params", "check", cwd=tmp_path), "params.yaml: not UTF-8")
    (tmp_path / "params.yaml").unlink()
    (tmp_path / "params.yaml").mkdir()
    one_sentence(soundops("params", "check", cwd=tmp_path), "params.yaml: is a folder")


def test_thread_setting_is_checked_and_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(threads.ENV, "lots")
    with pytest.raises(ParamsError, match="SOUNDOPS_THREADS: expected a whole number"):
        threads.resolve(0)
    monkeypatch.setenv(threads.ENV, "2")
    assert threads.resolve(1) == 2
    monkeypatch.delenv(threads.ENV)
    assert threads.resolve(3) == 3
    assert 1 <= threads.resolve(0) <= (os.cpu_count() or 1)


# -- score -------------------------------------------------------------------------------
def test_score_on_broken_audio_names_the_file(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m")
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps(calibration_dict()), encoding="utf-8")
    good = write_audio(tmp_path / "good.flac", tone(3.0, 16000), 16000)
    truncated = tmp_path / "truncated.flac"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    bracketed = tmp_path / "x[" / "y].wav"  # the path reads x[/y].wav: rich markup once
    bracketed.parent.mkdir()
    bracketed.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    for bad in (truncated, bracketed):
        out = tmp_path / "out"
        proc = soundops(
            "score", str(good), str(bad), "--model", str(model), "--calibration", str(cal),
            "--out", str(out), "--workers", "1", cwd=tmp_path,
        )  # fmt: skip
        one_sentence(proc, f"{bad.relative_to(tmp_path)}: undecodable audio")
        assert not out.exists()  # nothing half-written for the good file either


# -- ingest ------------------------------------------------------------------------------
@pytest.fixture
def hostile_source(make_project: Project, raw_params: dict[str, Any], tmp_path: Path) -> Layout:
    raw_params["ingest"]["sources"] = [{"name": "f", "kind": "folder", "root": "raw/f"}]
    _, layout = make_project(raw_params)
    outside = tmp_path / "outside"
    write_audio(outside / "secret.wav", tone(0.5, 16000, 300), 16000)
    write_audio(outside / "cls" / "other.wav", tone(0.5, 16000, 350), 16000)
    f = layout.root / "raw" / "f"
    write_audio(f / "target" / "good.wav", tone(0.5, 16000, 440), 16000)
    (f / "target" / "passwd.wav").symlink_to(outside / "secret.wav")
    (f / "target" / "gone.wav").symlink_to(f / "target" / "missing.wav")
    (f / "target" / "dir.wav").mkdir()
    (f / "noise").symlink_to(outside / "cls", target_is_directory=True)
    # 80 bytes of header and samples that claim a rate of 1 Hz: hours at 16 kHz
    sf.write(str(f / "target" / "onehertz.wav"), np.full(40_000, 0.1, np.float32), 1)
    # a small FLAC of 8 channels at 96 kHz, 25 s: 19 M samples decoded, ingested in blocks
    sf.write(
        str(f / "target" / "bomb.flac"),
        np.tile(tone(25.0, 96000, 1000, 0.3)[:, None], (1, 8)),
        96000,
        format="FLAC",
    )
    return layout


def test_ingest_refuses_escapes_and_bounds_decoding(
    hostile_source: Layout, make_project: Project, raw_params: dict[str, Any]
) -> None:
    raw_params["ingest"]["sources"] = [{"name": "f", "kind": "folder", "root": "raw/f"}]
    params = parse_params(raw_params)
    run_ingest(params, hostile_source)
    manifest = pd.read_csv(hostile_source.manifest)
    quarantine = pd.read_csv(hostile_source.quarantine)
    reasons = dict(zip(quarantine["source_path"], quarantine["reason"], strict=True))
    assert reasons["target/passwd.wav"] == "link leads outside the source root"
    assert reasons["noise"] == "link leads outside the source root"
    assert reasons["target/gone.wav"] == "dangling link"
    assert reasons["target/dir.wav"] == "a folder, not an audio file"
    assert reasons["target/onehertz.wav"] == "sample rate 1 Hz is not an audio rate"
    assert sorted(manifest["source_path"]) == ["target/bomb.flac", "target/good.wav"]
    bomb = manifest[manifest["source_path"] == "target/bomb.flac"].iloc[0]
    assert bomb["orig_channels"] == 8 and bomb["orig_rate"] == 96000
    assert bomb["duration_s"] == pytest.approx(25.0, abs=1e-3)
    assert bomb["peak_dbfs"] == pytest.approx(-10.46, abs=0.05)  # 0.3 full scale
    written = sf.read(str(hostile_source.ingest / bomb["path"]))[0]
    assert written.size == 25 * 16000 and abs(written).max() == pytest.approx(10**-0.05, 1e-3)
    assert not [p for p in hostile_source.root.rglob("*.tmp")]


def test_too_long_files_are_quarantined(make_project: Project, raw_params: dict[str, Any]) -> None:
    raw_params["ingest"]["sources"] = [{"name": "f", "kind": "folder", "root": "raw/f"}]
    raw_params["ingest"]["max_file_s"] = 2.0
    params, layout = make_project(raw_params)
    write_audio(layout.root / "raw/f/target/ok.wav", tone(1.0, 16000), 16000)
    write_audio(layout.root / "raw/f/target/long.wav", tone(3.0, 16000), 16000)
    run_ingest(params, layout)
    q = pd.read_csv(layout.quarantine)
    assert list(q["reason"]) == ["3 s long, over ingest.max_file_s (2 s)"]


# -- split, debris ---------------------------------------------------------------------------
def test_split_refuses_a_gate_passed_for_another_manifest(
    make_project: Project, raw_params: dict[str, Any]
) -> None:
    raw_params["ingest"]["sources"] = [{"name": "f", "kind": "folder", "root": "raw/f"}]
    params, layout = make_project(raw_params)
    write_audio(layout.root / "raw/f/target/a.wav", tone(0.5, 16000), 16000)
    run_ingest(params, layout)
    import hashlib

    digest = hashlib.sha256(layout.manifest.read_bytes()).hexdigest()
    layout.gate.parent.mkdir(parents=True, exist_ok=True)
    layout.gate.write_text(json.dumps({"manifest_sha256": digest, "passed": True}))
    write_audio(layout.root / "raw/f/target/b.wav", tone(0.5, 16000, 880), 16000)
    run_ingest(params, layout)  # a new manifest the gate never saw
    with pytest.raises(GateError, match=r"gate\.json: the gate passed for another ingest"):
        run_split(params, layout)
    assert not layout.assignment.exists()


def test_a_killed_writers_temporary_is_swept_and_a_live_ones_kept(tmp_path: Path) -> None:
    target = tmp_path / "data" / "ingest"
    target.mkdir(parents=True)
    (target / "old.txt").write_text("old")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    debris = target.parent / f".ingest.{dead}.abcd1234.tmp"
    (debris / "ingest").mkdir(parents=True)
    live = target.parent / f".ingest.{os.getppid()}.efgh5678.tmp"
    live.mkdir()
    with pytest.raises(RuntimeError), atomic_path(target) as work:
        work.mkdir()
        raise RuntimeError("killed half-way")
    assert (target / "old.txt").read_text() == "old"  # the old output is untouched
    assert not debris.exists() and live.exists()


def test_stage_killed_mid_ingest_leaves_old_outputs_and_no_debris(
    make_project: Project, raw_params: dict[str, Any]
) -> None:
    raw_params["ingest"]["sources"] = [{"name": "f", "kind": "folder", "root": "raw/f"}]
    params, layout = make_project(raw_params)
    for i in range(3):
        write_audio(layout.root / f"raw/f/target/{i}.wav", tone(0.5, 16000, 300 + i), 16000)
    run_ingest(params, layout)
    before = layout.manifest.read_bytes(), (layout.metrics / "ingest.json").read_bytes()
    for i in range(3, 400):  # enough work to be killed in the middle of
        write_audio(layout.root / f"raw/f/target/{i}.wav", tone(2.0, 16000, 300 + i), 16000)
    proc = subprocess.Popen(
        [SOUNDOPS, "stage", "ingest"],
        cwd=layout.root,
        env=os.environ | {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = 120.0
    import time

    start = time.monotonic()
    # killed once the first clips are written into the temporary folder: in the middle of
    # the work on any machine (a fixed sleep after the folder appeared was sometimes the end)
    while (
        not list(layout.root.glob("data/.ingest.*.tmp/**/*.flac"))
        and time.monotonic() - start < deadline
    ):
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    after = layout.manifest.read_bytes(), (layout.metrics / "ingest.json").read_bytes()
    assert after == before  # the old pair, byte for byte
    assert list(layout.root.glob("data/.ingest.*.tmp"))  # the kill left its temporary ...
    run_ingest(params, layout)
    assert not list(layout.root.glob("*/.*.tmp"))  # ... and the next run removed it
    assert len(pd.read_csv(layout.manifest)) == 400


# -- registry and release bundles ------------------------------------------------------------
@pytest.fixture
def registered(chirp_export: Path, tmp_path: Path) -> tuple[Params, Path, int]:
    from tests import chirp_model

    root = tmp_path / "project"
    root.mkdir()
    raw = shipped_params()
    (root / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    params = parse_params(raw)
    files = tmp_path / "export"
    shutil.copytree(chirp_export, files)
    for name in registry.EXPORT_FILES:  # the rest of an export, as plain files
        if not (files / name).exists():
            (files / name).write_text(f"{name}\n", encoding="utf-8")
    pair = files / ESPHOME_DIR  # an ESPHome pair, as a streaming model's export has
    pair.mkdir()
    (pair / "chirp.json").write_text('{"version": 2, "model": "chirp.tflite"}\n')
    (pair / "chirp.tflite").write_bytes(bytes(range(256)) * 4)
    version = chirp_model.publish(root, params, files, aliases=())
    from mlflow import MlflowClient

    client = MlflowClient()
    figs = {"fah": 0.1, "recall": 0.99, "int8_parity": 1.0, "fits_targets": 1.0}
    tags = registry.file_digests(files) | {f"fig.{k}": str(v) for k, v in figs.items()}
    for key, value in tags.items():
        client.set_model_version_tag(params.release.model_name, str(version), key, value)
    return params, root, version


def test_channel_names_cannot_leave_releases(
    registered: tuple[Params, Path, int], tmp_path: Path
) -> None:
    params, root, version = registered
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    for channel in ("../../victim", "../victim", "a/b", "[/x]", "v3", "latest", ""):
        with pytest.raises(SoundopsError, match=r"--channel: .* is not a channel name"):
            registry.promote(params, str(version), channel, root)
    assert (victim / "keep.txt").read_text() == "precious"
    assert sorted(victim.iterdir()) == [victim / "keep.txt"]
    assert not (root / "releases").exists()
    proc = soundops("models", "promote", str(version), "--channel", "../../victim", cwd=root)
    one_sentence(proc, "--channel: '../../victim' is not a channel name")
    proc = soundops("models", "promote", "[/x]", cwd=root)
    one_sentence(proc, "no version or alias '[/x]'")


def test_bundles_are_checked_against_the_registry_digests(
    registered: tuple[Params, Path, int],
) -> None:
    params, root, version = registered
    v = registry.get_version(params, str(version))
    cached = registry.download(params, v, root)
    want = registry.file_digests(cached)
    good = (cached / "model_int8.tflite").read_bytes()
    blob = bytearray(good)
    blob[len(blob) // 2] ^= 0xFF
    (cached / "model_int8.tflite").write_bytes(bytes(blob))  # a changed byte in the cache
    _, bundle = registry.promote(params, str(version), "edge", root)
    from pipeline_lib.base.atomic import sha256

    assert f"{registry.DIGEST_TAG}model_int8.tflite" in v.tags
    assert sha256(bundle / "model_int8.tflite") == want[f"{registry.DIGEST_TAG}model_int8.tflite"]
    sums = (bundle / "SHA256SUMS").read_text()
    assert want[f"{registry.DIGEST_TAG}model_int8.tflite"] in sums
    for name in ("esphome/chirp.json", "esphome/chirp.tflite"):  # the pair ships, checked
        assert f"{want[registry.DIGEST_TAG + name]}  {name}" in sums.splitlines()
        assert sha256(bundle / name) == want[registry.DIGEST_TAG + name]
    # the artifact store itself changed: nothing to trust, so nothing is written
    stored = next((root / ".soundops" / "mlartifacts").rglob("export/model_int8.tflite"))
    stored.write_bytes(bytes(blob))
    shutil.rmtree(cached)
    with pytest.raises(SoundopsError, match=r"model_int8\.tflite does not match the sha256"):
        registry.promote(params, str(version), "beta", root)
    assert not (root / "releases" / "beta").exists()
    assert not cached.exists()
    stored.write_bytes(good)  # the ESPHome model changed in the store: caught the same way
    pair = next((root / ".soundops" / "mlartifacts").rglob("export/esphome/chirp.tflite"))
    pair.write_bytes(b"changed")
    with pytest.raises(SoundopsError, match=r"esphome/chirp\.tflite does not match the sha256"):
        registry.promote(params, str(version), "beta", root)
    assert not (root / "releases" / "beta").exists()


def test_tracking_credentials_are_never_logged_or_printed() -> None:
    uri = "https://alice:hunter2@mlflow.example.com/?token=abc123&x=1"
    flat = flatten_params({"release": {"tracking_uri": uri}}, "")
    assert "hunter2" not in json.dumps(flat) and "abc123" not in json.dumps(flat)
    assert flat["release.tracking_uri"] == "https://alice:***@mlflow.example.com/?token=***&x=1"
    assert redact_uri("sqlite:///x/mlflow.db") == "sqlite:///x/mlflow.db"
