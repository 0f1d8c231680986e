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


def run() -> None:  # pragma: no cover - console entry for `python -m pipeline_lib.cli`
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    run()
