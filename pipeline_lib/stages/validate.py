"""validate stage: the Great Expectations gate between ingest and everything that trains.

The suites are built here, in code, so this module is a DVC dependency of the stage and a
changed contract reruns validation. Each check is blocking or a warning (``params.yaml``,
``validate.severity``); a failed blocking check fails the stage, naming every failed check,
after the JSON result and the HTML report are written for a person to read.
"""

from __future__ import annotations

import html
import logging
import os
from dataclasses import dataclass
from typing import Any

import pandas as pd

from pipeline_lib.artifacts.manifests import load_manifest
from pipeline_lib.base.atomic import sha256, write_json, write_text
from pipeline_lib.base.errors import GateError
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import CheckName, Params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckResult:
    check: str
    severity: str
    success: bool
    table: str
    description: str
    observed: str


def label_table(manifest: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Clips and groups per label. Labels used only by streams are left out; labels that
    appear nowhere are kept with zero counts so a missing class fails the gate."""
    clips = manifest[manifest["role"] == "clip"]
    stream_only = set(manifest.loc[manifest["role"] == "stream", "label"]) - set(clips["label"])
    wanted = [lab for lab in params.labels if lab not in stream_only]
    min_ratio = min(params.split.ratios.values())
    rows = []
    for lab in wanted:
        sel = clips[clips["label"] == lab]
        rows.append(
            {
                "label": lab,
                "clips": len(sel),
                "groups": int(sel["group"].nunique()),
                "smallest_split_clips": int(len(sel) * min_ratio),
            }
        )
    return pd.DataFrame(rows, columns=["label", "clips", "groups", "smallest_split_clips"])


def _suites(params: Params) -> dict[str, list[tuple[CheckName, Any, str]]]:
    import great_expectations as gx

    v = params.validate_
    E = gx.expectations  # noqa: N806 - GX's own namespace
    return {
        "manifest": [
            (
                "label_in_set",
                E.ExpectColumnValuesToBeInSet(column="label", value_set=params.labels),
                f"every label is one of {params.labels}",
            ),
            (
                "source_rate",
                E.ExpectColumnValuesToBeBetween(
                    column="orig_rate",
                    min_value=v.source_rate_hz.min,
                    max_value=v.source_rate_hz.max,
                ),
                f"source sample rates within {v.source_rate_hz.min:g}-{v.source_rate_hz.max:g} Hz",
            ),
            (
                "no_label_conflicts",
                E.ExpectColumnValuesToBeInSet(column="label_conflict", value_set=[False]),
                "no identical audio under two labels",
            ),
        ],
        "clips": [
            (
                "clip_duration",
                E.ExpectColumnValuesToBeBetween(
                    column="duration_s",
                    min_value=v.clip_duration_s.min,
                    max_value=v.clip_duration_s.max,
                ),
                f"clip durations within {v.clip_duration_s.min:g}-{v.clip_duration_s.max:g} s",
            ),
            (
                "clipping",
                E.ExpectColumnValuesToBeBetween(
                    column="clipped_fraction",
                    max_value=v.max_clipped_fraction,
                    mostly=1.0 - v.max_clipped_share,
                ),
                f"at most {v.max_clipped_share:.0%} of clips have over {v.max_clipped_fraction:g} "
                "of samples at full scale",
            ),
            (
                "silence",
                E.ExpectColumnValuesToBeBetween(
                    column="rms_dbfs", min_value=v.min_rms_dbfs, mostly=1.0 - v.max_quiet_share
                ),
                f"at most {v.max_quiet_share:.0%} of clips are quieter than "
                f"{v.min_rms_dbfs:g} dBFS RMS",
            ),
        ],
        "streams": [
            (
                "stream_duration",
                E.ExpectColumnValuesToBeBetween(
                    column="duration_s", min_value=v.stream_min_duration_s
                ),
                f"background streams last at least {v.stream_min_duration_s:g} s",
            ),
        ],
        "labels": [
            (
                "min_clips_per_label",
                E.ExpectColumnValuesToBeBetween(column="clips", min_value=v.min_clips_per_label),
                f"each label has at least {v.min_clips_per_label} clips",
            ),
            (
                "min_clips_per_split",
                E.ExpectColumnValuesToBeBetween(
                    column="smallest_split_clips", min_value=v.min_clips_per_split
                ),
                f"each label can give its smallest split at least {v.min_clips_per_split} clips",
            ),
            (
                "min_groups_per_label",
                E.ExpectColumnValuesToBeBetween(column="groups", min_value=v.min_groups_per_label),
                f"each label has at least {v.min_groups_per_label} groups (speakers, recordings)",
            ),
        ],
        "quarantine": [
            (
                "quarantine_share",
                E.ExpectColumnValuesToBeBetween(column="share", max_value=v.max_quarantine_share),
                f"at most {v.max_quarantine_share:.0%} of listed files quarantined",
            ),
        ],
    }


def _observed(result: dict[str, Any], table: pd.DataFrame, column: str | None) -> str:
    bad = result.get("unexpected_count")
    if bad is None:
        return str(result.get("observed_value", ""))
    if not bad:
        return f"all {result.get('element_count', len(table))} rows pass"
    sample = result.get("partial_unexpected_list", [])[:5]
    if column == "label" or table is None or "label" not in table.columns:
        return f"{bad} of {result.get('element_count')} rows fail, e.g. {sample}"
    idx = result.get("partial_unexpected_index_list") or []
    labels = sorted({str(table.iloc[i]["label"]) for i in idx if i < len(table)})
    return f"{bad} of {result.get('element_count')} rows fail, e.g. {sample} (labels {labels})"


def run_checks(
    manifest: pd.DataFrame, quarantine: pd.DataFrame, params: Params
) -> list[CheckResult]:
    """Run every suite with an ephemeral GX context; return one result per check."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    manifest = manifest.reset_index(drop=True)
    total = len(manifest) + len(quarantine)
    tables = {
        "manifest": manifest,
        "clips": manifest[manifest["role"] == "clip"].reset_index(drop=True),
        "streams": manifest[manifest["role"] == "stream"].reset_index(drop=True),
        "labels": label_table(manifest, params),
        "quarantine": pd.DataFrame(
            {
                "quarantined": [len(quarantine)],
                "listed": [total],
                "share": [len(quarantine) / max(total, 1)],
            }
        ),
    }
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)  # ours is the log
    source = ctx.data_sources.add_pandas("soundops")
    out: list[CheckResult] = []
    for name, checks in _suites(params).items():
        asset = source.add_dataframe_asset(name)
        batch = asset.add_batch_definition_whole_dataframe(f"{name}-all")
        suite = ctx.suites.add(gx.ExpectationSuite(name=name))
        for check, expectation, _desc in checks:
            expectation.severity = (
                "critical" if params.validate_.severity_of(check) == "blocking" else "warning"
            )
            expectation.meta = {"check": check}
            suite.add_expectation(expectation)
        definition = ctx.validation_definitions.add(
            gx.ValidationDefinition(name=f"{name}-gate", data=batch, suite=suite)
        )
        result = definition.run(batch_parameters={"dataframe": tables[name]})
        by_check = {
            r.expectation_config.meta["check"]: r
            for r in result.results
            if r.expectation_config is not None
        }
        for check, expectation, desc in checks:
            r = by_check[check]
            out.append(
                CheckResult(
                    check=check,
                    severity=params.validate_.severity_of(check),
                    success=bool(r.success),
                    table=name,
                    description=desc,
                    observed=_observed(
                        dict(r.result), tables[name], getattr(expectation, "column", None)
                    ),
                )
            )
    return out


def render_report(results: list[CheckResult], labels: pd.DataFrame) -> str:
    """A self-contained HTML page: every check with its verdict, and the per-label table."""

    def verdict_cell(r: CheckResult) -> str:
        if r.success:
            return "<td style='color:#1a7f37'><b>pass</b></td>"
        if r.severity == "blocking":
            return "<td style='color:#cf222e'><b>FAIL</b></td>"
        return "<td style='color:#9a6700'><b>warn</b></td>"

    rows = "".join(
        f"<tr><td>{html.escape(r.check)}</td><td>{r.severity}</td>{verdict_cell(r)}"
        f"<td>{html.escape(r.description)}</td><td>{html.escape(r.observed)}</td></tr>"
        for r in results
    )
    failed = [r.check for r in results if not r.success and r.severity == "blocking"]
    verdict = (
        "<p style='color:#cf222e'><b>Gate failed:</b> " + ", ".join(failed) + "</p>"
        if failed
        else "<p style='color:#1a7f37'><b>Gate passed.</b></p>"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>soundops data validation</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>"
        "<h1>Data validation</h1>"
        + verdict
        + "<h2>Checks</h2><table><tr><th>check</th><th>severity</th><th>result</th>"
        "<th>expectation</th><th>observed</th></tr>" + rows + "</table>"
        "<h2>Clips per label</h2>" + labels.to_html(index=False) + "</body></html>"
    )


def run_validate(params: Params, layout: Layout) -> list[CheckResult]:
    """The validate stage: write results.json and report.html; raise on a blocking failure."""
    manifest, quarantine = load_manifest(layout)
    results = run_checks(manifest, quarantine, params)
    labels = label_table(manifest, params)
    passed = all(r.success for r in results if r.severity == "blocking")
    layout.gate.unlink(missing_ok=True)
    write_json(
        layout.validate / "results.json",
        {
            "success": passed,
            "checks": [r.__dict__ for r in results],
            "labels": labels.to_dict("records"),
        },
    )
    write_text(layout.validate / "report.html", render_report(results, labels))
    write_json(
        layout.metrics / "validate.json",
        {
            "passed": passed,
            "failed_blocking": sum(not r.success and r.severity == "blocking" for r in results),
            "warnings": sum(not r.success and r.severity == "warning" for r in results),
        },
    )
    for r in results:
        if not r.success:
            log.warning(
                "validate: %s check '%s' failed: %s (%s)",
                r.severity,
                r.check,
                r.description,
                r.observed,
            )
    failed = [r for r in results if not r.success and r.severity == "blocking"]
    if failed:
        named = "; ".join(f"{r.check} ({r.description}: {r.observed})" for r in failed)
        report = (layout.validate / "report.html").relative_to(layout.root)
        raise GateError(f"validate: blocking check(s) failed: {named}. See {report}.")
    gate: dict[str, object] = {"manifest_sha256": sha256(layout.manifest), "passed": True}
    if layout.quarantine.is_file():
        gate["quarantine_sha256"] = sha256(layout.quarantine)
    write_json(layout.gate, gate)
    log.info(
        "validate: %d check(s) passed, %d warning(s)",
        sum(r.success for r in results),
        sum(not r.success for r in results),
    )
    return results
