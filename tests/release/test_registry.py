"""Registry rules without a server: which gates a version's figures fail, when a
challenger beats the champion, and what the commands say before anything is registered."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.params import parse_params
from pipeline_lib.release import registry
from pipeline_lib.release.tracking import configure
from tests.conftest import shipped_params


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
    raw["release"]["compare"]["by"] = "frr_at_fah"
    by_frr = parse_params(raw)
    a = _version(2, "aaa", **{"frr_at_fah_1.0": 0.05})
    b = _version(1, "aaa", **{"frr_at_fah_1.0": 0.1})
    assert registry.better(a, b, by_frr)[0] and not registry.better(b, a, by_frr)[0]
    assert "0.0500 vs champion 0.1000 (lower wins)" in registry.better(a, b, by_frr)[1]
    unmeasured = registry.better(_version(3, "aaa"), b, by_frr)
    assert not unmeasured[0] and "not measured" in unmeasured[1]


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
