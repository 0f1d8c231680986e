"""The live detection service's model side, kept free of HTTP so it is testable alone.

:class:`Models` resolves a registry alias to a version and loads that version's INT8 model
once (onnxruntime, or TensorFlow Lite Micro as on the device). A request runs a fresh
:class:`~pipeline_lib.streaming.StreamingDetector` over an uploaded clip; a
:class:`StreamSession` keeps one detector per microphone stream and enforces the frame
limits, so a bad or greedy client is refused without touching anyone else's state.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from pipeline_lib.audio.io import decode_audio, resample
from pipeline_lib.audio.speech_embedding import RATE as EMBED_RATE
from pipeline_lib.base.errors import AudioError, SoundopsError
from pipeline_lib.base.params import Params, ServiceParams
from pipeline_lib.detect.checkpoint import ModelSpec
from pipeline_lib.detect.decision import STEP_S
from pipeline_lib.detect.runtimes import OnnxScorer, Scorer, load_scorer
from pipeline_lib.detect.streaming import Calibration, Scored, StreamingDetector
from pipeline_lib.detect.verifier_model import VERIFIER_FILE, Head, clip_score
from pipeline_lib.release import registry

log = logging.getLogger(__name__)

RUNTIME_FILES = {
    "onnx": ("model_int8.onnx",),
    "tflite": ("model_int8.tflite", "device_manifest.json"),
}
MIN_FRAME_S = 0.01  # one front-end step: smaller frames only cost a thread hop and a reply
CLIP_CHUNK_S = 10.0  # an upload is scored this much audio at a time
UNKNOWN_FRAMES = 2**63 - 1  # libsndfile's frame count when a header leaves the length open
MAX_BACKOFF_S = 300.0  # the longest wait a client address is given after wrong tokens
MAX_CLIENTS = 10_000  # client addresses the token throttle remembers (oldest forgotten first)


class UnknownVersionError(SoundopsError):
    """The alias or version asked for is not in the registry (the sentence names what is)."""


class _Serialised:
    """A scorer behind a lock: one TFLite Micro interpreter holds per-call state, so the
    service's worker threads take turns (onnxruntime sessions need no lock)."""

    def __init__(self, scorer: Scorer) -> None:
        self.inner, self.spec, self.name = scorer, scorer.spec, scorer.name
        self.calibration = scorer.calibration
        self._lock = threading.Lock()

    def logits(self, windows: np.ndarray) -> np.ndarray:
        with self._lock:
            return self.inner.logits(windows)


@dataclass(frozen=True)
class ServedModel:
    """One registered version, loaded: its scorer, the two decision rules it serves (the
    calibrated preset for detection, ``service.verify_preset`` for verification) and the
    smoothed score from which a stream's status is "possible"."""

    name: str
    version: int
    runtime: str
    scorer: Scorer
    detect: Calibration
    verify: Calibration
    possible_level: float
    verifier: Head | None = None  # the speech-embedding second stage, when the build made one

    @property
    def spec(self) -> ModelSpec:
        return self.scorer.spec

    def info(self, ref: str) -> dict[str, Any]:
        rule = self.detect.rule
        return {
            "name": self.name,
            "version": self.version,
            "ref": ref,
            "runtime": self.runtime,
            "rate": self.spec.rate,
            "window_s": round(self.spec.frames * STEP_S, 4),
            "hop_s": round(rule.hop_s, 4),
            "preset": self.detect.preset,
            "threshold": rule.threshold,
            "smoothing": rule.smoothing,
            "refractory_s": rule.refractory_s,
            "verify_preset": self.verify.preset,
            "verify_threshold": self.verify.rule.threshold,
            "verifier": None
            if self.verifier is None
            else {"kind": "speech-embedding", "threshold": round(self.verifier.threshold, 4)},
            "possible_level": round(self.possible_level, 4),
            "classes": list(self.spec.classes),
        }


def load_version(folder: Path, name: str, version: int, service: ServiceParams) -> ServedModel:
    """The ``service.runtime``'s INT8 file of a downloaded version, with the calibration
    it carries."""
    runtime = service.runtime
    wanted = RUNTIME_FILES[runtime]
    missing = [f for f in wanted if not (folder / f).is_file()]
    if missing:
        raise SoundopsError(
            f"model '{name}' version {version} has no {missing[0]}; "
            f"service.runtime '{runtime}' needs {', '.join(wanted)}."
        )
    scorer: Scorer
    if runtime == "onnx":
        # one thread per call: the service scores many small batches from many streams at
        # once, and its worker threads share the cores better than intra-op threads do
        scorer = OnnxScorer(folder / wanted[0], threads=1)
    else:
        scorer = _Serialised(load_scorer(folder / wanted[0]))
    raw = scorer.calibration
    if not raw:
        raise SoundopsError(
            f"model '{name}' version {version}: {wanted[0]} carries no calibration; "
            "export it with the soundops export stage."
        )
    detect = Calibration.from_dict(raw)
    head = Head.load(folder / VERIFIER_FILE) if (folder / VERIFIER_FILE).is_file() else None
    return ServedModel(
        name=name,
        version=version,
        runtime=runtime,
        scorer=scorer,
        detect=detect,
        verify=Calibration.from_dict(raw, service.verify_preset),
        possible_level=service.possible_ratio * detect.rule.threshold,
        verifier=head,
    )


class Models:
    """Registry aliases resolved to loaded versions. An alias is looked up again after
    ``service.alias_ttl_s``, so a promotion is served without a restart; each version is
    downloaded and loaded once."""

    def __init__(self, root: Path, params: Params, service: ServiceParams) -> None:
        self.root, self.params, self.service = root, params, service
        self._lock = threading.Lock()
        self._refs: dict[str, tuple[float, int]] = {}
        self._loaded: dict[int, ServedModel] = {}

    def cached(self, ref: str | None = None) -> tuple[str, ServedModel] | None:
        """:meth:`get` when it needs no registry call (the alias was looked up within
        ``alias_ttl_s``), else None: cheap enough for the event loop, so a busy thread
        pool cannot delay /health or a stream's start."""
        ref = (ref or self.service.alias).strip()
        hit = self._refs.get(ref)
        if hit is not None and time.monotonic() - hit[0] < self.service.alias_ttl_s:
            return ref, self._loaded[hit[1]]
        return None

    def get(self, ref: str | None = None) -> tuple[str, ServedModel]:
        """``(ref, model)`` for a version number or alias (default ``service.alias``).

        An unknown one is an :class:`UnknownVersionError` naming what exists. When the
        registry cannot be reached, an alias already served keeps its version (logged);
        otherwise that is a :class:`SoundopsError` in one sentence.
        """
        ref = (ref or self.service.alias).strip()
        now = time.monotonic()
        hit = self._refs.get(ref)
        if hit is not None and now - hit[0] < self.service.alias_ttl_s:
            return ref, self._loaded[hit[1]]
        try:  # outside the lock: a slow registry must not hold up loaded models
            version = registry.get_version(self.params, ref)
        except SoundopsError as exc:
            raise UnknownVersionError(str(exc)) from None
        except Exception as exc:  # MLflow's own errors: store unreachable, refused
            if hit is None:
                raise SoundopsError(f"the model registry is unavailable ({exc}).") from None
            log.warning("registry unavailable; '%s' stays on version %d: %s", ref, hit[1], exc)
            self._refs[ref] = (now, hit[1])
            return ref, self._loaded[hit[1]]
        with self._lock:  # each version is downloaded and loaded once per process
            if version.version not in self._loaded:
                self._loaded[version.version] = self._load(version)
            self._refs[ref] = (now, version.version)
            return ref, self._loaded[version.version]

    def _load(self, version: registry.Version) -> ServedModel:
        try:
            need = RUNTIME_FILES[self.service.runtime]
            if f"{registry.DIGEST_TAG}{VERIFIER_FILE}" in version.tags:  # built with one
                need += (VERIFIER_FILE,)
            folder = registry.download(self.params, version, self.root, need)
        except (OSError, SoundopsError) as exc:
            raise SoundopsError(
                f"model '{version.name}' version {version.version} could not be fetched ({exc})."
            ) from None
        model = load_version(folder, version.name, version.version, self.service)
        log.info("serving %s version %d (%s)", version.name, version.version, self.service.runtime)
        return model


class TooLongError(AudioError):
    """An upload holds more audio than its endpoint takes (seconds, or samples x channels)."""


def decode_upload(
    data: bytes,
    name: str,
    rate: int,
    rates: tuple[float, float],
    max_s: float,
    key: str,
    max_samples: int,
) -> np.ndarray:
    """An uploaded file's audio, mono float32 at the model's ``rate``; any format and rate
    the ingest stage takes (rates within ``validate.source_rate_hz``), at most ``max_s``
    long (``key`` names the param) and at most ``max_samples`` frames x channels
    (``service.max_decoded_samples``). Rate, length and channels are read from the header
    first, and libsndfile decodes no more frames than the header declares, so a small
    compressed file (600 s of 8-channel silence is 0.5 MB of FLAC) cannot decode into
    gigabytes."""
    if not data:
        raise AudioError(f"{name}: empty upload (no bytes).")
    lo, hi = rates
    try:
        head = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError):
        head = None  # decode_audio below says what is wrong with it
    if head is not None:
        if not lo <= head.samplerate <= hi:
            raise AudioError(
                f"{name}: sample rate {head.samplerate} Hz is outside validate.source_rate_hz "
                f"({lo:g}-{hi:g} Hz)."
            )
        if head.frames >= UNKNOWN_FRAMES:
            raise TooLongError(
                f"{name}: the header does not state how long the audio is, so {key} cannot "
                "be checked before decoding; re-encode the file with its length."
            )
        if head.frames > max_s * head.samplerate:
            raise TooLongError(
                f"{name}: {head.frames / head.samplerate:.1f} s of audio is longer than "
                f"{key} = {max_s:g} s."
            )
        if head.frames * head.channels > max_samples:
            raise TooLongError(
                f"{name}: {head.frames:,} frames x {head.channels} channels is more than "
                f"service.max_decoded_samples = {max_samples:,} samples."
            )
    dec = decode_audio(io.BytesIO(data), name)
    return resample(dec.samples, dec.rate, rate)


def _events(scored: Scored) -> list[dict[str, float]]:
    return [{"time_s": round(t, 3), "score": round(s, 4)} for t, s in scored.events]


def _windows(scored: Scored) -> dict[str, list[float]]:
    return {
        "time_s": [round(float(v), 3) for v in scored.times],
        "score": [round(float(v), 4) for v in scored.scores],
        "smoothed": [round(float(v), 4) for v in scored.smoothed],
    }


def run_clip(model: ServedModel, samples: np.ndarray, calibration: Calibration) -> Scored:
    """A whole clip through a fresh detector (a clip shorter than a window is scored once,
    zero-padded), fed :data:`CLIP_CHUNK_S` at a time: the same windows and scores as one
    push, but the front end's working arrays stay those of a chunk (a 600 s clip in one
    push took 0.9 GB)."""
    det = StreamingDetector(model.scorer, calibration)
    step = int(CLIP_CHUNK_S * model.spec.rate)
    parts = [det.push(samples[i : i + step]) for i in range(0, samples.size, step)]
    return Scored.join([*parts, det.finish()])


def detect_clip(model: ServedModel, samples: np.ndarray) -> dict[str, Any]:
    """Events and per-window scores of a clip under the calibrated rule."""
    scored = run_clip(model, samples, model.detect)
    return {
        "duration_s": round(samples.size / model.spec.rate, 3),
        "events": _events(scored),
        "windows": _windows(scored),
    }


def verify_clip(model: ServedModel, samples: np.ndarray) -> dict[str, Any]:
    """The second-stage check. With the version's speech-embedding verifier, its best
    window against its calibrated threshold decides (it hears real voices the device model
    misses); without one, the clip's highest smoothed score under the verify preset
    against that preset's threshold (the device woke at its own, laxer one). The clip's
    length was bounded when it was decoded (:func:`decode_upload`)."""
    seconds = samples.size / model.spec.rate
    scored = run_clip(model, samples, model.verify)
    score = float(scored.smoothed.max()) if scored.smoothed.size else 0.0
    threshold = model.verify.rule.threshold
    out: dict[str, Any] = {
        "label": "target" if score >= threshold else "other",
        "score": round(score, 4),
        "threshold": threshold,
        "preset": model.verify.preset,
        "duration_s": round(seconds, 3),
        "verifier": None,
    }
    if model.verifier is not None:
        x = (
            samples
            if model.spec.rate == EMBED_RATE
            else resample(samples, model.spec.rate, EMBED_RATE)
        )
        v = clip_score(model.verifier, x)
        out["label"] = "target" if v >= model.verifier.threshold else "other"
        out["verifier"] = {
            "score": round(v, 4),
            "threshold": round(model.verifier.threshold, 4),
        }
    return out


class TokenThrottle:
    """Wrong tokens per client address. After ``free`` wrong ones an address must wait
    ``backoff_s``, doubled for each further wrong one (at most :data:`MAX_BACKOFF_S`), and
    its tokens are not checked meanwhile, so a token cannot be guessed at request speed.
    A right token clears the address. At most :data:`MAX_CLIENTS` addresses are kept, so
    a flood of addresses costs bounded memory."""

    def __init__(
        self, free: int, backoff_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.free, self.backoff_s, self.clock = free, backoff_s, clock
        self._lock = threading.Lock()
        self._clients: OrderedDict[str, tuple[int, float]] = OrderedDict()  # failures, until

    def wait_s(self, client: str) -> float:
        """Seconds ``client`` must still wait before its next token is checked."""
        with self._lock:
            hit = self._clients.get(client)
        return max(0.0, hit[1] - self.clock()) if hit else 0.0

    def failed(self, client: str) -> None:
        with self._lock:
            failures = self._clients.pop(client, (0, 0.0))[0] + 1
            until = 0.0
            if failures >= self.free:
                wait = min(MAX_BACKOFF_S, self.backoff_s * 2 ** min(failures - self.free, 32))
                until = self.clock() + wait
            self._clients[client] = (failures, until)
            while len(self._clients) > MAX_CLIENTS:
                self._clients.popitem(last=False)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._clients.pop(client, None)


class FrameError(Exception):
    """A frame the stream refuses: the WebSocket close code and one sentence."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class StreamSession:
    """One microphone stream: its own detector, its status, and its limits.

    Frames are 16-bit little-endian mono PCM at the model's rate. Audio may arrive at most
    ``max_speed`` times faster than real time (plus a burst of a few frames) and frames are
    at least 10 ms long, so one client cannot take the cores from the others.
    """

    model: ServedModel
    limits: ServiceParams
    last: float = field(default_factory=time.monotonic)
    credit_s: float = field(init=False)
    last_event_s: float | None = None
    peak: float = 0.0
    det: StreamingDetector = field(init=False)

    def __post_init__(self) -> None:
        self.det = StreamingDetector(self.model.scorer, self.model.detect)
        self.credit_s = self.burst_s

    @property
    def burst_s(self) -> float:
        """Audio seconds a stream may send ahead of real time: a few frames."""
        return 2.0 + 2 * self.limits.max_frame_s

    @property
    def rate(self) -> int:
        return self.model.spec.rate

    def check(self, frame: bytes, now: float | None = None) -> np.ndarray:
        """The frame as float32 samples, or a :class:`FrameError` (1007 malformed,
        1009 too long, 1008 too fast)."""
        if len(frame) % 2:
            raise FrameError(
                1007,
                f"frame of {len(frame)} bytes: /v1/stream takes 16-bit PCM, an even number "
                "of bytes.",
            )
        if len(frame) < 2 * self.rate * MIN_FRAME_S:
            raise FrameError(
                1007,
                f"frame of {len(frame) // 2} samples: /v1/stream takes frames of at least "
                f"{MIN_FRAME_S * 1000:.0f} ms ({int(self.rate * MIN_FRAME_S)} samples).",
            )
        seconds = len(frame) / 2 / self.rate
        if seconds > self.limits.max_frame_s:
            raise FrameError(
                1009,
                f"frame of {seconds:.2f} s is longer than service.max_frame_s = "
                f"{self.limits.max_frame_s:g} s.",
            )
        # a token bucket of audio seconds: refilled at max_speed x real time, holding at
        # most a burst, so credit cannot be saved up by waiting
        t = now if now is not None else time.monotonic()
        refill = (t - self.last) * self.limits.max_speed
        self.credit_s = min(self.burst_s, self.credit_s + refill)
        self.last = t
        if seconds > self.credit_s:
            raise FrameError(
                1008,
                f"audio arrives faster than service.max_speed = {self.limits.max_speed:g}x "
                "real time; send frames as the microphone produces them.",
            )
        self.credit_s -= seconds
        pcm = np.frombuffer(frame, dtype="<i2")
        return pcm.astype(np.float32) / 32768.0

    def finish(self) -> dict[str, Any]:
        """End of stream: a stream shorter than one window is scored once, zero-padded, as
        :func:`detect_clip` does; the closing message."""
        return self._message(self.det.finish()) | {"type": "end"}

    def feed(self, samples: np.ndarray) -> dict[str, Any]:
        """Score what the samples complete; the message sent back to the client."""
        return self._message(self.det.push(samples))

    def _message(self, scored: Scored) -> dict[str, Any]:
        rule = self.model.detect.rule
        if scored.events:
            self.last_event_s = scored.events[-1][0]
        now_s = self.det.seconds
        recent = self.last_event_s is not None and now_s - self.last_event_s <= max(
            1.0, rule.refractory_s
        )
        if scored.smoothed.size:  # a frame shorter than the hop keeps the last peak
            self.peak = float(scored.smoothed.max())
        if recent:
            status = "detected"
        elif self.peak >= self.model.possible_level:
            status = "possible"
        else:
            status = "clear"
        return {
            "type": "scores",
            "audio_s": round(now_s, 3),
            "status": status,
            "windows": _windows(scored),
            "events": _events(scored),
        }
