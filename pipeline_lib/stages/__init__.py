"""The stage registry: ``soundops stage NAME`` and ``dvc.yaml`` both go through here."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline_lib.base import threads
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import Params, load_params

# Each stage's module is imported only when that stage runs, so `soundops stage split`
# never pays for importing torch.
MODULES: dict[str, tuple[str, str]] = {
    "generate": ("pipeline_lib.stages.generate.corpus", "generate_corpus"),
    "ingest": ("pipeline_lib.stages.ingest", "run_ingest"),
    "validate": ("pipeline_lib.stages.validate", "run_validate"),
    "split": ("pipeline_lib.stages.split", "run_split"),
    "extract": ("pipeline_lib.stages.extract", "run_extract"),
    "train": ("pipeline_lib.stages.train", "run_train"),
    "calibrate": ("pipeline_lib.stages.calibrate", "run_calibrate"),
    "evaluate": ("pipeline_lib.stages.evaluate", "run_evaluate"),
    "mine": ("pipeline_lib.stages.mine", "run_mine"),
    "verifier": ("pipeline_lib.stages.verifier", "run_verifier"),
    "export": ("pipeline_lib.stages.export.stage", "run_export"),
}


def _lazy(module: str, attr: str) -> Callable[..., Any]:
    def run(params: Params, layout: Layout, **hooks: Any) -> Any:
        return getattr(importlib.import_module(module), attr)(params, layout, **hooks)

    run.__name__ = attr
    return run


STAGES: dict[str, Callable[..., Any]] = {name: _lazy(*target) for name, target in MODULES.items()}


def run_stage(
    name: str, root: Path, on_epoch: Callable[[dict[str, float], int], None] | None = None
) -> Any:
    """Load and validate params, then run one stage in the project at ``root``.

    ``on_epoch`` reaches the train stage only: the caller decides where training's live
    figures go (the CLI passes an MLflow logger), so no stage imports a tracker."""
    layout = Layout(root)
    params = load_params(layout.params)
    threads.apply(threads.resolve(params.runtime.threads))
    hooks = {"on_epoch": on_epoch} if name == "train" and on_epoch is not None else {}
    return STAGES[name](params, layout, **hooks)
