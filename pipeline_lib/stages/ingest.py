"""ingest stage: every source to normalised mono FLAC at the target rate, plus a manifest.

Rejected files (undecodable, empty, NaN, all-silent, missing, path escaping its root) go to
a quarantine list with the reason and never stop the run. Identical audio appears once;
identical audio under two labels is kept once and flagged ``label_conflict``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from pipeline_lib.audio import io as audio_io
from pipeline_lib.audio.sources import SourceItem, list_source
from pipeline_lib.base.atomic import atomic_path, json_text, write_csv
from pipeline_lib.base.errors import AudioError, SoundopsError
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.parallel import pmap
from pipeline_lib.base.params import Params

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "id",
    "path",
    "label",
    "role",
    "source",
    "group",
    "fixed_split",
    "source_path",
    "native_label",
    "duration_s",
    "peak_dbfs",
    "rms_dbfs",
    "clipped_fraction",
    "orig_rate",
    "orig_channels",
    "label_conflict",
    "conflict_labels",
    "duplicates",
]
QUARANTINE_COLUMNS = ["source", "source_path", "reason"]


# Rates no audio file has: a header claiming 1 Hz asks for gigabytes after resampling.
MIN_RATE_HZ, MAX_RATE_HZ = 1000, 768_000
# Bigger files (samples x channels as decoded, or samples at the project rate) are decoded,
# measured and written in blocks, so one worker's memory stays bounded (a 2-hour file read
# whole took 2.5 GB; a small FLAC can hold minutes of 8-channel silence).
WHOLE_FILE_SAMPLES = 16_000_000


@dataclass(frozen=True)
class Job:
    item: SourceItem
    out_dir: Path
    rate: int
    normalize_peak_dbfs: float | None
    silence_peak_dbfs: float
    allow_silent: bool
    clip_level: float
    max_file_s: float


def _refusal(job: Job) -> str | None:
    """Why the header alone rules a file out (before a sample is decoded), or None."""
    try:
        info = sf.info(str(job.item.path))
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as exc:
        return f"undecodable audio ({audio_io.short_error(exc)})"
    if not MIN_RATE_HZ <= info.samplerate <= MAX_RATE_HZ:
        return f"sample rate {info.samplerate} Hz is not an audio rate"
    seconds = info.frames / info.samplerate
    if seconds > job.max_file_s:
        return f"{seconds:.0f} s long, over ingest.max_file_s ({job.max_file_s:g} s)"
    return None


def ingest_one(job: Job) -> dict[str, object]:
    """Decode, measure, normalise and write one file; returns a manifest or quarantine row."""
    item = job.item
    base = {"source": item.source, "source_path": item.rel}
    refusal = _refusal(job)
    if refusal is not None:
        return {**base, "reason": refusal}
    info = sf.info(str(item.path))
    decoded = max(info.frames * info.channels, int(info.duration * job.rate))
    if decoded > WHOLE_FILE_SAMPLES:
        try:
            return _ingest_long(job, base)
        except AudioError as exc:
            return {**base, "reason": str(exc).split(": ", 1)[-1].rstrip(".")}
    try:
        dec = audio_io.read_audio(item.path)
    except AudioError as exc:
        return {**base, "reason": str(exc).split(": ", 1)[-1].rstrip(".")}
    samples = audio_io.resample(dec.samples, dec.rate, job.rate)
    lv = audio_io.levels(samples, job.clip_level)
    if lv.peak_dbfs < job.silence_peak_dbfs and not job.allow_silent:
        return {**base, "reason": f"all-silent (peak {lv.peak_dbfs:.1f} dBFS)"}
    pcm = audio_io.to_pcm16(audio_io.normalize_peak(samples, job.normalize_peak_dbfs))
    cid = audio_io.content_id(pcm, job.rate)
    rel = f"audio/{cid[:2]}/{cid}.flac"
    dest = job.out_dir / rel
    if not dest.exists():
        tmp = dest.with_name(f".{dest.stem}.{os.getpid()}.flac")
        audio_io.write_flac(tmp, pcm, job.rate)
        tmp.replace(dest)
    return _row(job, base, cid, rel, pcm.size, lv, dec.orig_rate, dec.orig_channels)


def _ingest_long(job: Job, base: dict[str, str]) -> dict[str, object]:
    """:func:`ingest_one` in blocks: one pass measures (levels, DC, peak), a second writes
    normalised PCM and hashes it as it goes, so memory is a block, not the file."""
    path = job.item.path
    n, total, sq, clipped = 0, 0.0, 0.0, 0
    lo, hi = np.inf, -np.inf
    for block in audio_io.audio_blocks(path, job.rate):
        b64 = block.astype(np.float64)
        n += block.size
        total += float(b64.sum())
        sq += float(np.square(b64).sum())
        clipped += int(np.count_nonzero(np.abs(block) >= job.clip_level))
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    if n == 0:
        raise AudioError(f"{path}: empty audio (no samples).")
    peak = max(abs(lo), abs(hi))
    lv = audio_io.Levels(audio_io.dbfs(peak), audio_io.dbfs(float(np.sqrt(sq / n))), clipped / n)
    if lv.peak_dbfs < job.silence_peak_dbfs and not job.allow_silent:
        return {**base, "reason": f"all-silent (peak {lv.peak_dbfs:.1f} dBFS)"}
    mean = total / n
    gain = 1.0
    centred_peak = max(hi - mean, mean - lo)
    if job.normalize_peak_dbfs is not None and centred_peak > audio_io.EPS:
        gain = (10.0 ** (job.normalize_peak_dbfs / 20.0)) / centred_peak
    digest = hashlib.sha256(str(job.rate).encode())
    job.out_dir.joinpath("audio").mkdir(parents=True, exist_ok=True)
    tmp = job.out_dir / "audio" / f".long.{os.getpid()}.flac"
    with sf.SoundFile(
        str(tmp), "w", samplerate=job.rate, channels=1, format="FLAC", subtype="PCM_16"
    ) as out:
        for block in audio_io.audio_blocks(path, job.rate):
            pcm = audio_io.to_pcm16(((block - mean) * gain).astype(np.float32))
            digest.update(np.ascontiguousarray(pcm).tobytes())
            out.write(pcm)
    cid = digest.hexdigest()[:20]
    rel = f"audio/{cid[:2]}/{cid}.flac"
    dest = job.out_dir / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        tmp.unlink()
    else:
        tmp.replace(dest)
    info = sf.info(str(path))
    return _row(job, base, cid, rel, n, lv, info.samplerate, info.channels)


def _row(
    job: Job,
    base: dict[str, str],
    cid: str,
    rel: str,
    n: int,
    lv: audio_io.Levels,
    orig_rate: int,
    orig_channels: int,
) -> dict[str, object]:
    item = job.item
    return {
        "id": cid,
        "path": rel,
        "label": item.label,
        "role": item.role,
        "source": item.source,
        "group": item.group,
        "fixed_split": item.fixed_split,
        "source_path": item.rel,
        "native_label": item.native_label,
        "duration_s": round(n / job.rate, 4),
        "peak_dbfs": round(lv.peak_dbfs, 2),
        "rms_dbfs": round(lv.rms_dbfs, 2),
        "clipped_fraction": round(lv.clipped_fraction, 6),
        "orig_rate": orig_rate,
        "orig_channels": orig_channels,
    }


def deduplicate(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per content id; ids seen under several labels are flagged, not dropped."""
    if rows.empty:
        return rows.assign(
            label_conflict=pd.Series(dtype=bool),
            conflict_labels=pd.Series(dtype=str),
            duplicates=pd.Series(dtype=int),
        )
    grouped = rows.groupby("id", sort=False)
    labels = grouped["label"].agg(lambda s: "|".join(sorted(set(s))))
    counts = grouped["id"].size()
    first = rows.drop_duplicates("id", keep="first").set_index("id")
    first["conflict_labels"] = labels
    first["label_conflict"] = labels.str.contains("|", regex=False)
    first.loc[~first["label_conflict"], "conflict_labels"] = ""
    first["duplicates"] = counts - 1
    return first.reset_index()


def run_ingest(params: Params, layout: Layout) -> dict[str, object]:
    """The ingest stage: write ``data/ingest`` atomically and return its summary."""
    items: list[SourceItem] = []
    quarantine: list[dict[str, object]] = []
    for source in params.ingest.sources:
        listing = list_source(source, layout.root, params.labels, params.ingest.extensions)
        items.extend(listing.items)
        quarantine.extend(asdict(r) | {"source_path": r.rel} for r in listing.rejects)
        for native, n in sorted(listing.unmapped.items()):
            log.warning(
                "source '%s': %d file(s) labelled '%s' have no project label; skipped",
                source.name,
                n,
                native,
            )
        log.info(
            "source '%s': %d file(s) listed, %d rejected before decoding",
            source.name,
            len(listing.items),
            len(listing.rejects),
        )
    n_rejected = len(quarantine)
    if not items and not quarantine:
        raise SoundopsError("ingest.sources: the sources list no audio files at all.")

    # the metrics file is renamed into place right after the folder, not after more work: a
    # kill never leaves a new data/ingest beside the old metrics
    with atomic_path(layout.metrics / "ingest.json") as metrics, atomic_path(layout.ingest) as out:
        out.mkdir(parents=True)
        jobs = [
            Job(
                item,
                out,
                params.audio.sample_rate,
                params.ingest.normalize_peak_dbfs,
                params.ingest.silence_peak_dbfs,
                item.label in params.ingest.allow_silent_labels,
                params.ingest.clip_level,
                params.ingest.max_file_s,
            )
            for item in items
        ]
        results = pmap(
            ingest_one, jobs, workers=params.runtime.resolved_workers(), desc="ingest", chunksize=16
        )
        good = [r for r in results if "reason" not in r]
        quarantine.extend(r for r in results if "reason" in r)
        manifest = deduplicate(pd.DataFrame(good, columns=MANIFEST_COLUMNS[:-3]))
        manifest = manifest[MANIFEST_COLUMNS].sort_values(["role", "label", "id"], kind="stable")
        qframe = pd.DataFrame(
            [{k: q[k] for k in QUARANTINE_COLUMNS} for q in quarantine], columns=QUARANTINE_COLUMNS
        ).sort_values(["source", "source_path"], kind="stable")
        write_csv(out / "manifest.csv", manifest)
        write_csv(out / "quarantine.csv", qframe)
        summary = summarise(manifest, qframe, files_listed=len(items) + n_rejected)
        metrics.write_text(json_text(summary), encoding="utf-8")
    log.info(
        "ingest: %d clip(s), %d stream(s), %d quarantined, %d duplicate(s), %d label conflict(s)",
        summary["clips"],
        summary["streams"],
        summary["quarantined"],
        summary["duplicates"],
        summary["label_conflicts"],
    )
    return summary


def summarise(
    manifest: pd.DataFrame, quarantine: pd.DataFrame, files_listed: int
) -> dict[str, object]:
    """Counts for ``summary.json`` (a DVC metrics file) and the log."""
    clips = manifest[manifest["role"] == "clip"]
    streams = manifest[manifest["role"] == "stream"]
    return {
        "files_listed": files_listed,
        "clips": len(clips),
        "streams": len(streams),
        "stream_hours": round(float(streams["duration_s"].sum()) / 3600.0, 4),
        "quarantined": len(quarantine),
        "duplicates": int(manifest["duplicates"].sum()) if len(manifest) else 0,
        "label_conflicts": int(manifest["label_conflict"].sum()) if len(manifest) else 0,
        "clips_per_label": {
            str(k): int(v) for k, v in clips["label"].value_counts().sort_index().items()
        },
        "quarantine_reasons": {
            str(k): int(v)
            for k, v in quarantine["reason"]
            .str.replace(r" \(.*", "", regex=True)
            .value_counts()
            .items()
        }
        if len(quarantine)
        else {},
    }
