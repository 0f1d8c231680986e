"""espeak-ng through ctypes, from the ``espeakng-loader`` wheel: no system package needed.

The library keeps global state and is not thread-safe, so each process initialises its own
copy once; parallel synthesis uses processes, never threads.
"""

from __future__ import annotations

import ctypes
import threading
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
        self.lock = threading.Lock()

    def _collect(self, wav: ctypes._Pointer[ctypes.c_short], n: int, _events: int | None) -> int:
        if wav and n > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def set_voice(self, name: str) -> None:
        if self.lib.espeak_SetVoiceByName(name.encode()) != 0:
            raise SoundopsError(f"demo.voices/demo.variants: espeak-ng has no voice '{name}'.")


@lru_cache(maxsize=1)
def _engine() -> _Espeak:
    return _Espeak()


def sample_rate() -> int:
    """espeak-ng's native output rate (22050 Hz)."""
    return _engine().rate


def synthesize(
    text: str, voice: str, rate_wpm: int, pitch: int, pitch_range: int = 50
) -> np.ndarray:
    """Speak ``text`` with ``voice`` (``lang+variant``); float32 mono at :func:`sample_rate`."""
    eng = _engine()
    with eng.lock:
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


def phonemes(text: str, voice: str = "en-us") -> str:
    """IPA phonemes of ``text`` (used to find phonetically confusable words)."""
    eng = _engine()
    with eng.lock:
        eng.set_voice(voice)
        out: list[str] = []
        buf = ctypes.c_char_p(text.encode("utf-8"))
        ptr = ctypes.pointer(buf)
        while buf.value:
            res = eng.lib.espeak_TextToPhonemes(ptr, _CHARS_UTF8, _IPA)
            if res:
                out.append(res.decode("utf-8"))
            if not buf.value:
                break
    return " ".join(out).replace("\u02c8", "").replace("\u02cc", "")  # stress marks.strip()


def voices_dir() -> Path:
    return Path(espeakng_loader.get_data_path()) / "voices" / "!v"
