"""The stage registry: ``soundops stage NAME`` and ``dvc.yaml`` both go through here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline_lib.layout import Layout
from pipeline_lib.params import Params, load_params


def _demo(params: Params, layout: Layout) -> Any:
    from pipeline_lib.demo.generate import generate_demo

    return generate_demo(params, layout)


def _ingest(params: Params, layout: Layout) -> Any:
    from pipeline_lib.ingest import run_ingest

    return run_ingest(params, layout)


def _validate(params: Params, layout: Layout) -> Any:
    from pipeline_lib.validate import run_validate

    return run_validate(params, layout)


def _split(params: Params, layout: Layout) -> Any:
    from pipeline_lib.split import run_split

    return run_split(params, layout)


def _extract(params: Params, layout: Layout) -> Any:
    from pipeline_lib.extract import run_extract

    return run_extract(params, layout)


def _train(params: Params, layout: Layout) -> Any:
    from pipeline_lib.train import run_train

    return run_train(params, layout)


def _calibrate(params: Params, layout: Layout) -> Any:
    from pipeline_lib.calibrate import run_calibrate

    return run_calibrate(params, layout)


def _evaluate(params: Params, layout: Layout) -> Any:
    from pipeline_lib.evaluate import run_evaluate

    return run_evaluate(params, layout)


def _mine(params: Params, layout: Layout) -> Any:
    from pipeline_lib.mine import run_mine

    return run_mine(params, layout)


STAGES: dict[str, Callable[[Params, Layout], Any]] = {
    "demo": _demo,
    "ingest": _ingest,
    "validate": _validate,
    "split": _split,
    "extract": _extract,
    "train": _train,
    "calibrate": _calibrate,
    "evaluate": _evaluate,
    "mine": _mine,
}


def run_stage(name: str, root: Path) -> Any:
    """Load and validate params, then run one stage in the project at ``root``."""
    layout = Layout(root)
    params = load_params(layout.params)
    return STAGES[name](params, layout)
