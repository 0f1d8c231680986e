"""pmap: results in input order from a process pool, one thread per worker, and a
worker's error reaches the caller as itself."""

from __future__ import annotations

import os

import pytest

from pipeline_lib.base.parallel import pmap


def _square_after(n: int) -> int:
    import time

    time.sleep(0.002 * (n % 5))  # later items may finish first
    return n * n


def _threads(_: int) -> str:
    return os.environ.get("OMP_NUM_THREADS", "")


def _fails(n: int) -> int:
    if n == 3:
        raise ValueError("item 3 is bad")
    return n


def test_results_come_back_in_input_order_in_a_pool_and_in_process() -> None:
    items = list(range(40))
    assert pmap(_square_after, items, workers=2, desc="t", chunksize=3) == [n * n for n in items]
    assert pmap(_square_after, items, workers=1, desc="t") == [n * n for n in items]
    assert pmap(_square_after, [], workers=2, desc="t") == []


def test_pool_workers_run_one_thread_each() -> None:
    assert set(pmap(_threads, list(range(4)), workers=2, desc="t", chunksize=1)) == {"1"}


def test_a_worker_error_reaches_the_caller() -> None:
    with pytest.raises(ValueError, match="item 3 is bad"):
        pmap(_fails, list(range(6)), workers=2, desc="t", chunksize=1)
