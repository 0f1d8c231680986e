"""The stage registry: ``soundops stage NAME`` and ``dvc.yaml`` both go through here."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline_lib import threads
from pipeline_lib.layout import Layout
from pipeline_lib.params import Params, load_params

# Each stage's module is imported only when that stage runs, so `soundops stage split`
# never pays for importing torch.
_TARGETS: dict[str, tuple[str, str]] = {
    "generate": ("pipeline_lib.generate.corpus", "generate_corpus"),
    "ingest": ("pipeline_lib.ingest", "run_ingest"),
    "validate": ("pipeline_lib.validate", "run_validate"),
    "split": ("pipeline_lib.split", "run_split"),
    "extract": ("pipeline_lib.extract", "run_extract"),
    "train": ("pipeline_lib.train", "run_train"),
    "calibrate": ("pipeline_lib.calibrate", "run_calibrate"),
    "evaluate": ("pipeline_lib.evaluate", "run_evaluate"),
    "mine": ("pipeline_lib.mine", "run_mine"),
    "verifier": ("pipeline_lib.verifier", "run_verifier"),
    "export": ("pipeline_lib.export", "run_export"),
}


def _lazy(module: str, attr: str) -> Callable[[Params, Layout], Any]:
    def run(params: Params, layout: Layout) -> Any:
        return getattr(importlib.import_module(module), attr)(params, layout)

    run.__name__ = attr
    return run


STAGES: dict[str, Callable[[Params, Layout], Any]] = {
    name: _lazy(*target) for name, target in _TARGETS.items()
}


def run_stage(name: str, root: Path) -> Any:
    """Load and validate params, then run one stage in the project at ``root``."""
    layout = Layout(root)
    params = load_params(layout.params)
    threads.apply(threads.resolve(params.runtime.threads))
    return STAGES[name](params, layout)
