"""Training on a tiny generated feature store: it learns, and a killed run resumes to the
same weights as an unbroken one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipeline_lib.base.errors import ParamsError
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import parse_params
from pipeline_lib.detect.checkpoint import load_model
from pipeline_lib.stages.train import band_limit, mel_warp, pauc, run_train

FRAMES, BINS = 148, 40


def write_store(layout: Layout, n_train: int, n_val: int) -> None:
    """Features where the target class carries a bright band the model can learn."""
    out = layout.features
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        labels = np.array(["target", "speech", "noise", "confusable"])[np.arange(n) % 4]
        x = rng.normal(0, 1, (n, FRAMES, BINS)).astype(np.float32)
        x[labels == "target", 50:90, 10:16] += 2.5
        np.save(out / f"{split}.npy", x.astype(np.float16), allow_pickle=False)
        pd.DataFrame(
            {
                "id": [f"{split}{i}" for i in range(n)],
                "view": 0,
                "label": labels,
                "class": (labels == "target").astype(int),
                "group": [f"g{i}" for i in range(n)],
            }
        ).to_csv(out / f"{split}.csv", index=False)
    (out / "norm.json").write_text(json.dumps({"mean": [0.0] * BINS, "std": [1.0] * BINS}))


def tiny_train(raw: dict[str, Any], epochs: int) -> dict[str, Any]:
    raw["model"] = {"arch": "tcresnet8", "options": {}}
    raw["train"] |= {"epochs": epochs, "batch_size": 16, "patience": 100, "warmup_epochs": 0.5}
    return raw


def test_training_learns_and_saves_a_loadable_model(
    tmp_path: Path, raw_params: dict[str, Any]
) -> None:
    layout = Layout(tmp_path)
    write_store(layout, 256, 64)
    summary = run_train(parse_params(tiny_train(raw_params, 4)), layout)
    assert summary["val_pauc"] > 0.9 and summary["epochs_run"] == 4
    _, spec = load_model(layout.model)
    assert spec.classes == {
        "other": ["confusable", "speech", "noise", "background"],
        "target": ["target"],
    }
    assert (spec.frames, spec.bins) == (FRAMES, BINS)
    assert (layout.model / "curves.png").stat().st_size > 1000
    curves = pd.read_csv(layout.metrics / "train_curves.csv")
    assert list(curves["epoch"]) == [1, 2, 3, 4]


def test_train_seed_retrains_the_same_corpus_and_null_is_the_project_seed(
    tmp_path: Path, raw_params: dict[str, Any]
) -> None:
    """``train.seed`` gives other initial weights and batches on the same feature store (a
    seed's spread without a new corpus); null trains exactly as the project's seed does."""
    weights = {}
    for name, seed in (("null", None), ("same", raw_params["seed"]), ("other", 7)):
        layout = Layout(tmp_path / name)
        write_store(layout, 64, 16)
        raw = tiny_train(raw_params, 1)
        raw["train"]["seed"] = seed
        run_train(parse_params(raw), layout)
        weights[name] = load_file(str(layout.model / "model.safetensors"))
    a, b, c = weights["null"], weights["same"], weights["other"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_ensemble_distillation_trains_its_teachers_as_plain_seeds(
    tmp_path: Path, raw_params: dict[str, Any]
) -> None:
    """``train.distill.ensemble`` n trains n teachers first, each exactly the plain model of
    its seed (seed..seed+n-1), in its own checkpoint folder; the student learns from their
    mean and ends elsewhere than the plain model of its own seed."""
    plain = {}
    for seed in (5, 6):
        layout = Layout(tmp_path / f"plain{seed}")
        write_store(layout, 64, 16)
        raw = tiny_train(raw_params, 1)
        raw["train"]["seed"] = seed
        run_train(parse_params(raw), layout)
        plain[seed] = load_file(str(layout.model / "model.safetensors"))

    layout = Layout(tmp_path / "student")
    write_store(layout, 64, 16)
    raw = tiny_train(raw_params, 1)
    raw["train"]["seed"] = 5
    raw["train"]["distill"] |= {"ensemble": 2, "alpha": 0.9, "temperature": 2.0}
    seen: list[str] = []
    summary = run_train(parse_params(raw), layout, on_epoch=lambda row, _: seen.extend(row))
    assert summary["teachers"] == 2
    for seed in (5, 6):
        teacher = load_file(str(layout.train_state / f"teacher-{seed}" / "best.safetensors"))
        assert all(torch.equal(teacher[k], plain[seed][k]) for k in teacher)
    student = load_file(str(layout.model / "model.safetensors"))
    assert not all(torch.equal(student[k], plain[5][k]) for k in student)
    assert "teacher1_val_loss" in seen and "teacher2_val_loss" in seen and "val_loss" in seen

    # another temperature retrains the student and reuses the finished teachers
    raw["train"]["distill"]["temperature"] = 4.0
    seen.clear()
    run_train(parse_params(raw), layout, on_epoch=lambda row, _: seen.extend(row))
    assert "teacher1_val_loss" not in seen and "val_loss" in seen
    again = load_file(str(layout.model / "model.safetensors"))
    assert not all(torch.equal(again[k], student[k]) for k in again)


def test_distill_takes_one_kind_of_teacher(raw_params: dict[str, Any]) -> None:
    raw = tiny_train(raw_params, 1)
    raw["train"]["distill"] |= {"ensemble": 2, "teacher": "data/model"}
    with pytest.raises(ParamsError, match=r"train\.distill.: set teacher or ensemble, not both"):
        parse_params(raw)


def _project(root: Path, raw: dict[str, Any]) -> Layout:
    layout = Layout(root)
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    write_store(layout, 768, 64)
    return layout


def _train_cmd(root: Path) -> list[str]:
    return [str(Path(sys.executable).parent / "soundops"), "stage", "train", "--root", str(root)]


@pytest.mark.slow  # end to end: subprocesses or every engine
def test_killed_training_resumes_to_the_same_weights(
    tmp_path: Path, raw_params: dict[str, Any]
) -> None:
    raw = tiny_train(raw_params, 8)
    raw["runtime"]["workers"] = 1
    env = os.environ | {"TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    whole = _project(tmp_path / "whole", raw)
    subprocess.run(_train_cmd(whole.root), env=env, check=True, capture_output=True, timeout=600)

    broken = _project(tmp_path / "broken", raw)
    proc = subprocess.Popen(
        _train_cmd(broken.root), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    meta = broken.train_state / "last.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if meta.is_file() and json.loads(meta.read_text())["history"]["epoch"] >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = json.loads(meta.read_text())["history"]["epoch"]
    assert 2 <= stopped_at < 8, "the run must be killed part-way"
    assert not (broken.model / "model.safetensors").exists()
    done = subprocess.run(
        _train_cmd(broken.root), env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert f"resuming after epoch {stopped_at}" in done.stderr
    a = load_file(str(whole.model / "model.safetensors"))
    b = load_file(str(broken.model / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mel_warp_moves_a_formant_by_the_factor() -> None:
    """VTLP: output bin k reads bin k * alpha, so a band at bin 10 lands at 20 for alpha
    0.5 (a shorter vocal tract: formants up) and at 8 for 1.25; alpha 1 changes nothing."""
    x = torch.zeros(3, 4, BINS)
    x[:, :, 10] = 1.0
    y = mel_warp(x, torch.tensor([1.0, 0.5, 1.25]))
    assert torch.equal(y[0], x[0])
    assert int(y[1, 0].argmax()) == 20 and float(y[1, 0, 20]) == 1.0
    assert int(y[2, 0].argmax()) == 8 and y.shape == x.shape
    # the top bins read past the axis: they repeat the last bin, never wrap around
    ramp = torch.arange(BINS, dtype=torch.float32).expand(1, 4, BINS)
    assert float(mel_warp(ramp, torch.tensor([1.5]))[0, 0, -1]) == BINS - 1


def test_band_limit_leaves_the_noise_floor_above_the_cut() -> None:
    """A narrow-band microphone: bins at or above the cut keep only their quietest frame
    (the voice is gone, the noise floor stays); below it, and for a cut at the top, the
    window is untouched."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 6, BINS, generator=gen) + 1.0
    x[:, 3, :] = 5.0  # a loud frame of voice in every bin
    y = band_limit(x, torch.tensor([BINS, 12]))
    assert torch.equal(y[0], x[0]) and torch.equal(y[1, :, :12], x[1, :, :12])
    floor = x[1, :, 12:].amin(dim=0)
    assert torch.equal(y[1, :, 12:], floor.expand(6, -1)) and float(y[1, 3, 12:].max()) < 5.0


def test_pauc_bounds() -> None:
    y = np.array([0, 0, 0, 1, 1, 1], bool)
    assert pauc(np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), y, 0.1) == pytest.approx(1.0)
    assert pauc(np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.3]), y, 0.1) == pytest.approx(0.0)
