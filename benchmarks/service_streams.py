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
3. ``--hostile N``: instead of 2, the good streams (``--streams``) while N clients loop
   ``POST /v1/detect`` with an 18 s clip, every tenth of them with the multi-channel bomb
   (600 s of 8-channel 96 kHz silence, 0.5 MB of FLAC). The uploaders run in a process of
   their own and wait the Retry-After a 503 asks for (``--greedy``: they do not). Prints
   the good streams' latency per window (p50, p95, max), the server's peak RSS, how many
   uploads were served, refused (503) or bounced (413), and /health's slowest answer.

``--chirp`` serves the tests' chirp detector from a scratch project (trained in about a
minute), so no ``make demo`` is needed.

    python benchmarks/service_streams.py [--alias edge] [--seconds 20] [--workers 1]
    python benchmarks/service_streams.py --chirp --hostile 80 --seconds 40
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from pipeline_lib.audio.io import read_audio, resample

REPO = Path(__file__).resolve().parents[1]
BOMB_EVERY = 10  # one uploader in ten sends the multi-channel bomb


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
) -> tuple[subprocess.Popen[bytes], Path]:
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
                return proc, log
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


def rss_mb(pid: int) -> float:
    """Resident memory of the server process and its worker processes."""
    own = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            own = int(line.split()[1]) / 1024
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return own + sum(rss_mb(int(c)) for c in children)


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


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def bomb_flac() -> bytes:
    """600 s of 8-channel 96 kHz silence: 0.5 MB of FLAC, 1.8 GB as float32."""
    buf = io.BytesIO()
    block = np.zeros((96000 * 10, 8), dtype=np.int16)
    with sf.SoundFile(buf, "w", 96000, 8, format="FLAC", subtype="PCM_16") as f:
        for _ in range(60):
            f.write(block)
    return buf.getvalue()


async def upload_loop(
    url: str, body: bytes, name: str, until: float, greedy: bool, out: list[tuple[int, float]]
) -> None:
    """POST ``body`` again and again until ``until``; ``(status, seconds)`` per answer
    (status 0: no answer). A 503's Retry-After is waited unless ``greedy``."""
    import httpx

    async with httpx.AsyncClient(timeout=120) as client:
        while time.time() < until:
            t0 = time.perf_counter()
            try:
                res = await client.post(f"{url}/v1/detect?name={name}", content=body)
                status, wait = res.status_code, float(res.headers.get("retry-after", 0))
            except httpx.HTTPError:
                status, wait = 0, 0.5
            out.append((status, time.perf_counter() - t0))
            if status == 503 and not greedy:
                await asyncio.sleep(wait)


def uploaders(
    url: str, n: int, clip: bytes, bomb: bytes, until: float, greedy: bool, results: Any
) -> None:
    """The hostile clients, in a process of their own (the good streams' clock must not
    share an event loop with them)."""

    async def run() -> list[tuple[int, float]]:
        out: list[tuple[int, float]] = []
        jobs = [
            upload_loop(
                url,
                bomb if i % BOMB_EVERY == 0 else clip,
                "bomb.flac" if i % BOMB_EVERY == 0 else "clip.wav",
                until,
                greedy,
                out,
            )
            for i in range(n)
        ]
        await asyncio.gather(*jobs)
        return out

    results.put(asyncio.run(run()))


async def watch(
    pid: int, url: str, stop: asyncio.Event, rss: list[float], health: list[float]
) -> None:
    """Server RSS every 0.25 s and /health's answer time every second, until ``stop``."""
    import httpx

    async with httpx.AsyncClient(timeout=30) as client:
        tick = 0
        while not stop.is_set():
            rss.append(rss_mb(pid))
            if tick % 4 == 0:
                t0 = time.perf_counter()
                await client.get(f"{url}/health")
                health.append(time.perf_counter() - t0)
            tick += 1
            await asyncio.sleep(0.25)


def hostile(
    proc: subprocess.Popen[bytes],
    port: int,
    url: str,
    frames: list[bytes],
    hop_s: float,
    rate: int,
    args: argparse.Namespace,
) -> None:
    """The good streams under N looping uploaders (one in ten sending the bomb)."""
    http = f"http://127.0.0.1:{port}"
    clip = np.frombuffer(b"".join(frames), dtype="<i2").astype(np.float32) / 32768
    clip_wav = wav_bytes(np.resize(clip, int(18 * rate)), rate)
    bomb = bomb_flac()
    idle_rss = rss_mb(proc.pid)
    warm_s = 3.0  # the uploaders fill every place before the streams start
    until = time.time() + warm_s + len(frames) * hop_s + 2
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    load = ctx.Process(
        target=uploaders, args=(http, args.hostile, clip_wav, bomb, until, args.greedy, results)
    )
    load.start()
    time.sleep(warm_s)

    async def measured() -> tuple[list[StreamResult], list[float], list[float]]:
        stop, rss, health = asyncio.Event(), [idle_rss], list[float]()
        watcher = asyncio.create_task(watch(proc.pid, http, stop, rss, health))
        streams = await run_streams(url, frames, hop_s, args.streams)
        stop.set()
        await watcher
        return streams, rss, health

    t0, cpu0 = time.perf_counter(), cpu_seconds(proc.pid)
    streams, rss, health = asyncio.run(measured())
    cpu = (cpu_seconds(proc.pid) - cpu0) / (time.perf_counter() - t0)
    answers: list[tuple[int, float]] = results.get(timeout=300)
    load.join(timeout=60)
    lat = np.concatenate([r.latencies_ms for r in streams]) if streams else np.array([])
    counts = Counter(status for status, _ in answers)
    served_s = [t for status, t in answers if status == 200]
    refused = [r.refused for r in streams if r.refused]
    print(
        f"hostile: {args.streams} good stream(s) of {len(frames) * hop_s:g} s, {args.hostile} "
        f"uploaders of an 18 s clip ({len(clip_wav) // 1024} KB WAV), every {BOMB_EVERY}th the "
        f"8-channel bomb ({len(bomb) // 1024} KB FLAC); uploaders "
        f"{'ignore' if args.greedy else 'wait'} Retry-After"
    )
    print(
        f"good streams: latency per window p50 {np.percentile(lat, 50):.1f} ms, "
        f"p95 {np.percentile(lat, 95):.1f} ms, max {lat.max():.1f} ms; worst tail "
        f"{max(r.tail_s for r in streams):.2f} s; real time: "
        f"{'yes' if not refused and np.percentile(lat, 95) < hop_s * 1000 else 'no'}"
        + (f" ({refused[0]})" if refused else "")
    )
    print(
        f"server: RSS idle {idle_rss:.0f} MB, peak {max(rss):.0f} MB; CPU {cpu * 100:.0f}%; "
        f"/health slowest {max(health) * 1000:.0f} ms over {len(health)} probes"
    )
    print(
        f"uploads: {counts[200]} served (median {np.median(served_s) if served_s else 0:.2f} s), "
        f"{counts[503]} refused with 503, {counts[413]} bounced with 413 (the bomb), "
        f"{sum(v for k, v in counts.items() if k not in (200, 413, 503))} other "
        f"{dict((k, v) for k, v in counts.items() if k not in (200, 413, 503))}"
    )


def chirp_project() -> tuple[Path, Path]:
    """A scratch project serving the tests' chirp detector as ``edge``, and a stream of
    chirps and decoys to send it."""
    import importlib

    import yaml

    from pipeline_lib.base.params import parse_params

    sys.path.insert(0, str(REPO))
    chirp_model = importlib.import_module("tests.chirp_model")  # test code: not type-checked
    root = Path(tempfile.mkdtemp(prefix="soundops-bench-service-"))
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    chirp_model.publish(root, parse_params(raw), chirp_model.export(root / "chirp"))
    audio = root / "scene.wav"
    scene = chirp_model.scene(20.0, [3.0, 11.0], seed=3, decoys_at=[7.0])
    sf.write(str(audio), scene, chirp_model.RATE, subtype="PCM_16")
    return root, audio


def default_audio(root: Path) -> Path:
    found = sorted((root / "data" / "generated" / "streams" / "test").glob("*.flac"))
    if not found:
        sys.exit("no --audio given and no generated test stream; run `make demo` first")
    return found[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=REPO)
    ap.add_argument("--alias", default="edge")
    ap.add_argument(
        "--audio", type=Path, help="recording streamed (default: a generated test stream)"
    )
    ap.add_argument("--seconds", type=float, default=20.0, help="audio per stream")
    ap.add_argument("--max-streams", type=int, default=256)
    ap.add_argument("--workers", type=int, default=1, help="server processes")
    ap.add_argument("--chirp", action="store_true", help="serve the tests' chirp detector")
    ap.add_argument("--hostile", type=int, default=0, metavar="N", help="N looping uploaders")
    ap.add_argument("--streams", type=int, default=1, help="good streams in --hostile mode")
    ap.add_argument("--greedy", action="store_true", help="uploaders ignore Retry-After")
    args = ap.parse_args()
    if args.chirp:
        args.root, chirp_audio = chirp_project()
        args.audio = args.audio or chirp_audio
    port = free_port()
    proc, log = start_server(args.root, args.alias, port, args.max_streams, args.workers)
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
        if args.hostile:
            hostile(proc, port, url, frames, hop_s, rate, args)
            text = log.read_text(errors="replace")
            print(f"server log: {text.count('Traceback')} tracebacks ({log})")
            return
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
