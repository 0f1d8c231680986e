"""Synthesise the corpus from the phrase: FLAC files plus a manifest that ingest reads.

Positives are the target phrase spoken by espeak-ng (English voices, other languages'
voices reading English for accents, variants, rates and pitches) and by a neural piper
voice (noise and length scales varied), each utterance moved to a new vocal-tract length
and most through a random microphone or line (:mod:`pipeline_lib.generate.perturb`).
Negatives are phonetic confusables, other speech and non-speech noise, spoken and
perturbed the same way; long background streams (speech, confusables and noise, never
the target) measure false alarms. Every file is a pure function of (seed, kind, index)
and of the fixed batch it is spoken in (fresh engines per batch of clips or per stream,
see :mod:`pipeline_lib.tts` and :mod:`pipeline_lib.generate.piper_voice`), so the corpus is
byte-identical whatever the number of workers.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from pipeline_lib.base.atomic import atomic_path, write_csv, write_json
from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.parallel import pmap
from pipeline_lib.base.params import GenerateParams, Params
from pipeline_lib.stages.generate import kokoro_voice, perturb, phrases, piper_voice, tts
from pipeline_lib.stages.generate import noise as nz
from pipeline_lib.stages.generate.piper_voice import PiperSpeaker

log = logging.getLogger(__name__)

KIND_INDEX = {"target": 0, "confusable": 1, "speech": 2, "noise": 3, "background": 4}


@dataclass(frozen=True)
class Texts:
    target: tuple[str, ...]
    confusable: tuple[str, ...]
    speech: tuple[str, ...]
    words: tuple[str, ...]


BATCH = 50  # clips per espeak-ng session; part of what the corpus is a function of


@dataclass(frozen=True)
class ClipJob:
    kind: str
    start: int
    stop: int
    seed: int
    out: Path
    gen: GenerateParams
    texts: Texts


@dataclass(frozen=True)
class StreamJob:
    split: str
    index: int
    seconds: float
    seed: int
    out: Path
    gen: GenerateParams
    texts: Texts


class Voices:
    """The speech engines of one batch or stream: a fresh espeak-ng session, and the
    process's piper voice, loaded on first use (batches of noise never need it)."""

    def __init__(self, gen: GenerateParams) -> None:
        self.gen = gen
        self.espeak = tts.SpeechSession()
        self._piper: PiperSpeaker | None = None

    def piper(self) -> PiperSpeaker:
        if self._piper is None:
            self._piper = PiperSpeaker()
        return self._piper

    def close(self) -> None:
        self.espeak.close()

    def pick(
        self, rng: np.random.Generator, piper_share: float, kokoro_share: float = 0.0
    ) -> tuple[str, Fraction]:
        """A speaker: its group (the unit the split keeps in one split; for espeak-ng the
        voice+variant to speak with) and its vocal-tract factor.

        A feature that is off draws no random number, and the voice is drawn before the
        text as it always was: the quick recipe's corpus is byte-identical to the one it
        was before piper, accents and perturbations existed."""
        gen = self.gen
        vtl = gen.perturb.vtl
        factor = (
            perturb.vtl_factor(rng, vtl.min, vtl.max)
            if vtl.min != vtl.max
            else Fraction(round(vtl.min * perturb.VTL_STEP), perturb.VTL_STEP)
        )
        if piper_share > 0 and rng.random() < piper_share:
            # one speaker made many: each band of vocal-tract factors is its own group
            return f"{PIPER}{piper_voice.VOICE}-vtl{round(float(factor) * 20)}", factor
        if kokoro_share > 0 and rng.random() < kokoro_share:
            who = int(rng.integers(kokoro_voice.SPEAKERS))
            return f"{KOKORO}{who:02d}-vtl{round(float(factor) * 20)}", factor
        accent = (
            gen.accent_share > 0 and bool(gen.accent_voices) and rng.random() < gen.accent_share
        )
        voices = gen.accent_voices if accent else gen.voices
        return f"{rng.choice(voices)}+{rng.choice(gen.variants)}", factor

    def say(self, rng: np.random.Generator, text: str, speaker: tuple[str, Fraction]) -> np.ndarray:
        """``text`` by a speaker from :meth:`pick`, moved to its vocal-tract length;
        trimmed samples at :data:`tts.RATE`."""
        gen, (group, factor) = self.gen, speaker
        if group.startswith(PIPER):
            p = gen.piper
            how = piper_voice.Rendition(
                length_scale=float(rng.uniform(p.length_scale.min, p.length_scale.max)),
                noise_scale=float(rng.uniform(p.noise_scale.min, p.noise_scale.max)),
                noise_w_scale=float(rng.uniform(p.noise_w_scale.min, p.noise_w_scale.max)),
            )
            speech = self.piper().speak(text, how, rng)
        elif group.startswith(KOKORO):
            who = int(group[len(KOKORO) :].split("-", 1)[0])
            speed = float(rng.uniform(gen.kokoro.speed.min, gen.kokoro.speed.max))
            parts = [
                kokoro_voice.speak(ipa, who, speed, tts.RATE) for ipa in self.piper().phonemes(text)
            ]
            speech = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        else:
            wpm = int(rng.uniform(gen.rate_wpm.min, gen.rate_wpm.max))
            pitch = int(rng.uniform(gen.pitch.min, gen.pitch.max))
            spread = int(rng.uniform(20, 80))
            speech = self.espeak.speak(text, group, wpm, pitch, pitch_range=spread)
        return _trim(perturb.vocal_tract(speech, factor))


PIPER = "piper-"
KOKORO = "kokoro-"


def _mic(rng: np.random.Generator, gen: GenerateParams, x: np.ndarray) -> np.ndarray:
    """The clip through a random microphone or line (or none), at the same peak."""
    if gen.perturb.channel_prob <= 0 or rng.random() >= gen.perturb.channel_prob:
        return x
    peak = float(np.abs(x).max())
    y = perturb.channel(x, tts.RATE, str(rng.choice(perturb.CHANNELS)), rng)
    out_peak = float(np.abs(y).max())
    return y * np.float32(peak / out_peak) if out_peak > 0 else y


def _trim(x: np.ndarray, floor: float = 1e-3) -> np.ndarray:
    idx = np.flatnonzero(np.abs(x) > floor)
    return x[idx[0] : idx[-1] + 1] if idx.size else x[:0]


def _place(rng: np.random.Generator, sig: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.float32)
    if sig.size >= n:
        out[:] = sig[:n]
        return out
    start = int(rng.integers(0, n - sig.size + 1))
    out[start : start + sig.size] = sig
    return out


def _text_for(rng: np.random.Generator, kind: str, texts: Texts) -> str:
    if kind == "target":
        return str(rng.choice(texts.target))
    if kind == "confusable":
        return str(rng.choice(texts.confusable))
    if rng.random() < 0.6:
        return str(rng.choice(texts.speech))
    return " ".join(rng.choice(texts.words, size=int(rng.integers(2, 7))))


def make_clips(job: ClipJob) -> list[dict[str, object]]:
    """A batch of labelled clips spoken by one batch's fresh engines; their manifest rows."""
    voices = Voices(job.gen)
    try:
        return [make_clip(voices, job, i) for i in range(job.start, job.stop)]
    finally:
        voices.close()


def make_clip(voices: Voices, job: ClipJob, index: int) -> dict[str, object]:
    """One labelled clip; returns its manifest row."""
    rng = np.random.default_rng([job.seed, KIND_INDEX[job.kind], index])
    rate = tts.RATE
    n = int(job.gen.clip_seconds * rate)
    row: dict[str, object] = {"label": job.kind, "role": "clip", "split": ""}
    if job.kind == "noise":
        kind = str(rng.choice(nz.kinds(job.gen.household_noise)[0]))
        level = (
            float(rng.choice([-75.0, -65.0, -55.0]))
            if kind == "silence"
            else float(rng.uniform(-45, -12))
        )
        clip = nz.at_rms_dbfs(nz.make_noise(rng, kind, n, rate), level)
        row |= {"group": f"noise-{index:05d}", "text": kind, "voice": ""}
    else:
        speaker = voices.pick(rng, job.gen.piper.clip_share, job.gen.kokoro.clip_share)
        voice = speaker[0]
        text = _text_for(rng, job.kind, job.texts)
        speech = voices.say(rng, text, speaker)
        if job.kind != "speech" and speech.size > n:  # keep the whole phrase: grow the clip
            n = speech.size + int(0.1 * rate)
        speech = speech / (np.abs(speech).max() + 1e-9) * 10 ** (rng.uniform(-20, -1) / 20)
        clip = _place(rng, speech.astype(np.float32), n)
        snr = rng.uniform(job.gen.snr_db.min, job.gen.snr_db.max)
        bed = nz.make_noise(rng, str(rng.choice(nz.kinds(job.gen.household_noise)[1])), n, rate)
        sig_rms = float(np.sqrt(np.mean(speech**2))) + 1e-9
        clip = _mic(rng, job.gen, clip + bed * np.float32(sig_rms / 10 ** (snr / 20)))
        row |= {"group": voice, "text": text, "voice": voice}
    rel = f"clips/{job.kind}/{job.kind}-{index:05d}.flac"
    _write(job.out / rel, clip, rate)
    return row | {"path": rel}


def make_stream(job: StreamJob) -> dict[str, object]:
    """One long background recording: a noise bed with speech, confusables and noise events."""
    rng = np.random.default_rng([job.seed, KIND_INDEX["background"], job.index])
    rate = tts.RATE
    n = int(job.seconds * rate)
    _, _, event_kinds, bed_kinds = nz.kinds(job.gen.household_noise)
    bed_kind = str(rng.choice(bed_kinds))
    out = nz.at_rms_dbfs(nz.make_noise(rng, bed_kind, n, rate), float(rng.uniform(-55, -35)))
    pos = int(rng.uniform(0.5, 3.0) * rate)
    gen = job.gen
    bg = gen.background
    # operating points are set on val and measured on test: there near-phrase words come at
    # the rate the user's audio has them, while training and mining keep them dense
    confusable = (
        bg.val_test_confusable_share if job.split in ("val", "test") else bg.confusable_share
    )
    voices = Voices(gen)
    while pos < n:
        u = rng.random()
        if u < bg.speech_share or u < bg.speech_share + confusable:
            kind = "speech" if u < bg.speech_share else "confusable"
            text = _text_for(rng, kind, job.texts)
            speaker = voices.pick(rng, gen.piper.stream_share, gen.kokoro.stream_share)
            event = voices.say(rng, text, speaker)
            event = _mic(rng, gen, event)
            event = event / (np.abs(event).max() + 1e-9) * 10 ** (rng.uniform(-24, -3) / 20)
        else:
            length = int(rng.uniform(0.3, 3.0) * rate)
            kind = str(rng.choice(event_kinds))
            event = nz.at_rms_dbfs(
                nz.make_noise(rng, kind, length, rate), float(rng.uniform(-40, -15))
            )
            event *= np.hanning(length).astype(np.float32) ** 0.25
        end = min(n, pos + event.size)
        out[pos:end] += event[: end - pos].astype(np.float32)
        pos = end + int(rng.exponential(1.5) * rate)
    voices.close()
    peak = float(np.abs(out).max())
    if peak > 0.99:
        out *= np.float32(0.99 / peak)
    rel = f"streams/{job.split}/background-{job.split}-{job.index:03d}.flac"
    _write(job.out / rel, out, rate)
    return {
        "path": rel,
        "label": "background",
        "role": "stream",
        "split": job.split,
        "group": f"stream-{job.split}-{job.index:03d}",
        "text": bed_kind,
        "voice": "",
    }


def _write(path: Path, x: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(x, -1.0, 1.0), rate, format="FLAC", subtype="PCM_16")


def _run(job: ClipJob | StreamJob) -> list[dict[str, object]]:
    return [make_stream(job)] if isinstance(job, StreamJob) else make_clips(job)


def build_texts(gen: GenerateParams, session: tts.SpeechSession) -> Texts:
    return Texts(
        target=tuple(phrases.target_variants(gen.phrase)),
        confusable=tuple(
            phrases.confusables(
                gen.phrase,
                gen.extra_confusables,
                session,
                min_distance=gen.min_confusable_distance,
                dictionary=gen.confusables.dictionary,
                per_word=gen.confusables.per_word,
                min_phones=gen.confusables.min_phones,
                min_share=gen.confusables.min_share,
            )
        ),
        speech=tuple(phrases.other_speech(gen.phrase)),
        words=tuple(phrases.word_salad_pool(gen.phrase)),
    )


def generate_corpus(params: Params, layout: Layout) -> dict[str, object]:
    """The generate stage: write ``data/generated`` (FLAC clips and streams plus manifest.csv)."""
    gen = params.generate
    with tts.SpeechSession() as session:
        for voice in gen.voices:  # fail fast, naming the key, before any work
            session.check_voice(voice)
        for voice in gen.accent_voices:
            try:
                session.check_voice(voice)
            except SoundopsError as exc:
                raise SoundopsError(
                    str(exc).replace("generate.voices", "generate.accent_voices")
                ) from exc
        for variant in gen.variants:
            session.check_voice(f"{gen.voices[0]}+{variant}")
        texts = build_texts(gen, session)
    with atomic_path(layout.generated) as out:
        out.mkdir(parents=True)
        jobs: list[ClipJob | StreamJob] = []
        bg = gen.background
        for split, minutes in (
            ("train", bg.train_minutes),
            ("val", bg.val_minutes),
            ("test", bg.test_minutes),
            ("mine", bg.mine_minutes),  # the mining pool: written, but in no manifest row
        ):
            count = math.ceil(minutes / bg.stream_minutes) if minutes > 0 else 0
            offset = {"train": 0, "val": 1000, "test": 2000, "mine": 3000}[split]
            jobs.extend(
                StreamJob(split, offset + i, minutes * 60 / count, params.seed, out, gen, texts)
                for i in range(count)
            )
        for kind, count in gen.counts.model_dump().items():
            jobs.extend(
                ClipJob(kind, i, min(i + BATCH, count), params.seed, out, gen, texts)
                for i in range(0, count, BATCH)
            )
        batches = pmap(
            _run,
            jobs,
            workers=params.runtime.resolved_workers(),
            desc="generate",
            chunksize=1,
            unit="batch",
        )
        rows = [row for batch in batches for row in batch if row["split"] != "mine"]
        frame = pd.DataFrame(
            rows, columns=["path", "label", "group", "split", "role", "voice", "text"]
        )
        write_csv(out / "manifest.csv", frame)
        summary = {
            "phrase": gen.phrase,
            "confusables": list(texts.confusable),
            "sample_rate": tts.RATE,
            "clips": {
                k: int(v) for k, v in frame[frame.role == "clip"]["label"].value_counts().items()
            },
            "stream_minutes": {
                s: round(m, 2)
                for s, m in (
                    ("train", bg.train_minutes),
                    ("val", bg.val_minutes),
                    ("test", bg.test_minutes),
                    ("mine", bg.mine_minutes),
                )
            },
        }
        write_json(out / "corpus.json", summary)
    log.info(
        "gen: %d clip(s), %d stream(s) for phrase %r",
        int((frame.role == "clip").sum()),
        int((frame.role == "stream").sum()),
        gen.phrase,
    )
    return summary
