"""Real voices: does a wake word trained from its phrase alone hear real people?

Trains the phrase through the pipeline in a throw-away copy of this project (the copy's
own sources only: no real recording of the phrase reaches training), then scores the
shipped INT8 model (``data/export/model_int8.onnx``: the graph the TFLite file holds,
parity-gated by the export stage) through the streaming detector on

- **positives**: every real recording of the phrase (default: the 315 "alexa" speakers in
  ``../shared/data/wakewords-real/alexa``), each put at a stated SNR into real noise (the
  drone and environmental recordings of ``../shared/data/drone``), one every few seconds;
- **negatives**: hours of audio that never holds the phrase: the real recordings of the
  other phrases, the drone and environmental recordings, and speech spoken by espeak-ng
  voices that the training never used (checked against the copy's params).

It prints false rejections at 0.1 / 0.5 / 1 / 2 false alarms per hour (events with the
calibrated refractory time; the threshold swept on this audio: a DET point), recall and
FAH at the calibrated preset with 95% intervals, whether the preset's FAH target lies in
that interval, and the model's size; for "alexa", microWakeWord's INT8 model (from the
``pymicro-wakeword`` wheel, its own features, stride and sliding window) on the same
audio in the same run. It also writes ``real_voices.json`` and a DET plot
``real_voices.png`` into the work folder.

When the copy trained the speech-embedding verifier (``verifier.enabled``, on in the
real-voice recipe), it also scores the verifier alone and the cascade a user gets with a
server: the device model wakes, the verifier confirms from the clip around the wake.

    python benchmarks/real_voices.py [--phrase alexa] [--recipe real_voice]
        [--set train.epochs=20 ...]
        [--mine-rounds N]               # mine, accept and rebuild N times first
        [--train-seeds 1,2]             # also retrain on the same corpus with these
                                        # train.seed values: the spread of the figures
        [--keep DIR] [--project DIR]    # --project: score a built copy (dvc repro export
                                        # first, so changed params are rebuilt)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
FAH_TARGETS = (0.1, 0.5, 1.0, 2.0)
# espeak-ng voices that speak the negative speech; the training must not use them
HELD_OUT_VOICES = ("cs", "hu", "fi", "ro", "nb", "ru", "hi", "el")
HELD_OUT_VARIANTS = ("m1", "m3", "f2", "f4", "klatt4", "Mr serious", "steph", "robosoft")
PEERS = {"alexa": "alexa"}  # phrase -> pymicro-wakeword built-in model
CASCADE_S = 0.5  # a verifier window may end this far before or after the device's wake

log = logging.getLogger("real_voices")


def run(cwd: Path, *cmd: str) -> None:
    # PYTHONPATH: the copy's stages run the copy's code, not this checkout's install
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(cwd),
    }
    subprocess.run(cmd, cwd=cwd, env=env, check=True)


def copy_project(dest: Path) -> None:
    """This checkout's tracked and untracked-not-ignored files, as a fresh git repo."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO / name.decode()
        if src.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())
    run(dest, "git", "init", "-q")
    run(dest, "git", "add", "-A")
    run(dest, "git", "-c", "user.name=bench", "-c", "user.email=b@x", "commit", "-qm", "copy")


def set_params(root: Path, phrase: str, preset: str | None, overrides: list[str]) -> dict[str, Any]:
    from pipeline_lib.base.recipes import merge_keys

    path = root / "params.yaml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if preset:
        file = root / "pipeline_lib" / "presets" / f"{preset}.yaml"
        if not file.is_file():
            sys.exit(f"{file}: no such preset.")
        merge_keys(raw, yaml.safe_load(file.read_text(encoding="utf-8")))
    raw["generate"]["phrase"] = phrase
    for item in overrides:
        key, _, value = item.partition("=")
        node = raw
        *parents, leaf = key.split(".")
        for k in parents:
            node = node[k]
        node[leaf] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return dict(raw)


def mine_round(root: Path) -> None:
    """What a user does between builds: mine the copy's own mining pool (synthetic, target
    free), accept every mined clip as a hard negative, rebuild through export."""
    run(root, "dvc", "repro", "mine")
    run(root, "soundops", "mine", "accept")
    run(root, "dvc", "repro", "export")


def retrain(root: Path, phrase: str, seed: int | None) -> None:
    """Set ``train.seed`` in the copy and rebuild through export (the corpus stays)."""
    set_params(root, phrase, None, [f"train.seed={'null' if seed is None else seed}"])
    run(root, "dvc", "repro", "export")


def seed_rows(
    root: Path, seed: int, pos: Positives, streams: list[Path], preset: str, refractory: float
) -> list[dict[str, Any]]:
    """The INT8 model and its ESPHome form, retrained with ``train.seed``, on the same audio."""
    mine = ours(root, pos, streams, preset)[0]
    mine["model"] += f", train.seed {seed}"
    rows = [mine]
    for esp in sorted((root / "data" / "export" / "esphome").glob("*.json")):
        label = f"soundops ESPHome streaming INT8 ({esp.name}), train.seed {seed}"
        rows.append(manifest_model(esp, label, pos, streams, refractory))
    return rows


def spread(rows: list[dict[str, Any]]) -> None:
    """Mean, min and max of FRR at each FAH over the seeds of one model form."""
    frr = np.array([[r["frr_at_fah"][str(f)]["frr"] for f in FAH_TARGETS] for r in rows])
    for name, v in (("mean", frr.mean(0)), ("min", frr.min(0)), ("max", frr.max(0))):
        print(f"  {name:>4}: " + " / ".join(f"{x:.3f}" for x in v))


def check_training_is_clean(raw: dict[str, Any], real: Path) -> None:
    """No training source reads the real recordings; no held-out voice trains."""
    reads = [(f"ingest source {s['name']!r}", str(s["root"])) for s in raw["ingest"]["sources"]]
    reads += [("mine.audio", str(a)) for a in raw["mine"]["audio"]]
    for what, folder in reads:
        root = (REPO / folder).resolve()
        if real.resolve() in (root, *root.parents) or root in real.resolve().parents:
            sys.exit(f"{what} reads {real}: not a clean benchmark.")
    gen = raw["generate"]
    used = {v.split("+")[0] for v in [*gen["voices"], *gen["accent_voices"]]}
    if used & set(HELD_OUT_VOICES):
        sys.exit(f"training uses held-out voice(s) {sorted(used & set(HELD_OUT_VOICES))}.")


# ---------------------------------------------------------------- audio


def read16k(path: Path) -> np.ndarray | None:
    from pipeline_lib.audio.io import resample

    try:
        x, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError):
        return None
    mono = x.mean(axis=1)
    return mono if rate == 16000 else resample(mono, rate, 16000)


def speech_rms(x: np.ndarray, rate: int = 16000) -> float:
    """RMS over the 30 ms frames within 30 dB of the loudest: the voice, not the pauses."""
    n = int(0.03 * rate)
    frames = x[: x.size // n * n].reshape(-1, n)
    e = np.sqrt(np.mean(frames**2, axis=1)) + 1e-12
    return float(np.sqrt(np.mean(e[e >= e.max() * 10 ** (-30 / 20)] ** 2)))


def noise_bed(files: list[Path], seconds: float, rng: np.random.Generator) -> np.ndarray:
    chunks, total = [], 0
    for p in rng.permutation(np.array(files, dtype=object)):
        x = read16k(Path(p))
        if x is None or not np.any(x):
            continue
        x = x / (np.sqrt(np.mean(x**2)) + 1e-9) * 0.03  # each chunk at -30 dBFS RMS
        chunks.append(x.astype(np.float32))
        total += x.size
        if total >= seconds * 16000:
            break
    bed = np.concatenate(chunks)
    return np.resize(bed, int(seconds * 16000))


@dataclass
class Positives:
    audio: np.ndarray
    spans: list[tuple[float, float]]
    undecodable: int


def positives(real: Path, noise: list[Path], snr_db: float, gap_s: float, seed: int) -> Positives:
    rng = np.random.default_rng(seed)
    clips, bad = [], 0
    for p in sorted(real.glob("*.flac")) + sorted(real.glob("*.wav")):
        x = read16k(p)
        if x is None or not np.any(x):
            bad += 1
            continue
        clips.append(x)
    spacing = max(gap_s, max(c.size for c in clips) / 16000 + 1.0)
    bed = noise_bed(noise, (len(clips) + 2) * spacing, rng)
    spans = []
    for i, c in enumerate(clips):
        start = int((i + 1) * spacing * 16000)
        seg = bed[start : start + c.size]
        gain = np.sqrt(np.mean(seg**2)) * 10 ** (snr_db / 20) / speech_rms(c)
        bed[start : start + c.size] += c * np.float32(gain)
        spans.append((start / 16000, (start + c.size) / 16000))
    peak = float(np.abs(bed).max())
    if peak > 0.99:
        bed *= np.float32(0.99 / peak)
    return Positives(bed, spans, bad)


def negative_streams(
    data: Path, phrase_dir: Path, out: Path, tts_minutes: float, seed: int, minutes: float = 10
) -> dict[str, float]:
    """Long FLAC recordings of audio that never holds the phrase; seconds per source."""
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[Path]] = {}
    for d in sorted((data / "wakewords-real").iterdir()):
        if d.is_dir() and d.resolve() != phrase_dir.resolve():
            groups[f"real speech: {d.name}"] = sorted(d.glob("*.flac"))
    for d in sorted((data / "drone").iterdir()):
        if d.is_dir():
            groups[f"real sound: {d.name}"] = sorted(d.glob("*.flac"))
    seconds: dict[str, float] = {}
    for name, files in groups.items():
        buf: list[np.ndarray] = []
        n, part, total = 0, 0, 0.0
        for p in files:
            x = read16k(p)
            if x is None:
                continue
            buf.append(x)
            n += x.size
            if n >= minutes * 60 * 16000:
                _write(out, name, part, buf)
                total += n / 16000
                buf, n, part = [], 0, part + 1
        if buf:
            _write(out, name, part, buf)
            total += n / 16000
        seconds[name] = total
    seconds["held-out TTS speech (espeak-ng)"] = _tts_streams(out, tts_minutes, seed, minutes)
    return seconds


def _write(out: Path, name: str, part: int, buf: list[np.ndarray]) -> None:
    slug = name.split(": ")[-1].replace(" ", "_")
    sf.write(str(out / f"{slug}-{part:02d}.flac"), np.concatenate(buf), 16000, subtype="PCM_16")


def _tts_streams(out: Path, total_min: float, seed: int, minutes: float) -> float:
    """Sentences and word strings of the bundled texts by held-out espeak-ng voices, with
    pauses; never a word of any real phrase folder."""
    from pipeline_lib.audio.io import resample
    from pipeline_lib.stages.generate import phrases, tts

    banned = {"alexa", "jarvis", "smart", "mirror", "snowboy"}
    sentences = [s for s in phrases.sentences() if not banned & set(s.lower().split())]
    words = [w for w in phrases.lexicon() if w not in banned]
    rng = np.random.default_rng([seed, 99])
    done = 0.0
    part = 0
    while done < total_min * 60:
        buf, n = [], 0
        with tts.SpeechSession() as session:
            while n < minutes * 60 * 16000:
                voice = f"{rng.choice(HELD_OUT_VOICES)}+{rng.choice(HELD_OUT_VARIANTS)}"
                text = (
                    str(rng.choice(sentences))
                    if rng.random() < 0.6
                    else " ".join(rng.choice(words, size=int(rng.integers(2, 9))))
                )
                x = session.speak(text, voice, int(rng.uniform(120, 200)), int(rng.uniform(25, 75)))
                x = resample(x, tts.RATE, 16000)
                pause = np.zeros(int(rng.exponential(1.5) * 16000), np.float32)
                buf += [
                    x / (np.abs(x).max() + 1e-9) * 0.5 * 10 ** (rng.uniform(-20, 0) / 20),
                    pause,
                ]
                n += x.size + pause.size
        _write(out, "tts", part, buf)
        done += n / 16000
        part += 1
    return done


# ---------------------------------------------------------------- scoring


def ours(
    root: Path, pos: Positives, streams: list[Path], preset: str
) -> tuple[dict[str, Any], list[Any], Any]:
    """The shipped INT8 model's figures, and its scored negatives and positives."""
    from pipeline_lib.detect.runtimes import OnnxScorer
    from pipeline_lib.detect.streaming import Calibration, Scored, StreamingDetector, score_file
    from pipeline_lib.stages import evaluate

    model = root / "data" / "export" / "model_int8.onnx"
    scorer = OnnxScorer(model)
    cal = Calibration.load(root / "data" / "calibration" / "calibration.json", preset)
    recs = []
    for p in streams:
        fs = score_file(p, scorer, cal)
        recs.append(
            evaluate.Recording(p.name, p.stem.rsplit("-", 1)[0], p, fs.duration_s, fs.scored)
        )
    det = StreamingDetector(scorer, cal)
    block = 30 * 16000
    scored = Scored.join(
        [det.push(pos.audio[i : i + block]) for i in range(0, pos.audio.size, block)]
        + [det.finish()]
    )
    rule = cal.rule
    window_s = scorer.spec.frames * 0.01
    manifest = json.loads((root / "data" / "export" / "device_manifest.json").read_text())
    out = figures(recs, scored, pos.spans, rule.threshold, rule.refractory_s, window_s)
    out["model"] = f"soundops INT8 ({manifest['spec']['arch']})"
    out["preset"] = {
        "name": preset,
        "target_fah": _target(root, preset),
        "smoothing": rule.smoothing,
    }
    out["tflite_bytes"] = (root / "data" / "export" / "model_int8.tflite").stat().st_size
    out["arena_bytes"] = int(manifest["arena_alloc_bytes"])
    return out, recs, scored


def _target(root: Path, preset: str) -> float:
    raw = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    return float(raw["calibrate"]["presets"][preset])


def peer(name: str, pos: Positives, streams: list[Path], refractory_s: float) -> dict[str, Any]:
    """microWakeWord's model as ESPHome runs it: its features, stride, sliding mean."""
    import importlib.resources

    cfg = Path(str(importlib.resources.files("pymicro_wakeword") / "models" / f"{name}.json"))
    label = f"microWakeWord INT8 ({name}, pymicro-wakeword)"
    return manifest_model(cfg, label, pos, streams, refractory_s)


def manifest_model(
    cfg: Path, label: str, pos: Positives, streams: list[Path], refractory_s: float
) -> dict[str, Any]:
    """A micro_wake_word manifest (microWakeWord's, or the copy's own ESPHome export) run
    by pymicro-wakeword as ESPHome runs it: its features, stride, sliding mean."""
    from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures

    from pipeline_lib.stages import evaluate

    mww = MicroWakeWord.from_config(cfg)

    def run_peer(x: np.ndarray) -> Any:
        from pipeline_lib.detect.streaming import Scored

        mww.reset()
        feats = MicroWakeWordFeatures()
        pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
        times, probs = [], []
        frame = 0
        for i in range(0, len(pcm), 3200 * 10):
            for f in feats.process_streaming(pcm[i : i + 3200 * 10]):
                frame += 1
                p = mww.process_streaming_prob(f)
                if not mww._features and p is not None:  # an inference ran on this frame
                    times.append(frame * 0.01 + 0.02)
                    probs.append(p)
        t, s = np.asarray(times), np.asarray(probs)
        return Scored(t, s, s, [])

    recs = []
    for p in streams:
        x = read16k(p)
        assert x is not None
        recs.append(evaluate.Recording(p.name, p.stem, p, x.size / 16000, run_peer(x)))
    scored = run_peer(pos.audio)
    out = figures(recs, scored, pos.spans, mww.probability_cutoff, refractory_s, 1.5)
    out["model"] = label
    out["preset"] = {"name": "its probability_cutoff", "target_fah": None}
    out["tflite_bytes"] = Path(mww.tflite_model).stat().st_size
    out["arena_bytes"] = int(json.loads(cfg.read_text())["micro"]["tensor_arena_size"])
    return out


def verifier_alone(
    root: Path, pos: Positives, streams: list[Path], refractory_s: float
) -> tuple[dict[str, Any], list[Any], Any] | None:
    """The speech-embedding verifier streamed over the same audio on its own (it runs on
    a server, not a device), or None when the copy trained none."""
    from pipeline_lib.audio.speech_embedding import embedder
    from pipeline_lib.detect import verifier_model
    from pipeline_lib.detect.streaming import Scored
    from pipeline_lib.stages import evaluate, verifier

    path = root / "data" / "verifier" / "verifier.npz"
    if not path.is_file():
        return None
    head = verifier_model.Head.load(path)
    recs = []
    for p in streams:
        t, s, d = verifier.stream_scores(head, p)
        recs.append(evaluate.Recording(p.name, p.stem, p, d, Scored(t, s, s, [])))
    s = head.scores(verifier_model.windows_of(embedder().embed(pos.audio)))
    scored = Scored(verifier_model.window_end_s(np.arange(s.size)), s, s, [])
    window_s = float(verifier_model.window_end_s(0))
    out = figures(recs, scored, pos.spans, head.threshold, refractory_s, window_s)
    out["model"] = "verifier alone (speech embedding + head, server)"
    out["preset"] = {"name": "verifier.target_fah", "target_fah": None}
    out["tflite_bytes"] = path.stat().st_size
    out["arena_bytes"] = 0
    return out, recs, scored


def _best_near(times: np.ndarray, scores: np.ndarray, at: np.ndarray) -> np.ndarray:
    """For each device event time, the verifier's best window ending within CASCADE_S of it
    (the clip a device sends: from 2.5 s before its wake to 0.5 s after)."""
    if at.size == 0 or times.size == 0:
        return np.zeros(at.size)
    lo = np.searchsorted(times, at - CASCADE_S)
    hi = np.searchsorted(times, at + CASCADE_S, side="right")
    return np.array([scores[a:b].max() if b > a else 0.0 for a, b in zip(lo, hi, strict=True)])


def cascade(
    dev: tuple[list[Any], Any],
    ver: tuple[list[Any], Any],
    spans: list[tuple[float, float]],
    refractory_s: float,
    window_s: float,
    device_threshold: float,
    verifier_threshold: float,
) -> dict[str, Any]:
    """Device wakes, server verifies: an alarm is a device event whose clip the verifier
    accepts. FRR at each FAH is the best over device and verifier thresholds swept on this
    audio (a DET envelope, as for the single models); the operating point is the device at
    its calibrated ``lenient`` preset and the verifier at its own calibrated threshold."""
    from pipeline_lib.detect import decision

    dev_recs, dev_pos = dev
    ver_recs, ver_pos = ver
    hours = sum(r.duration_s for r in dev_recs) / 3600
    tol = 0.5
    pooled = np.concatenate([r.scored.smoothed for r in dev_recs])
    grid = np.unique(
        np.concatenate(
            [
                np.quantile(pooled, np.linspace(0.9, 1, 30)),
                np.linspace(0.01, 0.99, 30),
                [device_threshold],
            ]
        )
    )
    v_grid = np.unique(np.concatenate([np.linspace(0, 1, 201), [verifier_threshold]]))
    on = np.array([a for a, _ in spans])
    off = np.array([b for _, b in spans])
    points = []  # (device thr, verifier thr, fah, frr)
    for d in grid:
        neg_v = np.concatenate(
            [
                _best_near(
                    vr.scored.times,
                    vr.scored.smoothed,
                    np.array(
                        [
                            t
                            for t, _ in decision.detect(
                                dr.scored.smoothed, dr.scored.times, d, refractory_s
                            )
                        ]
                    ),
                )
                for dr, vr in zip(dev_recs, ver_recs, strict=True)
            ]
        )
        ev = np.array(
            [t for t, _ in decision.detect(dev_pos.smoothed, dev_pos.times, d, refractory_s)]
        )
        pos_v = _best_near(ver_pos.times, ver_pos.smoothed, ev)
        span_best = np.zeros(len(spans))
        for t, v in zip(ev, pos_v, strict=True):
            inside = np.flatnonzero((t >= on - tol) & (t <= off + window_s + tol))
            if inside.size:
                span_best[inside[0]] = max(span_best[inside[0]], v)
            # an event between positives is a false alarm of the positive stream: ignored,
            # as for the single models (their events there are "stray")
        neg_sorted = np.sort(neg_v)
        for v in v_grid:
            fa = neg_sorted.size - np.searchsorted(neg_sorted, v, side="left")
            frr = 1.0 - float(np.mean(span_best >= max(v, 1e-9)))
            points.append((float(d), float(v), fa / hours, frr))
    pts = np.array(points)
    frr_at = {}
    for f in FAH_TARGETS:
        ok = pts[pts[:, 2] <= f]
        i = int(np.argmin(ok[:, 3]))
        frr_at[str(f)] = {
            "frr": float(ok[i, 3]),
            "device_threshold": float(ok[i, 0]),
            "verifier_threshold": float(ok[i, 1]),
            "fah": float(ok[i, 2]),
        }
    op = pts[(pts[:, 0] == device_threshold) & (pts[:, 1] == verifier_threshold)][0]
    n_fa = round(op[2] * hours)
    from pipeline_lib.detect import metrics

    k = round((1 - op[3]) * len(spans))
    lo, hi = metrics.wilson(k, len(spans))
    order = np.argsort(pts[:, 2])
    env_f, env_r = [], []
    best = 1.0
    for f, r in zip(pts[order, 2], pts[order, 3], strict=True):
        if r < best:
            best = r
            env_f.append(float(f))
            env_r.append(float(r))
    return {
        "model": "cascade: soundops INT8 on the device, verifier on the server",
        "frr_at_fah": frr_at,
        "operating_point": {
            "threshold": float(op[1]),
            "device_threshold": float(op[0]),
            "recall": 1 - float(op[3]),
            "recall_lo": lo,
            "recall_hi": hi,
            **metrics.fah(n_fa, hours),
        },
        "preset": {"name": "device lenient + verifier", "target_fah": None},
        "hours": hours,
        "curve": {"fah": env_f, "frr": env_r},
        "tflite_bytes": 0,
        "arena_bytes": 0,
    }


def figures(
    recs: list[Any],
    pos: Any,
    spans: list[tuple[float, float]],
    threshold: float,
    refractory_s: float,
    window_s: float,
) -> dict[str, Any]:
    from pipeline_lib.detect import decision, metrics
    from pipeline_lib.stages import evaluate

    tol = 0.5
    curve = evaluate.sweep(recs, pos, spans, refractory_s, window_s, tol, points=600)
    hours = sum(r.duration_s for r in recs) / 3600
    n = metrics.count_events(
        [r.scored.smoothed for r in recs], [r.scored.times for r in recs], threshold, refractory_s
    )
    ev = metrics.match_events(
        decision.detect(pos.smoothed, pos.times, threshold, refractory_s), spans, window_s, tol
    )
    k = int(ev.hits.sum())
    lo, hi = metrics.wilson(k, len(spans))
    return {
        "frr_at_fah": {str(f): evaluate.frr_at_fah(curve, f) for f in FAH_TARGETS},
        "operating_point": {
            "threshold": threshold,
            "recall": ev.recall,
            "recall_lo": lo,
            "recall_hi": hi,
            **metrics.fah(n, hours),
        },
        "hours": hours,
        "curve": curve[["fah", "frr"]].to_dict("list"),
    }


def plot(results: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in results:
        c = r["curve"]
        ax.plot(np.maximum(c["fah"], 0.01), c["frr"], label=r["model"])
    for f in FAH_TARGETS:
        ax.axvline(f, color="0.85", lw=0.8, zorder=0)
    ax.set(xscale="log", xlabel="false alarms per hour", ylabel="false rejection rate", title=title)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phrase", default="alexa")
    ap.add_argument("--real", type=Path, help="folder of real recordings of the phrase")
    ap.add_argument("--data", type=Path, default=DATA, help="the shared real-audio folder")
    ap.add_argument("--snr-db", type=float, default=10.0)
    ap.add_argument("--gap-s", type=float, default=4.0)
    ap.add_argument("--tts-minutes", type=float, default=120.0)
    ap.add_argument("--preset", default="balanced")
    ap.add_argument("--recipe", help="a preset of pipeline_lib/presets, e.g. real_voice")
    ap.add_argument("--set", action="append", default=[], help="params override KEY=YAML")
    ap.add_argument(
        "--mine-rounds",
        type=int,
        default=0,
        help="hard-negative mining rounds after the first export (mine, accept, repro)",
    )
    ap.add_argument(
        "--train-seeds",
        default="",
        help="comma-separated train.seed values to retrain on the same corpus and score too",
    )
    ap.add_argument("--keep", type=Path, help="work here and keep it (default: a temp dir)")
    ap.add_argument("--project", type=Path, help="an already built copy: skip training")
    args = ap.parse_args()
    if args.mine_rounds < 0 or (args.mine_rounds and args.project):
        sys.exit(f"--mine-rounds {args.mine_rounds}: give 0 or more rounds, and no --project.")
    try:
        seeds = [int(x) for x in args.train_seeds.split(",") if x.strip()]
    except ValueError:
        sys.exit(f"--train-seeds {args.train_seeds!r}: give whole numbers separated by commas.")
    from pipeline_lib.base.params import MAX_SEED

    if any(not 0 <= x <= MAX_SEED for x in seeds):
        sys.exit(f"--train-seeds {args.train_seeds!r}: each seed must lie in 0 .. {MAX_SEED}.")
    logging.basicConfig(level=logging.WARNING)
    folder = args.phrase.lower().replace(" ", "_")
    real = args.real or args.data / "wakewords-real" / folder
    if not real.is_dir():
        sys.exit(f"{real}: no folder of real recordings of {args.phrase!r}.")
    work = args.keep or Path(tempfile.mkdtemp(prefix="soundops-real-"))
    work.mkdir(parents=True, exist_ok=True)
    root = args.project or work / "project"
    train_s = None
    if args.project is None:
        if not root.exists():
            root.mkdir()
            copy_project(root)
        raw = set_params(root, args.phrase, args.recipe, args.set)
        check_training_is_clean(raw, real)
        start = time.perf_counter()
        run(root, "dvc", "repro", "export")
        for _ in range(args.mine_rounds):
            mine_round(root)
        if raw.get("verifier", {}).get("enabled"):
            run(root, "dvc", "repro", "verifier")
        train_s = time.perf_counter() - start
    raw = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    check_training_is_clean(raw, real)
    if args.project is not None:  # a no-op when the copy is up to date; else its params win
        run(root, "dvc", "repro", "export")
        if raw.get("verifier", {}).get("enabled"):
            run(root, "dvc", "repro", "verifier")
    seed = int(raw["seed"])
    noise = sorted((args.data / "drone").rglob("*.flac"))
    t0 = time.perf_counter()
    pos = positives(real, noise, args.snr_db, args.gap_s, seed)
    neg_dir = work / "negatives"
    if neg_dir.exists():
        shutil.rmtree(neg_dir)
    sources = negative_streams(args.data, real, neg_dir, args.tts_minutes, seed)
    streams = sorted(neg_dir.glob("*.flac"))
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    mine, dev_recs, dev_pos = ours(root, pos, streams, args.preset)
    results = [mine]
    refractory = float(raw["calibrate"]["refractory_s"])
    ver = verifier_alone(root, pos, streams, refractory)
    if ver is not None:
        from pipeline_lib.detect.streaming import Calibration

        lenient = Calibration.load(root / "data" / "calibration" / "calibration.json", "lenient")
        head_thr = ver[0]["operating_point"]["threshold"]
        window_s = (
            float(
                json.loads((root / "data" / "export" / "device_manifest.json").read_text())["spec"][
                    "frames"
                ]
            )
            * 0.01
        )
        results.append(
            cascade(
                (dev_recs, dev_pos),
                (ver[1], ver[2]),
                pos.spans,
                refractory,
                window_s,
                lenient.rule.threshold,
                head_thr,
            )
        )
        results.append(ver[0])
    for esp in sorted((root / "data" / "export" / "esphome").glob("*.json")):
        label = f"soundops ESPHome streaming INT8 ({esp.name}, pymicro-wakeword)"
        results.append(manifest_model(esp, label, pos, streams, refractory))
    if args.phrase.lower() in PEERS:
        results.append(peer(PEERS[args.phrase.lower()], pos, streams, refractory))
    score_s = time.perf_counter() - t0
    ingest = json.loads((root / "metrics" / "ingest.json").read_text())
    report(args, real, pos, sources, results, ingest, train_s, build_s, score_s)
    seeded: list[dict[str, Any]] = []
    if seeds:
        first, phrase = raw["train"]["seed"], raw["generate"]["phrase"]  # the copy's own
        own = first if first is not None else seed
        t0 = time.perf_counter()
        for s in seeds:
            retrain(root, phrase, s)
            seeded += seed_rows(root, s, pos, streams, args.preset, refractory)
        retrain(root, phrase, first)  # the copy back as it was (DVC run cache)
        print(
            f"\nretrained and scored {len(seeds)} more seed(s) in {time.perf_counter() - t0:.0f} s"
        )
        print_table(seeded)
        for form in ("soundops INT8", "soundops ESPHome"):
            rows = [r for r in results if r["model"].startswith(form)][:1]
            rows += [r for r in seeded if r["model"].startswith(form)]
            print(f"{form}, FRR at {' / '.join(f'{f:g}' for f in FAH_TARGETS)} FAH over "
                  f"train.seed {own} and {', '.join(map(str, seeds))}:")  # fmt: skip
            spread(rows)
    out = {
        "phrase": args.phrase,
        "snr_db": args.snr_db,
        "positives": len(pos.spans),
        "negative_hours": {k: v / 3600 for k, v in sources.items()},
        "train_seconds": train_s,
        "recipe": args.recipe,
        "overrides": args.set,
        "mine_rounds": args.mine_rounds,
        "results": [{k: v for k, v in r.items() if k != "curve"} for r in results],
        "train_seeds": [{k: v for k, v in r.items() if k != "curve"} for r in seeded],
    }
    (work / "real_voices.json").write_text(json.dumps(out, indent=2), encoding="utf-8")
    plot(results, work / "real_voices.png", f"'{args.phrase}': {len(pos.spans)} real speakers")
    print(f"\nwrote {work / 'real_voices.json'} and {work / 'real_voices.png'}")


def report(
    args: argparse.Namespace,
    real: Path,
    pos: Positives,
    sources: dict[str, float],
    results: list[dict[str, Any]],
    ingest: dict[str, Any],
    train_s: float | None,
    build_s: float,
    score_s: float,
) -> None:
    hours = sum(sources.values()) / 3600
    labels = ", ".join(f"{k} {v}" for k, v in ingest["clips_per_label"].items())
    print(
        f"\nphrase {args.phrase!r}; training set (the copy's own sources only): clips {labels}; "
        f"{ingest['stream_hours']:.2f} h of background recordings"
    )
    if args.recipe or args.set:
        print(f"recipe: {args.recipe or 'params.yaml defaults'}; overrides: {' '.join(args.set)}")
    if train_s is not None:
        rounds = f", {args.mine_rounds} mining round(s)" if args.mine_rounds else ""
        print(f"training through the pipeline (dvc repro export{rounds}): {train_s:.0f} s")
    print(
        f"positives: {len(pos.spans)} real recordings from {real} at {args.snr_db:g} dB SNR in "
        f"real drone/environmental noise ({pos.undecodable} undecodable skipped)"
    )
    print(f"negatives: {hours:.2f} h:")
    for k, v in sources.items():
        print(f"  {k}: {v / 3600:.2f} h")
    print(f"(built in {build_s:.0f} s, scored in {score_s:.0f} s)\n")
    print_table(results)
    mine = results[0]
    op, target = mine["operating_point"], mine["preset"]["target_fah"]
    inside = op["fah_lo"] <= target <= op["fah_hi"]
    print(
        f"\npreset {mine['preset']['name']!r} (target {target:g} FAH): measured "
        f"{op['fah']:.2f} ({op['fah_lo']:.2f}-{op['fah_hi']:.2f}) over {mine['hours']:.2f} h: "
        f"target {'inside' if inside else 'OUTSIDE'} the 95% interval"
    )


def print_table(results: list[dict[str, Any]]) -> None:
    head = [
        "model",
        *[f"FRR@{f:g}" for f in FAH_TARGETS],
        "thr",
        "recall (95%)",
        "FAH (95%)",
        "TFLite",
        "arena",
    ]
    rows = []
    for r in results:
        op = r["operating_point"]
        rows.append(
            [
                r["model"],
                *[f"{r['frr_at_fah'][str(f)]['frr']:.3f}" for f in FAH_TARGETS],
                f"{op['threshold']:.3f}",
                f"{op['recall']:.3f} ({op['recall_lo']:.3f}-{op['recall_hi']:.3f})",
                f"{op['fah']:.2f} ({op['fah_lo']:.2f}-{op['fah_hi']:.2f})",
                f"{r['tflite_bytes']:,}" if r["arena_bytes"] else "(server)",
                f"{r['arena_bytes']:,}" if r["arena_bytes"] else "-",
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    for line in [head, *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)))


if __name__ == "__main__":
    main()
