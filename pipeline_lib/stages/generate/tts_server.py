"""The process behind :class:`pipeline_lib.tts.SpeechSession` (``-m pipeline_lib.tts_server``).

Its whole history is the request sequence it is sent, which is what makes espeak-ng's
output repeatable. Protocol: one JSON request per line on stdin; each answer is one JSON
header line on stdout, followed for ``speak`` by ``n`` little-endian int16 samples.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _answer(req: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    from pipeline_lib.stages.generate.tts import engine

    eng = engine()
    if req["op"] == "speak":
        pcm = eng.speak(req["text"], req["voice"], req["wpm"], req["pitch"], req["range"])
        return {"ok": True, "n": len(pcm) // 2}, pcm
    if req["op"] == "phonemes":
        return {"ok": True, "phonemes": [eng.phonemes(t, req["voice"]) for t in req["texts"]]}, b""
    if req["op"] == "voice":
        eng.set_voice(req["voice"])
        return {"ok": True}, b""
    return {"ok": False, "error": f"unknown request {req['op']!r}"}, b""


def serve() -> None:
    from pipeline_lib.stages.generate.tts import engine

    out = sys.stdout.buffer
    out.write(json.dumps({"ok": True, "rate": engine().rate}).encode() + b"\n")
    out.flush()
    for line in sys.stdin.buffer:
        try:
            header, payload = _answer(json.loads(line))
        except Exception as exc:  # reported to the caller, who raises it
            header, payload = {"ok": False, "error": str(exc)}, b""
        out.write(json.dumps(header).encode() + b"\n" + payload)
        out.flush()


if __name__ == "__main__":
    serve()
