"""The live detection service against a real MLflow registry and a real INT8 model
(a chirp detector trained by the tests): file detection, verification, streams, limits."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import yaml
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from pipeline_lib.audio.io import resample
from pipeline_lib.base.params import Params, ServiceParams, parse_params
from pipeline_lib.serve.app import create_app
from pipeline_lib.serve.models import Models
from tests import chirp_model
from tests.conftest import shipped_params

RATE = chirp_model.RATE
CHIRPS, DECOYS = [5.0, 13.0], [9.0]


@dataclass
class Served:
    root: Path
    params: Params
    version: int

    def service(self, **changes: Any) -> ServiceParams:
        return ServiceParams.model_validate(self.params.service.model_dump() | changes)

    def client(self, token: str | None = None, **changes: Any) -> TestClient:
        service = self.service(**changes)
        app = create_app(Models(self.root, self.params, service), self.params, service, token)
        return TestClient(app)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, chirp_export: Path) -> Served:
    root = tmp_path_factory.mktemp("service")
    raw = shipped_params()
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    params = parse_params(raw)
    version = chirp_model.publish(root, params, chirp_export, aliases=("edge", "candidate"))
    return Served(root, params, version)


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[TestClient]:
    """The shipped limits, but streams may run as fast as the test sends them."""
    with served.client(max_speed=1000) as c:
        yield c


def wav_bytes(samples: np.ndarray, rate: int = RATE, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def scene(seconds: float = 18.0, seed: int = 3) -> np.ndarray:
    return chirp_model.scene(seconds, CHIRPS, seed, DECOYS)


def pcm_frames(samples: np.ndarray, hop: int = 1600) -> list[bytes]:
    """The samples as the 16-bit PCM a WAV upload of them holds, in 100 ms frames."""
    pcm, _ = sf.read(io.BytesIO(wav_bytes(samples)), dtype="int16")
    pcm = pcm.astype("<i2")
    return [pcm[i : i + hop].tobytes() for i in range(0, pcm.size, hop)]


def near_chirps(times: list[float]) -> bool:
    """One event per chirp, each between the chirp's start and one window after it."""
    return len(times) == len(CHIRPS) and all(
        c < t <= c + 1.6 for c, t in zip(CHIRPS, times, strict=True)
    )


def test_health_model_page_and_openapi(client: TestClient, served: Served) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"]["version"] == served.version
    info = client.get("/v1/model").json()
    assert info["ref"] == "edge" and info["runtime"] == "onnx" and info["rate"] == RATE
    assert info["possible_level"] == pytest.approx(0.5 * info["threshold"], abs=1e-4)
    schema = client.get("/openapi.json").json()
    assert {"/v1/detect", "/v1/verify", "/v1/model", "/health"} <= set(schema["paths"])
    body = schema["paths"]["/v1/detect"]["post"]["requestBody"]["content"]
    assert {"application/octet-stream", "multipart/form-data"} <= set(body)
    page = client.get("/")
    assert page.status_code == 200 and "/v1/stream" in page.text and 'id="status"' in page.text


def test_detect_finds_each_chirp_and_no_decoy_at_any_rate_and_format(client: TestClient) -> None:
    audio = scene()
    raw = client.post("/v1/detect", content=wav_bytes(audio)).json()
    assert near_chirps([e["time_s"] for e in raw["events"]])
    assert raw["duration_s"] == pytest.approx(18.0, abs=1e-3)
    assert len(raw["windows"]["score"]) == int((18.0 - 1.5) / 0.1) + 1
    # 44.1 kHz stereo FLAC as a multipart upload: resampled, downmixed, same events
    stereo = np.stack([resample(audio, RATE, 44100)] * 2, axis=1)
    up = client.post("/v1/detect", files={"file": ("scene.flac", wav_bytes(stereo, 44100, "FLAC"))})
    assert up.status_code == 200
    assert near_chirps([e["time_s"] for e in up.json()["events"]])
    assert up.json()["model"]["ref"] == "edge"


def test_verify_confirms_a_chirp_and_rejects_a_decoy(client: TestClient) -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.003, int(2.0 * RATE)).astype(np.float32)
    at = int(1.0 * RATE)
    target, decoy = noise.copy(), noise.copy()
    target[at - 9600 : at] += chirp_model.chirp(True)
    decoy[at - 9600 : at] += chirp_model.chirp(False)
    yes = client.post("/v1/verify", content=wav_bytes(target)).json()
    no = client.post("/v1/verify", content=wav_bytes(decoy)).json()
    assert yes["label"] == "target" and yes["score"] >= yes["threshold"] == 0.8
    assert no["label"] == "other" and no["score"] < no["threshold"]
    assert yes["preset"] == "strict" and yes["model"]["version"] >= 1
    long = client.post("/v1/verify", content=wav_bytes(scene(8.0)))
    assert long.status_code == 413 and "service.max_verify_s" in long.json()["detail"]


def _stream(ws: Any, frames: list[bytes], pace_s: float = 0.0) -> list[dict[str, Any]]:
    out = []
    for frame in frames:
        time.sleep(pace_s)
        ws.send_bytes(frame)
        out.append(ws.receive_json())
    return out


def test_each_stream_has_its_own_state_and_matches_file_detection(client: TestClient) -> None:
    audio = scene()
    quiet = chirp_model.scene(18.0, [], seed=4)
    with (
        client.websocket_connect("/v1/stream?rate=16000") as a,
        client.websocket_connect("/v1/stream") as b,
    ):
        assert a.receive_json()["type"] == b.receive_json()["type"] == "ready"
        got_a, got_b = [], []
        for fa, fb in zip(pcm_frames(audio), pcm_frames(quiet), strict=True):  # interleaved
            got_a += _stream(a, [fa])
            got_b += _stream(b, [fb])
        a.send_text(json.dumps({"type": "end"}))
        end = a.receive_json()
        assert end["type"] == "end" and end["audio_s"] == 18.0 and not end["windows"]["score"]
    events_a = [e["time_s"] for m in got_a for e in m["events"]]
    assert near_chirps(events_a)
    assert not [e for m in got_b for e in m["events"]]
    statuses = [m["status"] for m in got_a]
    assert statuses[0] == "clear" and "detected" in statuses and statuses[-1] == "clear"
    assert {m["status"] for m in got_b} <= {"clear", "possible"}
    # the stream scored every window the whole file does, with the same scores
    whole = client.post("/v1/detect", content=wav_bytes(audio)).json()
    streamed = [s for m in got_a for s in m["windows"]["score"]]
    assert np.allclose(streamed, whole["windows"]["score"], atol=1e-4)
    assert events_a == [e["time_s"] for e in whole["events"]]


def _refused(
    client: TestClient, url: str, send: list[bytes | str], origin: str | None = None
) -> tuple[int, str]:
    """Connect, send, and return the error message's code and sentence (then the close)."""
    headers = {"origin": origin} if origin else {}
    with client.websocket_connect(url, headers=headers) as ws:
        first = ws.receive_json()
        if first["type"] == "ready":
            for item in send:
                if isinstance(item, str):
                    ws.send_text(item)
                else:
                    ws.send_bytes(item)
                msg = ws.receive_json()
                if msg["type"] == "error":
                    first = msg
                    break
        assert first["type"] == "error", first
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == first["code"]
        return int(first["code"]), str(first["message"])


def test_bad_streams_get_one_sentence_and_leave_a_good_stream_running(served: Served) -> None:
    audio = scene()
    frames = pcm_frames(audio)
    second = 16000 * 2
    with served.client(max_speed=10) as client, client.websocket_connect("/v1/stream") as good:
        assert good.receive_json()["type"] == "ready"
        pace = 0.1 / 5  # 100 ms frames at 5x real time: within max_speed 10
        got = _stream(good, frames[:40], pace)
        code, msg = _refused(client, "/v1/stream", [b"\x00\x01\x02"])
        assert code == 1007 and "16-bit PCM" in msg
        code, msg = _refused(client, "/v1/stream", [b"\x00\x00" * 10])
        assert code == 1007 and "at least 10 ms" in msg
        code, msg = _refused(client, "/v1/stream", [], origin="http://elsewhere.example")
        assert code == 1008 and "another site" in msg
        code, msg = _refused(client, "/v1/stream?rate=44100", [])
        assert code == 1003 and "rate 44100 Hz" in msg and "16000 Hz" in msg
        code, msg = _refused(client, "/v1/stream?alias=nope", [])
        assert code == 4404 and "no version or alias 'nope'" in msg and "edge" in msg
        code, msg = _refused(client, "/v1/stream", [b"\x00" * (second * 2)])
        assert code == 1009 and "service.max_frame_s" in msg
        code, msg = _refused(client, "/v1/stream", [b"\x00" * second] * 40)
        assert code == 1008 and "service.max_speed" in msg
        code, msg = _refused(client, "/v1/stream", ["hello"])
        assert code == 1003 and "binary 16-bit PCM" in msg
        # and bad uploads on the same service while the stream is open
        big = client.post("/v1/detect", content=b"\x00" * (21 * 2**20))
        assert big.status_code == 413 and "service.max_upload_mb = 20 MB" in big.json()["detail"]
        phone = client.post("/v1/detect?name=p.wav", content=wav_bytes(np.zeros(4000), 4000))
        assert phone.status_code == 422 and "sample rate 4000 Hz" in phone.json()["detail"]
        assert client.post("/v1/verify?alias=nope", content=b"x").status_code == 404
        got += _stream(good, frames[40:], pace)
    assert near_chirps([e["time_s"] for m in got for e in m["events"]])


def test_speed_limit_is_a_bucket_that_waiting_does_not_fill(served: Served) -> None:
    from pipeline_lib.serve.models import FrameError, StreamSession

    model = Models(served.root, served.params, served.service()).get()[1]
    session = StreamSession(model, served.service(max_speed=2.0))
    second = b"\x00\x00" * RATE
    t0 = session.last
    for _ in range(4):  # the burst (2 s + 2 x max_frame_s): four 1 s frames at once
        session.check(second, now=t0)
    with pytest.raises(FrameError) as fast:
        session.check(second, now=t0)
    assert fast.value.code == 1008
    session.check(second, now=t0 + 0.5)  # 0.5 s at 2x real time earns 1 s
    # an hour of silence earns no more than the burst
    for _ in range(4):
        session.check(second, now=t0 + 3600)
    with pytest.raises(FrameError):
        session.check(second, now=t0 + 3600)


def test_a_stream_shorter_than_a_window_is_scored_at_its_end(client: TestClient) -> None:
    short = scene(0.5)
    with client.websocket_connect("/v1/stream") as ws:
        assert ws.receive_json()["type"] == "ready"
        got = _stream(ws, pcm_frames(short))
        ws.send_text(json.dumps({"type": "end"}))
        end = ws.receive_json()
    assert not [s for m in got for s in m["windows"]["score"]]
    whole = client.post("/v1/detect", content=wav_bytes(short)).json()["windows"]["score"]
    assert len(whole) == 1 and end["windows"]["score"] == pytest.approx(whole, abs=1e-4)


def test_stream_limit_refuses_the_extra_stream_only(served: Served) -> None:
    with served.client(max_streams=1) as c, c.websocket_connect("/v1/stream") as first:
        assert first.receive_json()["type"] == "ready"
        code, msg = _refused(c, "/v1/stream", [])
        assert code == 1013 and "service.max_streams" in msg
        assert _stream(first, pcm_frames(scene(2.0)))[-1]["type"] == "scores"


def test_bad_uploads_get_one_sentence_each(served: Served) -> None:
    with served.client(max_upload_mb=0.25) as c:
        big = c.post("/v1/detect", content=b"\x00" * 300_000)
        assert big.status_code == 413 and "service.max_upload_mb" in big.json()["detail"]
        bad = c.post("/v1/detect?name=broken.wav", content=b"RIFF not really a wav")
        assert bad.status_code == 422 and bad.json()["detail"].startswith("broken.wav: undecodable")
        empty = c.post("/v1/detect", files={"file": ("empty.wav", b"")})
        assert empty.status_code == 422 and "empty.wav: empty upload" in empty.json()["detail"]
        slow = c.post("/v1/detect?name=phone.wav", content=wav_bytes(np.zeros(4000), 4000))
        assert slow.status_code == 422 and "sample rate 4000 Hz" in slow.json()["detail"]
        with served.client(max_detect_s=5.0) as short:
            long = short.post(
                "/v1/detect?name=long.flac", content=wav_bytes(scene(8.0), fmt="FLAC")
            )
        assert long.status_code == 413
        assert (
            long.json()["detail"]
            == "long.flac: 8.0 s of audio is longer than service.max_detect_s = 5 s."
        )
        unknown = c.post("/v1/detect?alias=nope", content=wav_bytes(scene(2.0)))
        assert unknown.status_code == 404 and "'nope'" in unknown.json()["detail"]
        form = c.post("/v1/verify", files={"other": ("x.wav", wav_bytes(scene(1.0)))})
        assert form.status_code == 422 and "field 'file'" in form.json()["detail"]
        assert c.get("/health").json()["status"] == "ok"


def test_token_guards_the_api_and_the_model_on_health(served: Served) -> None:
    with served.client(token="s3cret") as c:
        assert c.get("/health").json() == {"status": "ok"}  # liveness only
        assert c.get("/health?token=s3cret").json()["model"]["version"] == served.version
        assert c.get("/v1/model").status_code == 401
        assert c.get("/v1/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/v1/model?token=s3cret").status_code == 200
        code, msg = _refused(c, "/v1/stream?token=wrong", [])
        assert code == 4401 and "token" in msg
        with c.websocket_connect("/v1/stream?token=s3cret") as ws:
            assert ws.receive_json()["type"] == "ready"


def test_token_throttle_doubles_the_wait_and_forgets_a_right_token() -> None:
    from pipeline_lib.serve.models import MAX_BACKOFF_S, TokenThrottle

    now = [100.0]
    throttle = TokenThrottle(free=2, backoff_s=1.0, clock=lambda: now[0])
    throttle.failed("a")
    assert throttle.wait_s("a") == 0  # one free wrong try left
    throttle.failed("a")
    assert throttle.wait_s("a") == 1.0 and throttle.wait_s("b") == 0  # per address
    now[0] += 1.0
    throttle.failed("a")
    assert throttle.wait_s("a") == 2.0
    for _ in range(40):
        throttle.failed("a")
    assert throttle.wait_s("a") == MAX_BACKOFF_S
    throttle.succeeded("a")
    assert throttle.wait_s("a") == 0


def test_tflite_runtime_serves_the_same_events(served: Served, client: TestClient) -> None:
    audio = wav_bytes(scene())
    onnx_events = client.post("/v1/detect", content=audio).json()["events"]
    with served.client(runtime="tflite") as c:
        res = c.post("/v1/detect", content=audio).json()
    assert res["model"]["runtime"] == "tflite"
    # INT8 may cross the threshold one detector hop (10 frames of 10 ms) from FP32, as
    # the chirp model's weights vary with the thread count it was trained on
    int8, fp32 = (sorted(e["time_s"] for e in ev) for ev in (res["events"], onnx_events))
    assert len(int8) == len(fp32) >= 1
    assert all(abs(a - b) <= 0.1 + 1e-6 for a, b in zip(int8, fp32, strict=True)), (int8, fp32)


def test_a_promotion_is_served_once_the_alias_is_looked_up_again(
    served: Served, chirp_export: Path
) -> None:
    with served.client(alias_ttl_s=0) as c:
        before = c.get("/v1/model?alias=canary").status_code
        newer = chirp_model.publish(served.root, served.params, chirp_export, aliases=("canary",))
        after = c.get("/v1/model?alias=canary").json()
    assert before == 404 and after["version"] == newer and after["ref"] == "canary"


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("soundops")
    return subprocess.run(
        [str(exe), "serve-model", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": str(exe.parent), "HOME": str(root), "SOUNDOPS_SERVICE_TOKEN": ""},
    )


@pytest.mark.slow  # end to end: subprocesses or every engine
def test_serve_model_refuses_an_unknown_alias_and_an_open_host_without_token(
    served: Served,
) -> None:
    unknown = _cli(served.root, "--alias", "nope")
    assert unknown.returncode == 2
    assert "no version or alias 'nope'" in unknown.stderr and "Traceback" not in unknown.stderr
    open_host = _cli(served.root, "--host", "0.0.0.0")
    assert open_host.returncode == 2 and "token" in open_host.stderr
    bad = _cli(served.root, "--runtime", "tensorrt")
    assert bad.returncode == 2 and "--runtime" in bad.stderr
