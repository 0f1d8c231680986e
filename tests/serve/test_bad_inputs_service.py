"""The service cases of the bad-input corpus, against a real `soundops serve-model` (uvicorn,
MLflow registry, the chirp INT8 model) on 127.0.0.1. For each hostile input: the status,
one sentence naming the limit's key, no traceback in the server's log, and a server that
still answers /health."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import yaml

from pipeline_lib.base.params import parse_params
from pipeline_lib.serve.app import CROSS_ORIGIN
from tests import chirp_model
from tests.conftest import shipped_params

EXE = Path(sys.executable).with_name("soundops")
TOKEN = "correct-horse-battery"
TOKEN_FAILURES = 3
# the shipped limits, but short deadlines and one upload place, so each case is quick
LIMITS: dict[str, float] = {
    "header_timeout_s": 1.0,
    "body_timeout_s": 3.0,
    "max_uploads": 1,
    "upload_queue": 0,
    "upload_wait_s": 0.5,
    "token_failures": TOKEN_FAILURES,
    "token_backoff_s": 1.0,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SOUNDOPS_SERVICE_TOKEN"}
    return env | {"OMP_NUM_THREADS": "1"} | extra


@dataclass
class Server:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def assert_healthy(self) -> None:
        """/health answers at once, and nothing so far logged a traceback."""
        t0 = time.monotonic()
        assert httpx.get(f"{self.url}/health", timeout=5).status_code == 200
        assert time.monotonic() - t0 < 2.0
        text = self.log_text()
        assert "Traceback" not in text and "Exception in ASGI" not in text, text[-3000:]

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM in /proc status")


def start(root: Path, *args: str, env: dict[str, str]) -> Iterator[Server]:
    port = free_port()
    log = root / f"server-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(EXE), "serve-model", "--root", str(root), "--port", str(port), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = Server(f"http://127.0.0.1:{port}", port, proc, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"soundops serve-model did not start:\n{server.log_text()}")
            time.sleep(0.3)
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, chirp_export: Path) -> Path:
    root = tmp_path_factory.mktemp("bad-service")
    raw = shipped_params()
    raw["service"] |= LIMITS
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    chirp_model.publish(root, parse_params(raw), chirp_export)
    return root


@pytest.fixture(scope="module")
def server(project: Path) -> Iterator[Server]:
    yield from start(project, env=server_env())


@pytest.fixture(scope="module")
def guarded(project: Path) -> Iterator[Server]:
    """The same service with a token, read from a file."""
    token_file = project / "token.txt"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    yield from start(project, "--token-file", str(token_file), env=server_env())


def wav(seconds: float = 4.0) -> bytes:
    buf = io.BytesIO()
    audio = chirp_model.scene(seconds, [1.0], seed=5)
    sf.write(buf, audio, chirp_model.RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def bomb() -> bytes:
    """The finding's decompression bomb: 600 s of 8-channel 96 kHz silence, 0.5 MB of FLAC
    (2.2 GB as float32), written in blocks so the test itself stays small."""
    buf = io.BytesIO()
    block = np.zeros((96000 * 10, 8), dtype=np.int16)
    with sf.SoundFile(buf, "w", 96000, 8, format="FLAC", subtype="PCM_16") as f:
        for _ in range(60):
            f.write(block)
    return buf.getvalue()


def unknown_length_flac() -> bytes:
    """A FLAC whose STREAMINFO leaves the total sample count at 0 (unknown), as a streaming
    encoder writes it: its length cannot be checked before decoding."""
    buf = io.BytesIO()
    sf.write(buf, np.zeros((16000, 1), dtype=np.int16), 16000, format="FLAC")
    data = bytearray(buf.getvalue())
    at = 4 + 4 + 10  # "fLaC", the block header, then rate/channels/bits and 36 bits of count
    value = int.from_bytes(data[at : at + 8], "big") & ~((1 << 36) - 1)
    data[at : at + 8] = value.to_bytes(8, "big")
    return bytes(data)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_until_closed(sock: socket.socket, within_s: float) -> bytes:
    """What the server sends until it closes the connection; fails if it stays open."""
    deadline = time.monotonic() + within_s
    got = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"the server kept the connection open for {within_s:g} s: {got[:200]!r}")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk


def headers(port: int, length: int, path: str = "/v1/detect") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def one_sentence(detail: str) -> bool:
    return detail.endswith(".") and "\n" not in detail and "Traceback" not in detail


# finding 1: a decompression bomb via the channel count


def test_a_multichannel_bomb_is_refused_from_its_header(server: Server) -> None:
    before = server.peak_rss_mb()
    res = httpx.post(f"{server.url}/v1/detect?name=bomb.flac", content=bomb(), timeout=60)
    assert res.status_code == 413
    assert res.json()["detail"] == (
        "bomb.flac: 57,600,000 frames x 8 channels is more than "
        "service.max_decoded_samples = 30,000,000 samples."
    )
    assert server.peak_rss_mb() - before < 100  # was +2.2 GB
    nolength = httpx.post(
        f"{server.url}/v1/detect?name=stream.flac", content=unknown_length_flac(), timeout=30
    )
    assert nolength.status_code == 413
    detail = nolength.json()["detail"]
    assert detail.startswith("stream.flac: the header does not state how long")
    assert "service.max_detect_s" in detail and one_sentence(detail)
    server.assert_healthy()


# finding 2: any web page could POST to the local service


def test_another_sites_page_is_refused_on_every_http_route(server: Server) -> None:
    evil = {"Origin": "http://evil.example"}
    plain = httpx.post(
        f"{server.url}/v1/detect",
        content=wav(),
        headers=evil | {"Content-Type": "text/plain"},
        timeout=30,
    )
    form = httpx.post(
        f"{server.url}/v1/verify", files={"file": ("x.wav", wav(1.0))}, headers=evil, timeout=30
    )
    sandboxed = httpx.post(
        f"{server.url}/v1/detect", content=wav(), headers={"Origin": "null"}, timeout=30
    )
    model = httpx.get(f"{server.url}/v1/model", headers=evil, timeout=10)
    for res in (plain, form, sandboxed, model):
        assert res.status_code == 403 and res.json()["detail"] == CROSS_ORIGIN
    assert one_sentence(CROSS_ORIGIN)
    # the service's own page, and clients that send no Origin, are served
    own = {"Origin": server.url}
    assert httpx.post(f"{server.url}/v1/detect", content=wav(), headers=own).status_code == 200
    assert httpx.post(f"{server.url}/v1/detect", content=wav(), timeout=30).status_code == 200
    server.assert_healthy()


# findings 3 and 14: a cap on uploads, and deadlines for headers and bodies


def test_half_sent_headers_are_closed_after_the_header_timeout(server: Server) -> None:
    socks = [connect(server.port) for _ in range(30)]
    for i, sock in enumerate(socks):  # a third send nothing, the rest stop mid-header
        if i % 3:
            sock.sendall(b"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
    t0 = time.monotonic()
    for sock in socks:
        with sock:
            assert read_until_closed(sock, LIMITS["header_timeout_s"] + 4) == b""
    assert time.monotonic() - t0 < LIMITS["header_timeout_s"] + 3
    assert "service.header_timeout_s" in server.log_text()
    server.assert_healthy()


def test_uploads_beyond_the_cap_get_503_and_a_stalled_body_408(server: Server) -> None:
    # one upload place (max_uploads 1, upload_queue 0): a body that stalls holds it
    with connect(server.port) as stalled:
        stalled.sendall(headers(server.port, 200_000) + b"\x00" * 1000)
        time.sleep(0.5)
        t0 = time.monotonic()
        refused = httpx.post(f"{server.url}/v1/detect", content=wav(), timeout=10)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["detail"] == (
            "no upload place came free within service.upload_wait_s = 0.5 s "
            "(service.max_uploads = 1 are scored at once, service.upload_queue = 0 wait); "
            "retry in 1 s."
        )
        assert 0.5 <= time.monotonic() - t0 < 2.5  # after the short wait, its body unread
        server.assert_healthy()  # and /health is not held up
        answer = read_until_closed(stalled, LIMITS["body_timeout_s"] + 4)
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout"
    detail = json.loads(rest.partition(b"\r\n\r\n")[2])["detail"]
    assert detail == "the upload did not arrive within service.body_timeout_s = 3 s."
    # the place is free again
    assert httpx.post(f"{server.url}/v1/detect", content=wav(), timeout=30).status_code == 200
    server.assert_healthy()


def test_an_aborted_upload_logs_one_line_and_no_traceback(server: Server) -> None:
    with connect(server.port) as sock:
        sock.sendall(headers(server.port, 500_000) + b"\x00" * 20_000)
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while "the client left after" not in server.log_text():
        assert time.monotonic() < deadline, server.log_text()[-2000:]
        time.sleep(0.1)
    lines = [line for line in server.log_text().splitlines() if "the client left" in line]
    assert len(lines) == 1 and "ClientDisconnect" not in server.log_text()
    server.assert_healthy()


# finding 12: the token


def test_health_shows_only_liveness_without_the_token(guarded: Server) -> None:
    bare = httpx.get(f"{guarded.url}/health", timeout=5)
    assert bare.status_code == 200 and bare.json() == {"status": "ok"}
    auth = {"Authorization": f"Bearer {TOKEN}"}
    full = httpx.get(f"{guarded.url}/health", headers=auth, timeout=5).json()
    assert full["status"] == "ok" and full["model"]["threshold"] > 0
    assert httpx.get(f"{guarded.url}/v1/model", timeout=5).status_code == 401
    # the token came from a file: it is not on the command line `ps` shows
    cmdline = Path(f"/proc/{guarded.proc.pid}/cmdline").read_bytes()
    assert TOKEN.encode() not in cmdline and b"--token-file" in cmdline
    guarded.assert_healthy()


def test_wrong_tokens_are_throttled_per_address(guarded: Server) -> None:
    from websockets.sync.client import connect as ws_connect

    url, right = f"{guarded.url}/v1/model", {"Authorization": f"Bearer {TOKEN}"}
    codes = [
        httpx.get(url, headers={"Authorization": f"Bearer guess{i}"}, timeout=5).status_code
        for i in range(TOKEN_FAILURES)
    ]
    assert codes == [401] * TOKEN_FAILURES
    t0 = time.monotonic()
    blocked = [httpx.get(url, headers=right, timeout=5) for _ in range(3)]  # not even checked
    for res in blocked:
        assert res.status_code == 429 and int(res.headers["retry-after"]) >= 1
        detail = res.json()["detail"]
        assert detail.startswith("too many wrong tokens from this address")
        assert "service.token_failures = 3" in detail and one_sentence(detail)
    # /health stays a liveness probe meanwhile, and the stream is refused the same way
    assert httpx.get(f"{guarded.url}/health", headers=right).json() == {"status": "ok"}
    ws_url = f"ws://127.0.0.1:{guarded.port}/v1/stream?token={TOKEN}"
    with ws_connect(ws_url) as ws:
        msg = json.loads(ws.recv())
    assert msg["type"] == "error" and msg["code"] == 4429
    time.sleep(max(0.0, LIMITS["token_backoff_s"] - (time.monotonic() - t0)) + 0.2)
    assert httpx.get(url, headers=right, timeout=5).status_code == 200
    # the right token cleared the address: wrong ones get their free tries again
    assert httpx.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.get(url, headers=right, timeout=5).status_code == 200
    guarded.assert_healthy()


def _refused(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [str(EXE), "serve-model", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    return res


@pytest.mark.slow  # end to end: subprocesses or every engine
def test_a_blank_token_and_a_token_on_the_command_line_are_refused(
    project: Path, tmp_path: Path
) -> None:
    root = ("--root", str(project))
    blank = _refused(*root, env=server_env(SOUNDOPS_SERVICE_TOKEN=" \t "))
    assert "SOUNDOPS_SERVICE_TOKEN holds only whitespace" in blank.stderr
    (tmp_path / "blank.txt").write_text("  \n", encoding="utf-8")
    blank_file = _refused(*root, "--token-file", str(tmp_path / "blank.txt"), env=server_env())
    assert "blank.txt holds only whitespace" in blank_file.stderr
    missing = _refused(*root, "--token-file", str(tmp_path / "none.txt"), env=server_env())
    assert "none.txt: cannot read it (No such file or directory)" in missing.stderr
    argv = _refused(*root, "--token", "s3cret", env=server_env())
    assert "`ps`" in argv.stderr and "SOUNDOPS_SERVICE_TOKEN" in argv.stderr


def test_the_budget_is_in_the_decoder_too() -> None:
    """decode_upload alone (no HTTP): frames x channels is bounded before decoding."""
    from pipeline_lib.serve.models import TooLongError, decode_upload

    buf = io.BytesIO()
    sf.write(buf, np.zeros((16000, 4), dtype=np.int16), 16000, format="WAV")
    kwargs: dict[str, Any] = {"rate": 16000, "rates": (8000.0, 96000.0), "max_s": 60.0}
    out = decode_upload(buf.getvalue(), "ok.wav", key="k", max_samples=64000, **kwargs)
    assert out.shape == (16000,)
    with pytest.raises(TooLongError, match=r"service\.max_decoded_samples = 63,999 samples"):
        decode_upload(buf.getvalue(), "big.wav", key="k", max_samples=63999, **kwargs)
