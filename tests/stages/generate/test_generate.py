"""The generated corpus: deterministic, labelled as asked, and a source like any other."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import parse_params
from pipeline_lib.base.recipes import merge_keys
from pipeline_lib.stages.generate.corpus import generate_corpus
from pipeline_lib.stages.generate.phrases import confusables
from pipeline_lib.stages.generate.tts import SpeechSession
from tests.conftest import REPO, folder_digest


def tiny_demo(raw: dict[str, Any], per_label: int = 6) -> dict[str, Any]:
    """A generated corpus of a few clips per label and seconds-long streams."""
    raw = copy.deepcopy(raw)
    raw["generate"]["counts"] = dict.fromkeys(
        ("target", "confusable", "speech", "noise"), per_label
    )
    raw["generate"]["background"] |= {
        "train_minutes": 0,
        "val_minutes": 0.1,
        "test_minutes": 0.2,
        "mine_minutes": 0.2,
        "stream_minutes": 0.1,
    }
    return raw


def real_voice(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with the shipped real-voice preset's voices and perturbations merged in; the
    tiny corpus keeps its own clip counts and recording lengths."""
    import yaml

    preset = yaml.safe_load((REPO / "pipeline_lib/presets/real_voice.yaml").read_text("utf-8"))
    raw = copy.deepcopy(raw)
    voices = {k: v for k, v in preset["generate"].items() if k != "counts"}
    voices["background"] = {
        k: v for k, v in voices.get("background", {}).items() if not k.endswith("_minutes")
    }
    merge_keys(raw["generate"], voices)  # as the benchmark's --recipe merges it
    return raw


@pytest.mark.slow  # end to end: subprocesses or every engine
def test_deterministic_whatever_the_workers(tmp_path: Path, raw_params: dict[str, Any]) -> None:
    raw = real_voice(tiny_demo(raw_params))  # every engine and perturbation in play
    generate_corpus(parse_params(raw), Layout(tmp_path / "a"))
    raw["runtime"]["workers"] = 2
    generate_corpus(parse_params(raw), Layout(tmp_path / "b"))
    a, b = (
        folder_digest(tmp_path / "a" / "data" / "generated"),
        folder_digest(tmp_path / "b" / "data" / "generated"),
    )
    assert a == b and len(a) == 24 + 3 + 2 + 2  # clips, streams, mining pool, tables


def test_corpus_content(tmp_path: Path, raw_params: dict[str, Any]) -> None:
    layout = Layout(tmp_path)
    generate_corpus(parse_params(tiny_demo(raw_params)), layout)
    m = pd.read_csv(layout.generated / "manifest.csv", keep_default_na=False)
    clips = m[m["role"] == "clip"]
    assert clips["label"].value_counts().to_dict() == {
        "target": 6,
        "confusable": 6,
        "speech": 6,
        "noise": 6,
    }
    streams = m[m["role"] == "stream"]
    assert streams["split"].value_counts().to_dict() == {"test": 2, "val": 1}
    phrase = raw_params["generate"]["phrase"]
    targets = clips[clips["label"] == "target"]
    assert all(t.lower().strip("!?.").replace(",", "") == phrase for t in targets["text"])
    assert not set(clips.loc[clips["label"] == "confusable", "text"]) & {phrase}
    for row in targets.itertuples():  # speech is there, well above the noise bed
        x, rate = sf.read(str(layout.generated / row.path))
        assert rate == 22050 and x.size >= int(1.5 * rate)
        frames = np.sqrt(np.mean(x[: x.size // 441 * 441].reshape(-1, 441) ** 2, axis=1))
        assert frames.max() > 2 * np.percentile(frames, 10)
    stream, rate = sf.read(str(layout.generated / streams.iloc[0]["path"]))
    assert stream.size == pytest.approx(6.0 * rate, abs=2)


def test_val_and_test_recordings_take_their_own_share_of_near_phrase_words(
    tmp_path: Path, raw_params: dict[str, Any]
) -> None:
    """Operating points are set on val and measured on test at
    ``val_test_confusable_share``; the training and mining recordings keep
    ``confusable_share`` whatever the other is."""

    def streams(name: str, share: float, val_test: float) -> dict[str, bytes]:
        raw = tiny_demo(raw_params, per_label=0)
        raw["generate"]["background"] |= {
            "train_minutes": 0.1,
            "speech_share": 0.0,
            "confusable_share": share,
            "val_test_confusable_share": val_test,
        }
        layout = Layout(tmp_path / name)
        generate_corpus(parse_params(raw), layout)
        folder = layout.generated / "streams"
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.flac")}

    dense, both, none = streams("a", 1.0, 0.0), streams("b", 1.0, 1.0), streams("c", 0.0, 0.0)
    mine = [k for k in dense if k.split("/")[0] in ("train", "mine")]
    held = [k for k in dense if k.split("/")[0] in ("val", "test")]
    assert len(mine) == 3 and len(held) == 3
    assert all(dense[k] == both[k] for k in mine)  # train and mining: confusable_share alone
    assert all(dense[k] != both[k] for k in held)  # val and test: their own share ...
    assert all(dense[k] == none[k] for k in held)  # ... never confusable_share


def test_confusables_share_sounds_but_are_not_the_phrase() -> None:
    with SpeechSession() as session:
        found = confusables("amber lantern", ["lamp lighter"], session)
    assert {"amber", "lantern", "lantern amber", "lamp lighter"} <= set(found)
    assert "amber lantern" not in found
    assert any(c.endswith(" lantern") and c != "lantern" for c in found)


def test_unknown_voice_is_named(tmp_path: Path, raw_params: dict[str, Any]) -> None:
    raw = tiny_demo(raw_params)
    raw["generate"]["variants"] = ["m1", "nobody"]
    with pytest.raises(
        SoundopsError, match=r"generate\.variants: espeak-ng has no voice variant 'nobody'"
    ):
        generate_corpus(parse_params(raw), Layout(tmp_path))
    assert not (tmp_path / "data" / "generated").exists()


def test_dictionary_confusables_sound_near_but_never_hold_the_phrase() -> None:
    from pipeline_lib.stages.generate import confusables as cmu

    with SpeechSession() as session:
        found = confusables("alexa", [], session, dictionary="cmudict", per_word=30, min_phones=2)
    assert {"alexis", "lexus"} <= set(found)
    assert "flex" in found or "lex" in found  # a word part
    target = cmu.dictionary()["alexa"]
    for text in found:
        assert "alexa" not in text
        sounds = cmu.phones_of(text)
        assert sounds is not None and sounds != target  # no homophone
        assert cmu.edit_distance(sounds, target) >= 2
    # a word of a multi-word phrase gets its own dictionary neighbours; the rest stay
    with SpeechSession() as session:
        two = confusables("smart mirror", [], session, dictionary="cmudict", per_word=10)
    assert {"smart", "mirror"} <= set(two)
    assert any(t.startswith("smart ") and t != "smart mirror" for t in two)
    assert any(t.endswith(" mirror") and t != "smart mirror" for t in two)
    # a one-word swap must move a long phrase by a share of its sounds, not two phonemes
    whole = cmu.phones_of("smart mirror")
    assert whole is not None
    for text in two:
        sounds = cmu.phones_of(text)
        if sounds is not None:
            assert cmu.edit_distance(sounds, whole) >= 0.25 * max(len(sounds), len(whole))


def test_a_word_outside_the_dictionary_falls_back_to_the_lexicon() -> None:
    with SpeechSession() as session:
        found = confusables("snowboy", [], session, dictionary="cmudict")
    assert found and "snowboy" not in found


def test_piper_voice_is_a_function_of_its_generator() -> None:
    from pipeline_lib.stages.generate.piper_voice import RATE, PiperSpeaker, Rendition

    how = Rendition(length_scale=1.0, noise_scale=0.667, noise_w_scale=0.8)
    speaker = PiperSpeaker()
    first = speaker.speak("hello there", how, np.random.default_rng(5))
    speaker.speak("something else in between", how, np.random.default_rng(6))
    again = speaker.speak("hello there", how, np.random.default_rng(5))
    assert first.tobytes() == again.tobytes()  # no hidden state between utterances
    other = speaker.speak("hello there", how, np.random.default_rng(7))
    assert other.tobytes() != first.tobytes()  # the noise is the generator's
    assert first.size > 0.3 * RATE and np.abs(first).max() == pytest.approx(1.0)
    slow = speaker.speak("hello there", Rendition(1.4, 0.667, 0.8), np.random.default_rng(5))
    assert slow.size > first.size * 1.2  # the length scale is tempo


def test_kokoro_speakers_are_fixed_mixes_and_pure_functions() -> None:
    from pipeline_lib.stages.generate import kokoro_voice

    ipa = "h\u0259l\u02c8o\u028a \u00f0\u02c8\u025b\u0279"  # "hello there", espeak IPA
    first = kokoro_voice.speak(ipa, 3, 1.0, 22050)
    kokoro_voice.speak("s\u02c8\u028cm\u03b8\u026a\u014b", 9, 1.1, 22050)
    assert kokoro_voice.speak(ipa, 3, 1.0, 22050).tobytes() == first.tobytes()
    assert kokoro_voice.speak(ipa, 4, 1.0, 22050).tobytes() != first.tobytes()  # a speaker
    assert kokoro_voice.speak(ipa, 3, 1.25, 22050).size < first.size * 0.9  # speed is tempo
    assert first.size > 0.3 * 22050 and np.abs(first).max() == pytest.approx(1.0, abs=0.02)
    style = kokoro_voice.speaker_style(3)
    assert style.shape[1] == 256 and np.array_equal(style, kokoro_voice.speaker_style(3))
    # diphthongs and affricates become Kokoro's single symbols, not two tokens
    assert len(kokoro_voice.tokens("d\u0292e\u026a")) == 2


@pytest.mark.slow  # end to end: subprocesses or every engine
def test_corpus_mixes_engines_accents_and_microphones(
    tmp_path: Path, raw_params: dict[str, Any]
) -> None:
    raw = real_voice(tiny_demo(raw_params, per_label=12))
    raw["generate"]["piper"]["clip_share"] = 0.4
    raw["generate"]["kokoro"]["clip_share"] = 0.4
    raw["generate"]["accent_share"] = 0.5
    layout = Layout(tmp_path)
    generate_corpus(parse_params(raw), layout)
    m = pd.read_csv(layout.generated / "manifest.csv", keep_default_na=False)
    spoken = m[(m["role"] == "clip") & (m["label"] != "noise")]
    groups = set(spoken["group"])
    assert any(g.startswith("piper-") for g in groups)
    assert any(g.startswith("kokoro-") for g in groups)
    neural = ("piper-", "kokoro-")
    accents = {g.split("+")[0] for g in groups if not g.startswith(neural)}
    assert accents & set(raw["generate"]["accent_voices"]) and accents & set(
        raw["generate"]["voices"]
    )
    # a voice is no cue for the label: piper speaks targets and negatives alike
    by_label = spoken.assign(piper=spoken["group"].str.startswith("piper-"))
    assert by_label.groupby("label")["piper"].any().all()


def test_unknown_accent_voice_is_named(tmp_path: Path, raw_params: dict[str, Any]) -> None:
    raw = tiny_demo(raw_params)
    raw["generate"]["accent_voices"] = ["de", "xx"]
    with pytest.raises(SoundopsError, match=r"generate\.accent_voices: espeak-ng has no voice"):
        generate_corpus(parse_params(raw), Layout(tmp_path))
    assert not (tmp_path / "data" / "generated").exists()


def test_every_noise_kind_is_finite_unit_rms_and_deterministic() -> None:
    from pipeline_lib.stages.generate import noise as nz

    rate, n = 22050, 22050
    for kind in nz.NOISE_KINDS:
        a = nz.make_noise(np.random.default_rng(3), kind, n, rate)
        b = nz.make_noise(np.random.default_rng(3), kind, n, rate)
        assert a.shape == (n,) and np.isfinite(a).all() and a.tobytes() == b.tobytes(), kind
        assert np.sqrt(np.mean(a.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-3)
    # a machine is tonal: its spectrum is peakier than white noise's
    spec = np.abs(np.fft.rfft(nz.make_noise(np.random.default_rng(1), "motor", n, rate)))
    white = np.abs(np.fft.rfft(nz.make_noise(np.random.default_rng(1), "white", n, rate)))
    assert spec.max() / np.median(spec) > 5 * white.max() / np.median(white)
