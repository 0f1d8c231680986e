"""Process-parallel map with a progress bar; results come back in input order."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


def _init_worker() -> None:
    # One BLAS/torch thread per process: the pool already uses every core. torch is only
    # touched when the stage already imported it (importing it here would slow every fork).
    os.environ["OMP_NUM_THREADS"] = "1"
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def pmap(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    workers: int,
    desc: str,
    chunksize: int = 8,
    unit: str = "file",
) -> list[R]:
    """Map ``fn`` over ``items`` with ``workers`` processes (in-process when 1)."""
    bar = tqdm(total=len(items), desc=desc, unit=unit, dynamic_ncols=True, leave=True)
    results: list[R] = []
    try:
        if workers <= 1 or len(items) <= 1:
            for item in items:
                results.append(fn(item))
                bar.update(1)
            return results
        with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
            it: Iterable[R] = pool.map(fn, items, chunksize=max(1, chunksize))
            for result in it:
                results.append(result)
                bar.update(1)
        return results
    finally:
        bar.close()
