"""The orchestration layer for real: `soundops run build` (Prefect flow, DVC stages, MLflow
runs and registry) twice at once on a tiny project, then `monitor` on new audio that
raises FAH, which must start the retrain flow and register a new version; then promotion
gates, release bundles and rollback on the versions those flows registered."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.params import parse_params
from pipeline_lib.release import registry
from pipeline_lib.release.monitor import regression
from pipeline_lib.release.tracking import configure
from tests.conftest import shipped_params
from tests.test_dvc_pipeline import Project, init_project, tiny

pytestmark = pytest.mark.slow


def flow_params() -> dict[str, Any]:
    raw = tiny(shipped_params())
    # a model that learns the tiny corpus well enough to detect its own target phrase
    raw["generate"]["counts"] = dict.fromkeys(("target", "confusable", "speech", "noise"), 16)
    raw["train"] |= {"epochs": 6, "patience": 100}
    raw["release"]["gates"] |= {"max_fah": 1e6, "min_recall": 0.0}
    raw["release"]["monitor"] |= {"folder": "data/field", "tolerance": 0.0}
    return raw


class Built(Project):
    builds: list[tuple[int, str, str]]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """A tiny project after two `soundops run build` started at the same moment."""
    root = tmp_path_factory.mktemp("flowproj")
    proj = Built(root)
    proj.env |= {"PREFECT_HOME": str(root.parent / f"{root.name}-prefect"), "TQDM_DISABLE": "1"}
    proj.env.pop("PREFECT_API_URL", None)
    proj.env.pop("MLFLOW_TRACKING_URI", None)
    init_project(proj, flow_params())
    builds = [
        subprocess.Popen(
            ["soundops", "run", "build"],
            cwd=root,
            env=proj.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    proj.builds = []
    for b in builds:
        out, err = b.communicate(timeout=1500)
        proj.builds.append((b.returncode, out, err))
    return proj


def _params(proj: Project, **release: Any) -> Any:
    raw = yaml.safe_load((proj.root / "params.yaml").read_text())
    for key, value in release.items():
        raw["release"]["gates"][key] = value
    params = parse_params(raw)
    configure(proj.root, params)
    return params


def test_two_builds_at_once_one_waits_out_and_one_registers(built: Built) -> None:
    codes = sorted(code for code, _, _ in built.builds)
    ok = next(b for b in built.builds if b[0] == 0)
    refused = next(b for b in built.builds if b[0] != 0)
    assert codes == [0, 2], built.builds
    assert "another build" in refused[2] and "is running in this project" in refused[2]
    assert "Traceback" not in refused[2]
    assert "registered" in ok[1] and "version 1" in ok[1] and "mlflow ui" in ok[1]
    status = built.run("dvc", "status", "--json")
    assert json.loads(status.stdout or "{}") == {}  # dvc.lock matches every output
    params = _params(built)
    found = registry.versions(params)
    assert [v.version for v in found] == [1]
    v = found[0]
    assert "candidate" in v.aliases and v.tags["gates"] == "passed"
    assert {"fah", "recall", "tflite_bytes", "tensor_arena_bytes"} <= set(v.figures)
    assert v.tags["data_version"] and v.tags["eval_audio"]
    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True, output_format="pandas")
    assert isinstance(runs, pd.DataFrame)
    stages = set(runs["tags.soundops.stage"].dropna())
    assert stages == {"generate", "ingest", "validate", "split", "extract", "train"} | {
        "calibrate",
        "evaluate",
        "mine",
        "verifier",
        "export",
    }
    train = runs[runs["tags.soundops.stage"] == "train"].iloc[0]
    assert train["metrics.val_loss"] > 0  # the stage's per-epoch figures reached its run


def _field_audio(root: Path) -> None:
    """New audio full of the target phrase: to a detector that should hear none, every
    detection is a false alarm, so FAH jumps."""
    manifest = pd.read_csv(root / "data" / "ingest" / "manifest.csv", keep_default_na=False)
    rate = 16000
    parts = []
    for rel in manifest.loc[manifest["label"] == "target", "path"]:
        clip, _ = sf.read(str(root / "data" / "ingest" / rel), dtype="float32")
        parts += [clip, np.zeros(3 * rate, np.float32)]
    (root / "data" / "field").mkdir(parents=True, exist_ok=True)
    sf.write(str(root / "data" / "field" / "day1.wav"), np.concatenate(parts), rate)


def test_monitor_regression_starts_retrain_and_registers_a_version(built: Built) -> None:
    params = _params(built)
    registry.promote(params, "1", "edge", built.root)
    _field_audio(built.root)
    proc = built.run("soundops", "run", "monitor", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "running retrain here" in proc.stderr + proc.stdout
    assert "registered" in proc.stdout and "version 2" in proc.stdout
    found = registry.versions(params)
    assert [v.version for v in found] == [1, 2]
    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True, output_format="pandas")
    assert isinstance(runs, pd.DataFrame)
    mon = runs[runs["tags.soundops.flow"] == "monitor"].iloc[0]
    assert mon["tags.regression"] == "True" and mon["metrics.field_fah"] > 0
    again = runs[runs["tags.soundops.flow"] == "retrain"].iloc[0]
    assert "over recorded" in again["tags.reason"]
    assert (built.root / "data" / "raw" / "hard_negatives.dvc").is_file()


def test_promote_refuses_failing_accepts_passing_and_rolls_back(built: Built) -> None:
    strict = _params(built, max_fah=0.0, min_recall=1.0)
    gates = strict.release.gates
    failing = [v for v in registry.versions(strict) if registry.gate_failures(v.figures, gates)]
    assert failing  # a tiny model misses a positive or false-alarms somewhere
    bad = failing[0].version
    with pytest.raises(SoundopsError, match=rf"version {bad} cannot go to 'edge'") as refused:
        registry.promote(strict, str(bad), "edge", built.root)
    assert "release.gates.m" in str(refused.value)  # max_fah or min_recall, with the values
    edge = registry.get_version(strict, "edge").version
    assert edge == 1 and not (built.root / "releases" / "edge" / "v2").exists()
    params = _params(built)
    before = registry.get_version(params, "edge").version
    v, bundle = registry.promote(params, "2", "edge", built.root)
    assert registry.get_version(params, "edge").version == 2 == v.version
    assert registry.get_version(params, "edge-previous").version == before
    sums = (bundle / "SHA256SUMS").read_text().splitlines()
    for line in sums:
        digest, name = line.split()
        assert hashlib.sha256((bundle / name).read_bytes()).hexdigest() == digest
    assert (built.root / "releases" / "edge" / "CURRENT").read_text().strip() == "v2"
    back = registry.rollback(params, "edge", built.root)
    assert back.version == before == registry.get_version(params, "edge").version
    assert (built.root / "releases" / "edge" / "CURRENT").read_text().strip() == f"v{before}"
    with pytest.raises(SoundopsError, match="no earlier version"):
        registry.rollback(params, "edge", built.root)
    with pytest.raises(SoundopsError, match="no version or alias '9'"):
        registry.get_version(params, "9")
    cli = built.run("soundops", "models", "promote", "7", check=False)
    assert cli.returncode == 2 and "no version or alias '7'" in cli.stderr


def test_regression_rule() -> None:
    field = {"fah": 6.0, "fah_lo": 2.2, "fah_hi": 13.0}
    assert not regression(field, recorded_fah=1.0, target_fah=8.0, tolerance=2.0).regression
    hit = regression(field, recorded_fah=0.0, target_fah=8.0, tolerance=2.0)
    assert hit.regression and not hit.over_target and "tolerance" in hit.reason
    over = regression(field, recorded_fah=5.0, target_fah=2.0, tolerance=2.0)
    assert over.over_target and not over.regression


def _version(number: int, audio: str, **figs: float) -> registry.Version:
    tags = {f"fig.{k}": str(v) for k, v in figs.items()} | {"eval_audio": audio}
    return registry.Version("m", number, "run", (), tags, 0)


def test_challenger_wins_only_on_the_same_audio_with_a_better_figure() -> None:
    params = parse_params(shipped_params())  # compare: FAH at recall 0.9, lower wins
    champ = _version(1, "aaa", **{"fah_at_recall_0.9": 2.0})
    assert registry.better(_version(2, "aaa", **{"fah_at_recall_0.9": 1.0}), champ, params)[0]
    worse = registry.better(_version(2, "aaa", **{"fah_at_recall_0.9": 3.0}), champ, params)
    assert not worse[0] and "3.00 vs champion 2.00" in worse[1]
    other = registry.better(_version(2, "bbb", **{"fah_at_recall_0.9": 0.0}), champ, params)
    assert not other[0] and "not comparable" in other[1]
    raw = shipped_params()
    raw["release"]["compare"]["by"] = "recall_at_fah"
    by_recall = parse_params(raw)
    a = _version(2, "aaa", **{"recall_at_fah_1.0": 0.95})
    b = _version(1, "aaa", **{"recall_at_fah_1.0": 0.9})
    assert registry.better(a, b, by_recall)[0] and not registry.better(b, a, by_recall)[0]


def test_gate_failures_name_each_gate() -> None:
    gates = parse_params(shipped_params()).release.gates
    figs = {"fah": 9.0, "recall": 0.5, "int8_parity": 1.0, "fits_targets": 0.0}
    failed = registry.gate_failures(figs, gates)
    assert len(failed) == 3
    assert "release.gates.max_fah" in failed[0] and "release.gates.min_recall" in failed[1]
    assert "fits_targets" in failed[2]
    assert (
        registry.gate_failures(figs | {"fah": 1.0, "recall": 0.95, "fits_targets": 1.0}, gates)
        == []
    )


def test_real_recall_gate_needs_real_recordings_and_their_recall() -> None:
    gates = parse_params(shipped_params()).release.gates.model_copy(update={"min_real_recall": 0.8})
    good = {"fah": 1.0, "recall": 0.95, "int8_parity": 1.0, "fits_targets": 1.0}
    (none,) = registry.gate_failures(good, gates)
    assert "no real target recordings were evaluated" in none
    (low,) = registry.gate_failures(good | {"real_recall": 0.5}, gates)
    assert "recall on real recordings 0.5 < release.gates.min_real_recall 0.8" in low
    assert registry.gate_failures(good | {"real_recall": 0.85}, gates) == []


def test_params_check_names_a_compare_point_evaluate_does_not_measure() -> None:
    raw = shipped_params()
    raw["release"]["compare"]["recall"] = 0.8
    with pytest.raises(SoundopsError, match=r"release\.compare\.recall"):
        parse_params(raw)


def test_project_lock_refuses_a_second_holder_and_frees_on_exit(tmp_path: Path) -> None:
    import sys

    from pipeline_lib.release.project_lock import project_lock

    code = (
        "import sys, time; from pathlib import Path\n"
        "from pipeline_lib.release.project_lock import project_lock\n"
        "with project_lock(Path(sys.argv[1]), 'retrain'):\n"
        "    print('held', flush=True); time.sleep(30)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        refused = pytest.raises(SoundopsError, match=rf"another retrain \(pid {holder.pid}, since")
        with refused, project_lock(tmp_path, "build"):
            pass
    finally:
        holder.kill()
        holder.wait()
    # a killed holder's lock is gone; and the lock is re-entrant within one process
    with project_lock(tmp_path, "build"), project_lock(tmp_path, "build"):
        assert json.loads((tmp_path / ".soundops" / "build.lock").read_text())["what"] == "build"


def test_serve_deploys_schedules_from_params_and_retrain_on_the_regression_event(
    tmp_path: Path,
) -> None:
    from flows.monitor import EVENT
    from flows.serve import deployments

    raw = shipped_params()
    raw["release"]["schedules"] |= {"build": None, "monitor": "*/15 * * * *"}
    found = {d.name: d for d in deployments(tmp_path, parse_params(raw))}
    assert set(found) == {"soundops-build", "soundops-monitor", "soundops-retrain"}
    assert not found["soundops-build"].schedules
    (monitor,) = found["soundops-monitor"].schedules
    assert monitor.schedule.cron == "*/15 * * * *"
    (trigger,) = found["soundops-retrain"].triggers
    assert trigger.expect == {EVENT}
    assert trigger.parameters is not None and trigger.parameters["root"] == str(tmp_path)


def test_registry_commands_on_a_project_with_no_versions_say_so(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(shipped_params(), sort_keys=False))
    params = parse_params(shipped_params())
    configure(tmp_path, params)
    for call in (
        lambda: registry.rollback(params, "edge", tmp_path),
        lambda: registry.promote(params, "1", "edge", tmp_path),
    ):
        with pytest.raises(SoundopsError, match="no registered versions yet"):
            call()
    assert not (tmp_path / "releases").exists()
