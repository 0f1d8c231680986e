"""Ingest throughput on real recordings: files/s over ``../shared/data`` (or a given folder).

Builds a throw-away project whose params map the real corpora (wake phrases, drone noise,
environmental sounds, the undecodable files, a long stream) onto a label set, runs the
ingest stage, and prints files/s, wall time and the quarantine with reasons. Usage:

    python benchmarks/ingest_real.py [DATA_DIR] [--workers N]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import parse_params
from pipeline_lib.stages.ingest import run_ingest

REPO = Path(__file__).resolve().parents[1]
WAKE_PHRASES = ("alexa", "jarvis", "smart_mirror", "snowboy")


def bench_params(data: Path, workers: int, stream_csv: Path) -> dict[str, Any]:
    """The shipped params.yaml with sources and labels for the real corpora."""
    raw: dict[str, Any] = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["labels"] = ["wake", "drone", "unknown", "background"]
    raw["runtime"]["workers"] = workers
    raw["ingest"]["sources"] = [
        {
            "name": "wakewords",
            "kind": "picovoice",
            "root": str(data / "wakewords-real"),
            "label_map": dict.fromkeys(WAKE_PHRASES, "wake"),
        },
        {
            "name": "drone",
            "kind": "drone",
            "root": str(data / "drone"),
            "label_map": {"drone_bebop": "drone", "drone_membo": "drone", "unknown": "unknown"},
        },
        {
            "name": "bad",
            "kind": "folder",
            "root": str(data / "bad-inputs"),
            "default_label": "wake",
        },
        {"name": "streams", "kind": "manifest", "root": str(data), "path": str(stream_csv)},
    ]
    # drone/unknown holds digital-silence chunks on purpose: silence is an "unknown" sound.
    raw["ingest"]["allow_silent_labels"] = ["unknown", "background"]
    return raw


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("data", nargs="?", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--workers", type=int, default=0, help="0 = one per core")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data: Path = args.data.resolve()
    if not data.is_dir():
        raise SystemExit(f"{data}: folder not found; pass the real-audio folder.")
    tmp = Path(tempfile.mkdtemp(prefix="soundops-bench-"))
    try:
        stream_csv = tmp / "streams.csv"
        pd.DataFrame(
            [
                {"path": p.relative_to(data).as_posix(), "label": "background", "role": "stream"}
                for p in sorted((data / "streams").glob("*.flac"))
            ],
            columns=["path", "label", "role"],
        ).to_csv(stream_csv, index=False)
        params = parse_params(bench_params(data, args.workers, stream_csv))
        layout = Layout(tmp / "project")
        start = time.perf_counter()
        summary = run_ingest(params, layout)
        wall = time.perf_counter() - start
        quarantine = pd.read_csv(layout.quarantine)
        files = int(str(summary["files_listed"]))
        print(
            f"ingest: {files} files in {wall:.1f} s = {files / wall:.1f} files/s "
            f"({params.runtime.resolved_workers()} workers)"
        )
        print(
            f"clips {summary['clips']}, streams {summary['streams']}, "
            f"duplicates {summary['duplicates']}, label conflicts {summary['label_conflicts']}"
        )
        undecodable = sorted(
            p.relative_to(data / "bad-inputs").as_posix()
            for p in (data / "bad-inputs").rglob("*.flac")
        )
        reasons = quarantine["reason"].str.split(" ").str[0]
        flagged = sorted(quarantine.loc[reasons == "undecodable", "source_path"])
        counts = {str(k): int(v) for k, v in reasons.value_counts().items()}
        print(
            f"quarantined {len(quarantine)}: {counts}; bad-inputs holds "
            f"{len(undecodable)} files; each quarantined as undecodable, and no other file "
            f"undecodable: {flagged == undecodable}"
        )
        for row in quarantine.itertuples():
            print(f"  {row.source}/{row.source_path}: {row.reason}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
