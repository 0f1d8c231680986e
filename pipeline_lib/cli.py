"""``soundops``: the one command line. User errors print one sentence and exit non-zero."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipeline_lib.errors import SoundopsError
from pipeline_lib.stages import STAGES, run_stage

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train, measure and ship on-device sound detectors.",
)
params_app = typer.Typer(no_args_is_help=True, help="Inspect and check params.yaml.")
app.add_typer(params_app, name="params")
mine_app = typer.Typer(no_args_is_help=True, help="Review and accept mined hard negatives.")
app.add_typer(mine_app, name="mine")

ROOT_OPT = Annotated[Path, typer.Option("--root", help="Project folder (holds params.yaml).")]
err = Console(stderr=True)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("great_expectations", "urllib3", "matplotlib", "numexpr"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    _setup_logging(verbose)


def _fail(exc: SoundopsError) -> None:
    err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(STAGES)}.")],
    root: ROOT_OPT = Path(),
) -> None:
    """Run one pipeline stage (what dvc.yaml calls)."""
    if name not in STAGES:
        _fail(SoundopsError(f"stage '{name}' does not exist; expected one of {', '.join(STAGES)}."))
    try:
        run_stage(name, root.resolve())
    except SoundopsError as exc:
        _fail(exc)


@params_app.command("check")
def params_check(root: ROOT_OPT = Path()) -> None:
    """Validate params.yaml against the pydantic model and print a summary."""
    from pipeline_lib.params import load_params

    try:
        params = load_params(root.resolve() / "params.yaml")
    except SoundopsError as exc:
        _fail(exc)
        return
    table = Table(title="params.yaml is valid", show_header=True)
    table.add_column("key")
    table.add_column("value")
    table.add_row("labels", ", ".join(params.labels))
    table.add_row("audio.sample_rate", str(params.audio.sample_rate))
    table.add_row(
        "ingest.sources", ", ".join(f"{s.name} ({s.kind})" for s in params.ingest.sources)
    )
    table.add_row("split.ratios", str(params.split.ratios))
    Console().print(table)


@app.command()
def score(
    audio: Annotated[list[Path], typer.Argument(help="Audio files of any length.")],
    model: Annotated[
        Path,
        typer.Option(
            help="A model folder, an exported .onnx file, or data/export/model_int8.tflite."
        ),
    ] = Path("data/model"),
    calibration: Annotated[
        Path | None,
        typer.Option(
            help="calibration.json; default: the one inside the .onnx file, else "
            "data/calibration/calibration.json."
        ),
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="Operating point (default: calibrated).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for the results.")] = Path("scores"),
    fmt: Annotated[str, typer.Option("--format", help="csv or json.")] = "csv",
    workers: Annotated[int, typer.Option(help="Processes over files; 0 = one per core.")] = 0,
) -> None:
    """Per-window scores and detected events of audio files, with the streaming detector."""
    from pipeline_lib.scoring import score_files

    if fmt not in ("csv", "json"):
        _fail(SoundopsError(f"--format: expected csv or json, got '{fmt}'."))
    try:
        n = workers or (os.cpu_count() or 1)
        summary = score_files(audio, model, calibration, preset, out, fmt, n)
    except SoundopsError as exc:
        _fail(exc)
        return
    table = Table(
        title=f"{summary['model']} ({summary['preset']}, threshold {summary['threshold']:.4f})"
    )
    for col in ("file", "seconds", "windows", "events"):
        table.add_column(col)
    for row in summary["files"]:
        table.add_row(row["file"], f"{row['seconds']:.1f}", str(row["windows"]), str(row["events"]))
    Console().print(table)
    Console().print(f"results in {out}")


@app.command("export-onnx")
def export_onnx_cmd(
    out: Annotated[Path, typer.Argument(help="The .onnx file to write.")],
    model: Annotated[Path, typer.Option(help="A model folder.")] = Path("data/model"),
    calibration: Annotated[Path, typer.Option(help="Calibration embedded in the file.")] = Path(
        "data/calibration/calibration.json"
    ),
) -> None:
    """Export a model folder to FP32 ONNX (spec and calibration in its metadata)."""
    import json

    from pipeline_lib.modelio import load_model
    from pipeline_lib.scorers import export_onnx

    try:
        net, spec = load_model(model)
        cal = json.loads(calibration.read_text(encoding="utf-8")) if calibration.is_file() else None
        export_onnx(net, spec, out, cal)
    except SoundopsError as exc:
        _fail(exc)
    Console().print(f"wrote {out}")


@mine_app.command("accept")
def mine_accept(
    root: ROOT_OPT = Path(),
    min_score: Annotated[
        float, typer.Option(help="Accept candidates scoring at least this.")
    ] = 0.0,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Candidate id to leave out (repeatable).")
    ] = None,
    no_dvc: Annotated[bool, typer.Option("--no-dvc", help="Do not `dvc add` the folder.")] = False,
) -> None:
    """Copy mined candidates into the hard-negative source and track it with DVC."""
    from pipeline_lib.layout import Layout
    from pipeline_lib.mine import accept
    from pipeline_lib.params import load_params

    layout = Layout(root.resolve())
    try:
        params = load_params(layout.params)
        done = accept(params, layout, min_score, frozenset(exclude or []), track=not no_dvc)
    except SoundopsError as exc:
        _fail(exc)
        return
    Console().print(
        f"accepted {done['accepted']} candidate(s); the hard-negative folder holds "
        f"{done['clips']} clip(s). Next: git add the .dvc file, then `dvc repro`."
    )


def run() -> None:  # pragma: no cover - console entry for `python -m pipeline_lib.cli`
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    run()
