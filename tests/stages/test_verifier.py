"""The speech-embedding verifier: embeddings that depend only on their samples, a head
that round-trips as plain arrays, and a stage that learns the phrase from a tiny corpus."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline_lib.audio import speech_embedding
from pipeline_lib.audio.speech_embedding import STEP_SAMPLES, SpeechEmbedder, span_samples
from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import Params
from pipeline_lib.detect import verifier_model
from pipeline_lib.stages import verifier
from tests.chirp_model import scene
from tests.stages.generate.test_generate import tiny_demo

Project = Callable[[dict[str, Any]], tuple[Params, Layout]]


@pytest.fixture(scope="module")
def embedder() -> SpeechEmbedder:
    return SpeechEmbedder(n_threads=1)


def test_embedding_rows_depend_only_on_their_samples(
    embedder: SpeechEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = scene(6.0, [1.0, 3.5], seed=3, decoys_at=[2.2])
    whole = embedder.embed(x)
    assert whole.shape == ((x.size - span_samples(1)) // STEP_SAMPLES + 1, 96)
    assert np.isfinite(whole).all() and whole.std() > 0
    later = embedder.embed(x[5 * STEP_SAMPLES :])  # the same samples from row 5 on
    np.testing.assert_allclose(later, whole[5 : 5 + later.shape[0]], atol=1e-4)
    monkeypatch.setattr(speech_embedding, "CHUNK_S", 0.7)  # mel in many small pieces
    np.testing.assert_allclose(embedder.embed(x), whole, atol=1e-4)
    assert embedder.embed(x[: span_samples(1) - 1]).shape == (0, 96)


def _head(rng: np.random.Generator, threshold: float = 0.4) -> verifier_model.Head:
    dim = verifier_model.HEAD_STEPS * 96
    return verifier_model.Head(
        mean=rng.normal(size=dim).astype(np.float32),
        std=rng.uniform(0.5, 2, dim).astype(np.float32),
        w1=rng.normal(size=(dim, 8)).astype(np.float32),
        b1=rng.normal(size=8).astype(np.float32),
        w2=rng.normal(size=(8, 1)).astype(np.float32),
        b2=np.zeros(1, np.float32),
        threshold=threshold,
    )


def test_head_round_trips_as_arrays_and_refuses_other_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    head = _head(rng)
    head.save(tmp_path / "v.npz")
    back = verifier_model.Head.load(tmp_path / "v.npz")
    w = rng.normal(size=(5, verifier_model.HEAD_STEPS, 96)).astype(np.float32)
    np.testing.assert_array_equal(back.scores(w), head.scores(w))
    assert back.threshold == pytest.approx(0.4)
    (tmp_path / "text.npz").write_text("not arrays")
    with pytest.raises(SoundopsError, match=r"text\.npz: not a soundops verifier"):
        verifier_model.Head.load(tmp_path / "text.npz")
    np.savez(tmp_path / "obj.npz", mean=np.array([{"a": 1}], dtype=object))  # a pickle inside
    with pytest.raises(SoundopsError, match=r"obj\.npz: not a soundops verifier"):
        verifier_model.Head.load(tmp_path / "obj.npz")


def _corpus(make_project: Project, raw: dict[str, Any], enabled: bool) -> tuple[Params, Layout]:
    from pipeline_lib.stages.generate.corpus import generate_corpus
    from pipeline_lib.stages.ingest import run_ingest
    from pipeline_lib.stages.split import run_split
    from pipeline_lib.stages.validate import run_validate

    raw = tiny_demo(raw, per_label=40)
    raw["generate"]["background"] |= {"train_minutes": 1.0, "val_minutes": 1.0, "test_minutes": 1.0}
    raw["runtime"] |= {"workers": 2, "threads": 1}
    raw["split"]["ratios"] = {"train": 0.6, "val": 0.2, "test": 0.2}
    raw["validate"] |= {
        "min_clips_per_label": 10,
        "min_clips_per_split": 0,
        "stream_min_duration_s": 5,
    }
    raw["verifier"] |= {"enabled": enabled, "target_fah": 30.0, "epochs": 15}
    params, layout = make_project(raw)
    if enabled:
        for stage in (generate_corpus, run_ingest, run_validate, run_split):
            stage(params, layout)
    return params, layout


@pytest.mark.slow
def test_the_stage_learns_the_phrase_and_sets_its_threshold_on_validation_audio(
    make_project: Project, raw_params: dict[str, Any]
) -> None:
    params, layout = _corpus(make_project, raw_params, enabled=True)
    summary = verifier.run_verifier(params, layout)
    head = verifier_model.Head.load(layout.data / "verifier" / "verifier.npz")
    assert head.threshold == pytest.approx(summary["threshold"])
    assert 0 < head.threshold < 1
    on_disk = json.loads((layout.metrics / "verifier.json").read_text())
    assert on_disk["test"]["recall"] == pytest.approx(summary["test"]["recall"])
    # espeak "amber lantern" against its confusables and other speech, voices split apart
    assert summary["test"]["targets"] >= 5
    assert summary["test"]["recall"] >= 0.5, summary["test"]
    assert summary["test"]["negative_clip_accept_rate"] <= 0.3, summary["test"]
    assert summary["train"]["background_windows"] > 0
    # a clip of a target from the test split scores above one of its confusables
    frame = __import__("pandas").read_csv(layout.manifest)
    from pipeline_lib.audio.io import read_audio

    target = frame[frame["label"] == "target"]["path"].iloc[0]
    silence = np.zeros(8000, np.float32)  # shorter than a window: padded, scored once
    assert verifier_model.clip_score(head, read_audio(layout.ingest / target).samples) > (
        verifier_model.clip_score(head, silence)
    )


def test_a_stage_that_is_off_says_so_and_writes_no_head(
    make_project: Project, raw_params: dict[str, Any]
) -> None:
    params, layout = _corpus(make_project, raw_params, enabled=False)
    assert verifier.run_verifier(params, layout) == {"enabled": False}
    assert json.loads((layout.metrics / "verifier.json").read_text()) == {"enabled": False}
    assert not (layout.data / "verifier" / "verifier.npz").exists()


def test_a_version_with_a_verifier_is_verified_by_it_on_the_service(
    tmp_path: Path, chirp_export: Path, embedder: SpeechEmbedder
) -> None:
    """A head trained here on rising chirps (the target) against falling ones and noise,
    shipped beside the chirp detector: ``/v1/verify`` reports and follows its decision."""
    import shutil

    import yaml
    from fastapi.testclient import TestClient

    from pipeline_lib.base.params import parse_params
    from pipeline_lib.serve.app import create_app
    from pipeline_lib.serve.models import Models
    from tests import chirp_model
    from tests.conftest import shipped_params
    from tests.serve.test_service import wav_bytes

    rng = np.random.default_rng(0)

    def clip(rising: bool | None) -> np.ndarray:
        x = rng.normal(0, 10 ** rng.uniform(-3, -2), int(2.2 * 16000)).astype(np.float32)
        if rising is not None:
            at = int(rng.uniform(0.4, 1.2) * 16000)
            x[at : at + 9600] += chirp_model.chirp(rising, amp=float(rng.uniform(0.1, 0.5)))
        return x

    def wins(rising: bool | None, n: int) -> np.ndarray:
        return np.concatenate(
            [verifier_model.windows_of(embedder.embed(clip(rising))) for _ in range(n)]
        )

    raw = shipped_params()
    params = parse_params(raw)
    weights, _ = verifier._train_head(
        wins(True, 30), np.concatenate([wins(False, 30), wins(None, 30)]), params
    )
    folder = tmp_path / "export"
    shutil.copytree(chirp_export, folder)
    verifier_model.Head(**weights, threshold=0.5).save(folder / "verifier.npz")
    root = tmp_path / "service"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    chirp_model.publish(root, params, folder)
    service = params.service
    with TestClient(create_app(Models(root, params, service), params, service, None)) as c:
        assert c.get("/v1/model").json()["verifier"] == {
            "kind": "speech-embedding",
            "threshold": 0.5,
        }
        yes = [c.post("/v1/verify", content=wav_bytes(clip(True))).json() for _ in range(4)]
        no = [c.post("/v1/verify", content=wav_bytes(clip(False))).json() for _ in range(4)]
    for r in yes:
        assert r["label"] == "target" and r["verifier"]["score"] >= 0.5, r
    for r in no:
        assert r["label"] == "other" and r["verifier"]["score"] < 0.5, r
