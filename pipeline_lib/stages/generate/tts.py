"""espeak-ng through ctypes, from the ``espeakng-loader`` wheel: no system package needed.

espeak-ng's output depends on the whole history of the process that speaks (internal
state and uninitialised memory), so the same request can sound different after other
requests. To keep the generated corpus a pure function of its seed, speech is made by a
:class:`SpeechSession`: a fresh ``python -m pipeline_lib.tts_server`` process whose only
history is the session's own request sequence. Samples travel as raw int16 bytes (never
pickled).
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from types import TracebackType

import espeakng_loader
import numpy as np

from pipeline_lib.base.errors import SoundopsError

_AUDIO_OUTPUT_SYNCHRONOUS = 0x02
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_IPA = 0x02
RATE = 22050  # espeak-ng's output rate; checked against the library by every session

_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


def voices_dir() -> Path:
    return Path(espeakng_loader.get_data_path()) / "voices" / "!v"


class _Espeak:
    """The library, initialised once per process (only ever inside a session's server)."""

    def __init__(self) -> None:
        self.lib = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path().encode()
        self.lib.espeak_Initialize.restype = ctypes.c_int
        rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if rate <= 0:
            raise SoundopsError("espeak-ng could not be initialised from espeakng-loader's data.")
        self.rate = int(rate)
        # espeak-ng seeds its random numbers (used by breathy and klatt voices) from the
        # clock; a fixed seed makes a session's output a function of its requests alone.
        self.lib.espeak_ng_SetRandSeed(ctypes.c_long(0))
        self.chunks: list[bytes] = []
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
            self.chunks.append(ctypes.string_at(wav, 2 * n))
        return 0

    def set_voice(self, name: str) -> None:
        lang, _, variant = name.partition("+")
        if variant and not (voices_dir() / variant).is_file():
            raise SoundopsError(f"generate.variants: espeak-ng has no voice variant '{variant}'.")
        if self.lib.espeak_SetVoiceByName(name.encode()) != 0:
            raise SoundopsError(f"generate.voices: espeak-ng has no voice '{lang}'.")

    def speak(self, text: str, voice: str, wpm: int, pitch: int, pitch_range: int) -> bytes:
        self.set_voice(voice)
        for key, value in ((_RATE, wpm), (_PITCH, pitch), (_RANGE, pitch_range), (_VOLUME, 100)):
            self.lib.espeak_SetParameter(key, int(value), 0)
        self.chunks = []
        buf = text.encode("utf-8")
        err = self.lib.espeak_Synth(
            buf, len(buf) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        self.lib.espeak_Synchronize()
        chunks, self.chunks = self.chunks, []
        if err != 0:
            raise SoundopsError(f"espeak-ng failed to speak {text!r} (error {err}).")
        return b"".join(chunks)

    def phonemes(self, text: str, voice: str) -> str:
        self.set_voice(voice)
        out: list[str] = []
        buf = ctypes.c_char_p(text.encode("utf-8"))
        ptr = ctypes.pointer(buf)
        while buf.value:
            res = self.lib.espeak_TextToPhonemes(ptr, _CHARS_UTF8, _IPA)
            if res:
                out.append(res.decode("utf-8"))
        # drop the stress marks: confusability is about the sounds
        return " ".join(out).replace("\u02c8", "").replace("\u02cc", "").strip()


@lru_cache(maxsize=1)
def engine() -> _Espeak:
    """This process's espeak-ng; call only from the session server."""
    return _Espeak()


class SpeechSession:
    """A fresh espeak-ng process; the same request sequence always gives the same audio."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline_lib.stages.generate.tts_server"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        hello = self._header()
        if hello.get("rate") != RATE:
            raise SoundopsError(f"espeak-ng speaks at {hello.get('rate')} Hz, expected {RATE}.")

    def _header(self) -> dict[str, object]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise SoundopsError("the espeak-ng helper process stopped unexpectedly.")
        header: dict[str, object] = json.loads(line)
        if not header.get("ok"):
            raise SoundopsError(str(header.get("error")))
        return header

    def _ask(self, request: dict[str, object]) -> dict[str, object]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(request).encode() + b"\n")
        self._proc.stdin.flush()
        return self._header()

    def speak(
        self, text: str, voice: str, wpm: int, pitch: int, pitch_range: int = 50
    ) -> np.ndarray:
        """Float32 mono samples at :data:`RATE`."""
        header = self._ask(
            {
                "op": "speak",
                "text": text,
                "voice": voice,
                "wpm": wpm,
                "pitch": pitch,
                "range": pitch_range,
            }
        )
        n = int(str(header["n"]))
        assert self._proc.stdout is not None
        raw = self._proc.stdout.read(2 * n)
        return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0

    def phonemes(self, texts: list[str], voice: str = "en-us") -> list[str]:
        """IPA phonemes of each text, without stress marks."""
        header = self._ask({"op": "phonemes", "texts": texts, "voice": voice})
        result = header["phonemes"]
        assert isinstance(result, list)
        return [str(r) for r in result]

    def check_voice(self, voice: str) -> None:
        """Raise :class:`SoundopsError` naming the params key if ``voice`` does not exist."""
        self._ask({"op": "voice", "voice": voice})

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._proc.wait(timeout=30)

    def __enter__(self) -> SpeechSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
