"""split stage: train/val/test by group, stable when data is added.

A group's split is a pure function of its name (a salted hash mapped onto the ratios), so
new recordings never move old clips and one speaker or recording never spans two splits.
Splits pinned by a source (Speech Commands lists, ESC-50 folds, a manifest's ``split``
column) win, for the whole group. Hashing stratifies each label in expectation; the count
table shows the realised shares and a label missing from a split is logged.
"""

from __future__ import annotations

import hashlib
import logging

import pandas as pd

from pipeline_lib.artifacts.manifests import load_manifest, require_gate
from pipeline_lib.base.atomic import write_csv, write_json
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import Params, SplitName, SplitParams

log = logging.getLogger(__name__)

ORDER: tuple[SplitName, ...] = ("train", "val", "test")


def hash_unit(salt: str, group: str) -> float:
    """A uniform number in [0, 1) determined by (salt, group) alone."""
    digest = hashlib.sha256(f"{salt}\x00{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(group: str, split: SplitParams) -> str:
    u = hash_unit(split.salt, group)
    edge = 0.0
    for name in ORDER:
        edge += split.ratios[name]
        if u < edge:
            return name
    return ORDER[-1]


def assign(manifest: pd.DataFrame, split: SplitParams) -> pd.Series:
    """The split of every manifest row, decided per group."""
    fixed = manifest[manifest["fixed_split"].isin(ORDER)]
    pinned: dict[str, str] = {}
    for group, splits in fixed.groupby("group")["fixed_split"]:
        counts = splits.value_counts()
        if len(counts) > 1:
            log.warning(
                "group '%s' is pinned to several splits %s; using '%s'",
                group,
                dict(counts),
                counts.index[0],
            )
        pinned[str(group)] = str(counts.index[0])
    groups = manifest["group"].astype(str)
    decided = {g: pinned.get(g) or split_of(g, split) for g in groups.unique()}
    return groups.map(decided).rename("split")


def count_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Clips, groups and hours per split and label."""
    return (
        frame.groupby(["split", "role", "label"])
        .agg(clips=("id", "size"), groups=("group", "nunique"), hours=("duration_s", "sum"))
        .assign(hours=lambda t: (t["hours"] / 3600).round(4))
        .reset_index()
        .sort_values(
            ["role", "label", "split"],
            key=lambda s: (
                s.map({n: i for i, n in enumerate(ORDER)}).fillna(s) if s.name == "split" else s
            ),
        )
    )


def run_split(params: Params, layout: Layout) -> pd.DataFrame:
    """The split stage: write assignment.csv, counts.csv and the counts metrics."""
    require_gate(layout)
    manifest, _ = load_manifest(layout)
    manifest = manifest.assign(split=assign(manifest, params.split))
    assignment = manifest[["id", "split", "label", "role", "group"]].sort_values("id")
    counts = count_table(manifest)
    write_csv(layout.assignment, assignment)
    write_csv(layout.split / "counts.csv", counts)
    metrics: dict[str, dict[str, int]] = {}
    for row in counts[counts["role"] == "clip"].to_dict("records"):
        metrics.setdefault(str(row["split"]), {})[str(row["label"])] = int(row["clips"])
    write_json(layout.metrics / "split.json", metrics)
    clip_labels = sorted(set(manifest.loc[manifest["role"] == "clip", "label"]))
    for name in ORDER:
        missing = [lab for lab in clip_labels if lab not in metrics.get(name, {})]
        if missing:
            log.warning(
                "split: '%s' has no clips labelled %s; add groups or adjust split.ratios",
                name,
                missing,
            )
    log.info("split: %s", {s: sum(v.values()) for s, v in sorted(metrics.items())})
    return assignment
