"""The ingest manifest, its quarantine list, the split assignment and the validate gate:
what every stage after ingest reads, so none of them imports another stage."""

from __future__ import annotations

import json

import pandas as pd

from pipeline_lib.base.atomic import sha256
from pipeline_lib.base.errors import GateError, SoundopsError
from pipeline_lib.base.layout import Layout


def load_manifest(layout: Layout) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the ingest manifest and quarantine list, with a clear error if ingest never ran."""
    for path in (layout.manifest, layout.quarantine):
        if not path.is_file():
            raise SoundopsError(f"{path}: not found; run the ingest stage first.")
    manifest = pd.read_csv(
        layout.manifest, dtype={"fixed_split": str, "conflict_labels": str}, keep_default_na=False
    )
    return manifest, pd.read_csv(layout.quarantine, dtype=str, keep_default_na=False)


def load_split_manifest(layout: Layout) -> pd.DataFrame:
    """The ingest manifest joined with its split assignment."""
    for path in (layout.manifest, layout.assignment):
        if not path.is_file():
            raise SoundopsError(f"{path}: not found; run the earlier stages first (dvc repro).")
    manifest = pd.read_csv(layout.manifest, keep_default_na=False)
    assignment = pd.read_csv(layout.assignment, keep_default_na=False)[["id", "split"]]
    return manifest.merge(assignment, on="id", how="inner", validate="one_to_one")


def require_gate(layout: Layout) -> None:
    """Refuse to go on unless the gate passed for the manifest and quarantine list on disk
    now: a stage run by hand after a new ingest must not trust an older verdict."""
    gate = layout.gate.relative_to(layout.root)
    if not layout.gate.is_file():
        raise GateError(f"{gate}: not found; the validate gate has not passed for this manifest.")
    try:
        doc = json.loads(layout.gate.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise GateError(f"{gate}: unreadable; run `soundops stage validate` again.") from None
    now = {"manifest_sha256": sha256(layout.manifest)}
    if layout.quarantine.is_file():
        now["quarantine_sha256"] = sha256(layout.quarantine)
    if (
        not isinstance(doc, dict)
        or doc.get("passed") is not True
        or any(doc.get(k) != v for k, v in now.items())
    ):
        raise GateError(
            f"{gate}: the gate passed for another ingest; run `soundops stage validate` "
            "(or `dvc repro`) on the current manifest first."
        )
