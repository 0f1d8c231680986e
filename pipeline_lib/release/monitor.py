"""Field monitoring: the released model's false alarms on newly arrived audio.

The recordings in ``release.monitor.folder`` are taken as target-free (what a deployed
device hears between wake words), so every detection in them is a false alarm. The check
scores them with the version's own INT8 ONNX model and calibration, through the same
streaming detector the device logic mirrors, and compares the FAH with the FAH recorded
for that version and with the FAH target. The decision is :func:`regression`, a pure
function the tests call directly.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline_lib.audio.sources.base import audio_files
from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.paths import project_path
from pipeline_lib.detect.file_scores import resolve_calibration
from pipeline_lib.detect.metrics import fah
from pipeline_lib.detect.runtimes import load_scorer
from pipeline_lib.detect.streaming import score_file

log = logging.getLogger(__name__)

EXTENSIONS = [".wav", ".flac", ".ogg", ".mp3"]


@dataclass(frozen=True)
class Verdict:
    regression: bool
    over_target: bool
    reason: str


def regression(
    field: dict[str, float], recorded_fah: float, max_fah: float, tolerance: float
) -> Verdict:
    """A regression is field FAH above the recorded FAH by more than ``tolerance`` even
    at the low end of its 95% interval (a handful of alarms in a short recording is not
    proof); over target is the same test against ``release.gates.max_fah``."""
    lo = field["fah_lo"]
    limit = recorded_fah + tolerance
    reg = lo > limit
    over = lo > max_fah
    if reg or over:
        reason = f"field FAH {field['fah']:.2f} (95% lower bound {lo:.2f}) over " + " and ".join(
            s
            for s, hit in (
                (f"recorded {recorded_fah:.2f} + tolerance {tolerance:.2f}", reg),
                (f"release.gates.max_fah {max_fah:.2f}", over),
            )
            if hit
        )
    else:
        reason = (
            f"field FAH {field['fah']:.2f} (95% {lo:.2f}-{field['fah_hi']:.2f}) within "
            f"recorded {recorded_fah:.2f} + tolerance {tolerance:.2f} and release.gates.max_fah "
            f"{max_fah:.2f}"
        )
    return Verdict(reg, over, reason)


@dataclass(frozen=True)
class FieldCheck:
    files: int
    figures: dict[str, float]
    by_file: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def field_folder(root: Path, folder: str) -> Path:
    return project_path(root, Path(folder))


def score_field(model_dir: Path, folder: Path) -> FieldCheck:
    """Every detection in the folder's recordings, counted as false alarms per hour."""
    if not folder.is_dir():
        raise SoundopsError(
            f"release.monitor.folder: {folder} does not exist; put newly arrived recordings there."
        )
    files = audio_files(folder, EXTENSIONS)
    if not files:
        raise SoundopsError(f"release.monitor.folder: {folder} holds no audio files.")
    scorer = load_scorer(model_dir / "model_int8.onnx")
    cal = resolve_calibration(scorer.calibration, None, None)
    rows, events, seconds = [], 0, 0.0
    for path in tqdm(files, desc="monitor", unit="file"):
        result = score_file(path, scorer, cal)
        n = len(result.scored.events)
        events += n
        seconds += result.duration_s
        rows.append({"file": path.name, "seconds": round(result.duration_s, 2), "events": n})
    return FieldCheck(len(files), fah(events, seconds / 3600.0), rows)
