"""How a recipe of ``pipeline_lib/presets`` goes into params.yaml: key by key, so a recipe
that sets one count leaves the others as they are."""

from __future__ import annotations

from typing import Any


def merge_keys(base: dict[str, Any], extra: dict[str, Any]) -> None:
    """Write ``extra`` into ``base`` in place, descending into mappings both hold."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge_keys(base[key], value)
        else:
            base[key] = value
