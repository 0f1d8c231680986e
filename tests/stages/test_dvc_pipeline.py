"""The stage graph under real DVC in a throw-away git repo: repro, no-op, targeted reruns,
the gate stopping the pipeline, and a push to a local remote."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from pipeline_lib.base.layout import Layout
from tests.conftest import REPO, shipped_params
from tests.stages.generate.test_generate import tiny_demo

pytestmark = pytest.mark.slow


def tiny(raw: dict[str, Any]) -> dict[str, Any]:
    raw = tiny_demo(raw, per_label=12)
    raw["runtime"]["workers"] = 2
    raw["augment"] |= {"views": 1, "stream_windows": 50}
    raw["train"] |= {"epochs": 2, "batch_size": 16}
    raw["model"] = {"arch": "stream_dscnn", "options": {"channels": 8, "blocks": 2}}
    raw["mine"] |= {"threshold": 0.01, "max_clips": 5}
    # A two-epoch model's scores sit near any threshold, so INT8 may flip decisions; the
    # stage is gated on TFLM-vs-onnxruntime agreement only (test_export pins the rest:
    # there a trained DS-CNN agrees within one step on every window).
    raw["export"] |= {"representative": 32, "tflm_background_minutes": 1}
    raw["export"]["gates"] |= {
        "max_fah_increase": 1e6,
        "max_recall_drop": 1.0,
        "min_decision_agreement": 0.0,
        "max_stream_mean_steps": 1e6,
    }
    raw["validate"] |= {
        "stream_min_duration_s": 5,
        "min_clips_per_label": 10,
        "min_clips_per_split": 0,
        "min_groups_per_label": 2,
    }
    return raw


class Project:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = os.environ | {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "GX_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            cmd,
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def repro(self, check: bool = True) -> tuple[int, str]:
        proc = self.run("dvc", "repro", check=check)
        return proc.returncode, proc.stdout + proc.stderr

    def edit(self, section: str, key: str, value: Any) -> None:
        path = self.root / "params.yaml"
        raw = yaml.safe_load(path.read_text())
        raw[section][key] = value
        path.write_text(yaml.safe_dump(raw, sort_keys=False))


ALL = (
    "generate",
    "ingest",
    "validate",
    "split",
    "extract",
    "train",
    "calibrate",
    "evaluate",
    "mine",
    "verifier",
    "export",
)


def ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def init_project(proj: Project, raw: dict[str, Any]) -> Project:
    """The stage graph, its code (a DVC dependency) and params in a new git + DVC repo."""
    root = proj.root
    shutil.copy(REPO / "dvc.yaml", root)
    shutil.copytree(
        REPO / "pipeline_lib", root / "pipeline_lib", ignore=shutil.ignore_patterns("__pycache__")
    )
    (root / "data" / "raw").mkdir(parents=True)
    (root / "data" / "raw" / "README.md").write_text("raw recordings\n")
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    proj.run("git", "init", "-q")
    proj.run("dvc", "init", "-q")
    proj.run("dvc", "config", "core.analytics", "false")
    return proj


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    root = tmp_path_factory.mktemp("dvcproj")
    proj = init_project(Project(root), tiny(shipped_params()))
    proj.run("dvc", "remote", "add", "-d", "local", str(root.parent / f"{root.name}-remote"))
    return proj


def test_repro_builds_then_does_nothing(project: Project) -> None:
    code, out = project.repro()
    assert ran(out) == set(ALL)
    layout = Layout(project.root)
    assert layout.assignment.is_file() and layout.gate.is_file()
    assert (project.root / "metrics" / "split.json").is_file()
    assert (layout.calibration / "calibration.json").is_file()
    assert (layout.evaluate / "report.html").is_file()
    assert (project.root / "metrics" / "evaluate.json").is_file()
    assert (layout.mine / "mined.csv").is_file()
    for name in ("model_int8.tflite", "model_data.cc", "device_manifest.json", "model_card.md"):
        assert (layout.export / name).is_file()
    code, out = project.repro()
    assert code == 0 and ran(out) == set()
    project.run("dvc", "push", "-q")
    remote = project.root.parent / f"{project.root.name}-remote"
    assert sum(1 for p in remote.rglob("*") if p.is_file()) > 48


def test_params_rerun_only_their_stages(project: Project) -> None:
    project.repro()
    project.edit("validate", "min_rms_dbfs", -75.0)
    _, out = project.repro()
    assert ran(out) == {"validate"}  # the gate still passes for the same manifest
    project.edit("calibrate", "smoothing", [1, 3])
    _, out = project.repro()  # evaluate and mine follow only if calibration.json changed
    assert {"calibrate"} <= ran(out) <= {"calibrate", "evaluate", "mine", "export"}
    project.edit("evaluate", "worst", 3)
    _, out = project.repro()
    assert ran(out) == {"evaluate"}
    project.edit("split", "salt", "another")
    _, out = project.repro()
    assert ran(out) == set(ALL[3:])
    project.edit("ingest", "normalize_peak_dbfs", -3.0)
    _, out = project.repro()
    assert ran(out) == set(ALL[1:])


def test_gate_failure_stops_the_pipeline(project: Project) -> None:
    project.repro()
    project.edit("validate", "min_clips_per_label", 1000)
    code, out = project.repro(check=False)
    assert code != 0
    assert "min_clips_per_label" in out and "Traceback" not in out
    assert "split" not in ran(out)
    project.edit("validate", "min_clips_per_label", 10)
    code, _ = project.repro()
    assert code == 0


def test_mine_accept_then_repro_trains_on_hard_negatives(project: Project) -> None:
    project.repro()
    layout = Layout(project.root)
    mined = pd.read_csv(layout.mine / "mined.csv", dtype={"id": str})
    assert len(mined) >= 1 and mined["model_hash"].nunique() == 1
    project.run("soundops", "mine", "accept")
    folder = project.root / "data" / "raw" / "hard_negatives"
    assert sorted(p.stem for p in (folder / "confusable").glob("*.wav")) == sorted(mined["id"])
    assert (project.root / "data" / "raw" / "hard_negatives.dvc").is_file()
    _, out = project.repro()
    assert ran(out) >= {"ingest", "validate", "split", "extract", "train", "calibrate"}
    manifest = pd.read_csv(layout.manifest, dtype=str, keep_default_na=False)
    hard = manifest[manifest["source"] == "hard_negatives"]
    assert len(hard) == len(mined) and set(hard["label"]) == {"confusable"}
    split = pd.read_csv(layout.assignment, dtype=str).set_index("id")["split"]
    assert set(split[hard["id"]]) == {"train"}  # mined audio never lands in val or test


class Reads:
    """A params object that records every key read through it (``section.key...``): a
    sub-model read as a whole (a method called on it, or passed on) counts as its key."""

    def __init__(self, obj: Any, key: str, seen: set[str]) -> None:
        self._obj, self._key, self._seen = obj, key, seen

    def __getattr__(self, name: str) -> Any:
        from pydantic import BaseModel

        value = getattr(self._obj, name)
        fields = type(self._obj).model_fields
        if name not in fields:  # a method or property: reads the whole model
            self._seen.add(self._key or "*")
            return value
        spelled = fields[name].alias or name  # params.yaml's key: `validate`, not `validate_`
        key = f"{self._key}.{spelled}" if self._key else spelled
        if isinstance(value, BaseModel):
            return Reads(value, key, self._seen)
        self._seen.add(key)
        return value


# Keys a stage lists but reads only when an option the default project leaves off is on:
# listing them keeps the stage rerunning when they change under that option.
CONDITIONAL = {
    "train": {  # read only with train.early_stop: val_recall_at_fah
        "calibrate.preset": "early stop on recall at a FAH",
        "calibrate.presets": "early stop on recall at a FAH",
        "calibrate.hop_s": "early stop on recall at a FAH",
        "calibrate.refractory_s": "early stop on recall at a FAH",
    },
    "verifier": {  # the stage writes an empty record when verifier.enabled is false
        "seed": "verifier.enabled",
        "task": "verifier.enabled",
        "calibrate.refractory_s": "verifier.enabled",
        "calibrate.fah_confidence": "verifier.enabled",
    },
}


def _covers(listed: str, read: str) -> bool:
    return read == listed or read.startswith(f"{listed}.")


def test_each_stage_reads_exactly_the_params_it_lists(project: Project, tmp_path: Path) -> None:
    """Every params key a stage reads is listed in its ``params`` (``runtime`` is not a DVC
    param), and every listed key is read: each stage run in-process on a copy of the
    built project, through a params object that records what it is asked for."""
    from pipeline_lib.base.params import load_params
    from pipeline_lib.stages import STAGES

    project.repro()
    root = tmp_path / "copy"
    shutil.copytree(project.root, root, ignore=shutil.ignore_patterns(".dvc", ".git"))
    raw = yaml.safe_load((root / "params.yaml").read_text("utf-8"))
    raw["runtime"]["workers"] = 1  # one process: reads in pool workers would go unrecorded
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text("utf-8"))["stages"]
    problems = []
    for name in ALL:
        seen: set[str] = set()
        STAGES[name](Reads(load_params(root / "params.yaml"), "", seen), Layout(root))
        read = {k for k in seen if k.split(".")[0] != "runtime"}
        listed = [str(k) for k in spec[name].get("params") or []]
        missed = sorted(r for r in read if not any(_covers(k, r) for k in listed))
        unread = sorted(
            k
            for k in listed
            if not any(_covers(k, r) or _covers(r, k) for r in read)
            and k not in CONDITIONAL.get(name, {})
        )
        if missed:
            problems.append(f"{name} reads {', '.join(missed)} but dvc.yaml does not list it")
        if unread:
            problems.append(f"{name} lists {', '.join(unread)} but never reads it")
    assert not problems, "\n".join(problems)
