"""Live service: latency per streamed window, and how many streams keep real time.

Starts ``soundops serve-model`` for a registered version (after ``make demo`` and a
promotion, or name one with ``--alias``), then from this process streams a recording over
``/v1/stream`` as a microphone would: one 100 ms frame (one detector hop) every 100 ms
per stream, on a fixed schedule. Each reply carries the windows the frame completed, so
the time from sending a frame to its reply is the latency of that window.

1. One stream: latency per window (median, p95, max).
2. N streams at once, N = 1, 2, 4, ...: a stream keeps real time when its p95 latency
   stays under one hop and its last reply comes within half a second of its last frame.
   The largest N where every stream does is the figure. The clients run on the same
   machine as the server and take their share of its cores.

    python benchmarks/service_streams.py [--alias edge] [--seconds 20] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline_lib.audio import read_audio, resample

REPO = Path(__file__).resolve().parents[1]


@dataclass
class StreamResult:
    latencies_ms: list[float]
    tail_s: float
    refused: str | None

    @property
    def p95(self) -> float:
        return float(np.percentile(self.latencies_ms, 95)) if self.latencies_ms else float("inf")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    root: Path, alias: str, port: int, streams: int, workers: int
) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("soundops")
    cmd = [str(exe), "serve-model", "--root", str(root), "--port", str(port), "--alias", alias]
    cmd += ["--max-streams", str(streams), "--workers", str(workers)]
    log = Path(tempfile.mkstemp(prefix="soundops-serve-", suffix=".log")[1])
    with log.open("wb") as out:  # a file, not a pipe: nobody reads it while streams run
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=out)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"soundops serve-model exited: {log.read_text().strip().splitlines()[-1:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    sys.exit("soundops serve-model did not answer /health within 180 s")


def cpu_seconds(pid: int) -> float:
    """CPU time of the server process and its worker processes."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return own + sum(cpu_seconds(int(c)) for c in children)


async def one_stream(url: str, frames: list[bytes], hop_s: float, offset_s: float) -> StreamResult:
    from websockets.asyncio.client import connect

    await asyncio.sleep(offset_s)
    sent: list[float] = []
    latencies: list[float] = []
    async with connect(url, max_size=None) as ws:
        ready = json.loads(await ws.recv())
        if ready["type"] != "ready":
            return StreamResult([], 0.0, ready.get("message", "refused"))

        async def receive() -> None:
            for i in range(len(frames)):
                msg = json.loads(await ws.recv())
                if msg["type"] == "error":
                    raise RuntimeError(msg["message"])
                latencies.append((time.perf_counter() - sent[i]) * 1000)

        reader = asyncio.create_task(receive())
        start = time.perf_counter()
        for i, frame in enumerate(frames):
            delay = start + i * hop_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent.append(time.perf_counter())
            await ws.send(frame)
        try:
            await reader
        except RuntimeError as exc:
            return StreamResult(latencies, float("inf"), str(exc))
        tail = time.perf_counter() - sent[-1]
    return StreamResult(latencies, tail, None)


async def run_streams(url: str, frames: list[bytes], hop_s: float, n: int) -> list[StreamResult]:
    # streams start spread over one hop, as independent microphones would
    jobs = [one_stream(url, frames, hop_s, hop_s * i / n) for i in range(n)]
    return list(await asyncio.gather(*jobs))


HEADER = f"{'streams':>8} {'p95 ms':>8} {'worst p95':>10} {'worst tail s':>12} {'server CPU':>11}"


def print_row(n: int, results: list[StreamResult], hop_s: float, cpu: float) -> bool:
    """One line of the table; whether every stream kept real time."""
    refused = [r.refused for r in results if r.refused]
    worst_p95 = max(r.p95 for r in results)
    worst_tail = max(r.tail_s for r in results)
    ok = not refused and worst_p95 < hop_s * 1000 and worst_tail < 0.5
    lat = [r.latencies_ms for r in results if r.latencies_ms]
    p95 = float(np.percentile(np.concatenate(lat), 95)) if lat else float("inf")
    note = f"  ({refused[0]})" if refused else ""
    print(
        f"{n:>8} {p95:>8.1f} {worst_p95:>10.1f} {worst_tail:>12.2f} {cpu * 100:>10.0f}%"
        f"  real time: {'yes' if ok else 'no'}{note}"
    )
    return ok


def frames_of(path: Path, rate: int, seconds: float, hop: int) -> list[bytes]:
    dec = read_audio(path)
    audio = resample(dec.samples, dec.rate, rate)
    need = int(seconds * rate)
    audio = np.resize(audio, need)  # loop a short recording
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    return [pcm[i : i + hop].tobytes() for i in range(0, need - hop + 1, hop)]


def default_audio(root: Path) -> Path:
    found = sorted((root / "data" / "demo" / "streams" / "test").glob("*.flac"))
    if not found:
        sys.exit("no --audio given and no demo test stream; run `make demo` first")
    return found[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=REPO)
    ap.add_argument("--alias", default="edge")
    ap.add_argument("--audio", type=Path, help="recording streamed (default: a demo test stream)")
    ap.add_argument("--seconds", type=float, default=20.0, help="audio per stream")
    ap.add_argument("--max-streams", type=int, default=256)
    ap.add_argument("--workers", type=int, default=1, help="server processes")
    args = ap.parse_args()
    port = free_port()
    proc = start_server(args.root, args.alias, port, args.max_streams, args.workers)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/model?alias={args.alias}") as r:
            info = json.loads(r.read())
        rate, hop_s = int(info["rate"]), float(info["hop_s"])
        frames = frames_of(
            args.audio or default_audio(args.root), rate, args.seconds, round(rate * hop_s)
        )
        url = f"ws://127.0.0.1:{port}/v1/stream?alias={args.alias}"
        print(
            f"model {info['name']} v{info['version']} ({info['runtime']}), "
            f"hop {hop_s * 1000:.0f} ms, window {info['window_s']} s; {len(frames)} frames "
            f"({args.seconds:g} s) per stream; {args.workers} server process(es); "
            f"{os.cpu_count()} cores shared by server and clients"
        )
        one = asyncio.run(run_streams(url, frames, hop_s, 1))[0]
        lat = np.array(one.latencies_ms)
        print(
            f"one stream: latency per window median {np.median(lat):.1f} ms, "
            f"p95 {np.percentile(lat, 95):.1f} ms, max {lat.max():.1f} ms"
        )
        print(HEADER)

        def trial(n: int) -> bool:
            """n streams at once: one table row; whether all kept real time."""
            cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
            results = asyncio.run(run_streams(url, frames, hop_s, n))
            cpu = (cpu_seconds(proc.pid) - cpu0) / (time.perf_counter() - t0)
            return print_row(n, results, hop_s, cpu)

        best, n = 0, 1
        while n <= args.max_streams and trial(n):
            best, n = n, n * 2
        lo, hi = best, n
        if best and hi <= args.max_streams:  # hi failed: narrow down between the two
            while hi - lo > max(1, lo // 8):
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if trial(mid) else (lo, mid)
        best = lo
        print(f"streams kept in real time on this machine: {best}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
