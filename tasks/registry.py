"""Prefect tasks for registry actions and mining acceptance (thin wrappers, so each shows
up in the flow run with its own state and logs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import load_params
from pipeline_lib.release import registry
from pipeline_lib.release.accept import accept


@task(name="register", cache_policy=NO_CACHE)
def register_version(root: str, run_id: str, set_candidate: bool = True) -> dict[str, Any]:
    """Register the exported model; returns the version number and the failed gates."""
    params = load_params(Layout(Path(root)).params)
    version, failed = registry.register(Path(root), params, run_id, set_candidate)
    return {"version": version.version, "failed_gates": failed, "figures": version.figures}


@task(name="accept-mined", cache_policy=NO_CACHE)
def accept_mined(root: str) -> dict[str, Any]:
    """Every mined clip into the hard-negative source, tracked by DVC."""
    layout = Layout(Path(root))
    params = load_params(layout.params)
    return accept(params, layout)
