"""espeak-ng through ctypes, from the ``espeakng-loader`` wheel: no system package needed.

espeak-ng keeps state between utterances (wave generator phase, flutter, random numbers),
so the same call gives different audio depending on what was spoken before. To make the
demo corpus a pure function of its seed, every call runs in a forked child of a process
in which espeak-ng was initialised but never used; results come back through a pipe as
raw bytes (never pickled).
"""

from __future__ import annotations

import ctypes
import json
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import espeakng_loader
import numpy as np

from pipeline_lib.errors import SoundopsError

_AUDIO_OUTPUT_SYNCHRONOUS = 0x02
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_IPA = 0x02

_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _Espeak:
    def __init__(self) -> None:
        self.lib = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path().encode()
        self.lib.espeak_Initialize.restype = ctypes.c_int
        rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if rate <= 0:
            raise SoundopsError("espeak-ng could not be initialised from espeakng-loader's data.")
        self.rate = int(rate)
        self.chunks: list[np.ndarray] = []
        self._cb = _CALLBACK(self._collect)
        self.lib.espeak_SetSynthCallback(self._cb)
        self.lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        self.lib.espeak_TextToPhonemes.argtypes = [
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.c_int,
            ctypes.c_int,
        ]

    def _collect(self, wav: ctypes._Pointer[ctypes.c_short], n: int, _events: int | None) -> int:
        if wav and n > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def set_voice(self, name: str) -> None:
        lang, _, variant = name.partition("+")
        if variant and not (voices_dir() / variant).is_file():
            raise SoundopsError(f"demo.variants: espeak-ng has no voice variant '{variant}'.")
        if self.lib.espeak_SetVoiceByName(name.encode()) != 0:
            raise SoundopsError(f"demo.voices: espeak-ng has no voice '{lang}'.")


@lru_cache(maxsize=1)
def _engine() -> _Espeak:
    return _Espeak()


def sample_rate() -> int:
    """espeak-ng's native output rate (22050 Hz)."""
    return _engine().rate


def _isolated(work: Callable[[], bytes]) -> bytes:
    """Run ``work`` in a forked child so espeak-ng starts from the same state every time."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        os.close(read_fd)
        try:
            payload = b"O" + work()
        except SoundopsError as exc:
            payload = b"E" + str(exc).encode()
        except BaseException as exc:  # any failure goes back to the parent via the pipe
            payload = b"E" + f"espeak-ng failed: {exc!r}".encode()
        with os.fdopen(write_fd, "wb") as out:
            out.write(payload)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as inp:
        data = inp.read()
    os.waitpid(pid, 0)
    if data[:1] != b"O":
        raise SoundopsError(data[1:].decode(errors="replace") or "espeak-ng child process died.")
    return data[1:]


def check_voice(voice: str) -> None:
    """Raise :class:`SoundopsError` naming the params key if ``voice`` does not exist."""

    def work() -> bytes:
        _engine().set_voice(voice)
        return b""

    _isolated(work)


def synthesize(
    text: str, voice: str, rate_wpm: int, pitch: int, pitch_range: int = 50
) -> np.ndarray:
    """Speak ``text`` with ``voice`` (``lang+variant``); float32 mono at :func:`sample_rate`."""

    def work() -> bytes:
        return _synthesize_here(text, voice, rate_wpm, pitch, pitch_range).tobytes()

    return np.frombuffer(_isolated(work), dtype=np.float32).copy()


def _synthesize_here(
    text: str, voice: str, rate_wpm: int, pitch: int, pitch_range: int
) -> np.ndarray:
    eng = _engine()
    eng.set_voice(voice)
    eng.lib.espeak_SetParameter(_RATE, int(rate_wpm), 0)
    eng.lib.espeak_SetParameter(_PITCH, int(pitch), 0)
    eng.lib.espeak_SetParameter(_RANGE, int(pitch_range), 0)
    eng.lib.espeak_SetParameter(_VOLUME, 100, 0)
    eng.chunks = []
    buf = text.encode("utf-8")
    err = eng.lib.espeak_Synth(buf, len(buf) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    eng.lib.espeak_Synchronize()
    if err != 0:
        raise SoundopsError(f"espeak-ng failed to speak {text!r} (error {err}).")
    chunks, eng.chunks = eng.chunks, []
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32) / 32768.0


def phonemes_many(texts: list[str], voice: str = "en-us") -> list[str]:
    """IPA phonemes of each text (to find phonetically confusable words), in one child."""

    def work() -> bytes:
        return json.dumps([_phonemes_here(t, voice) for t in texts]).encode()

    result: list[str] = json.loads(_isolated(work))
    return result


def _phonemes_here(text: str, voice: str) -> str:
    eng = _engine()
    eng.set_voice(voice)
    out: list[str] = []
    buf = ctypes.c_char_p(text.encode("utf-8"))
    ptr = ctypes.pointer(buf)
    while buf.value:
        res = eng.lib.espeak_TextToPhonemes(ptr, _CHARS_UTF8, _IPA)
        if res:
            out.append(res.decode("utf-8"))
    # drop the stress marks: confusability is about the sounds
    return " ".join(out).replace("\u02c8", "").replace("\u02cc", "").strip()


def voices_dir() -> Path:
    return Path(espeakng_loader.get_data_path()) / "voices" / "!v"
