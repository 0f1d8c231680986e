"""How many compute threads a stage uses, chosen on purpose.

torch and onnxruntime default to one thread per core and spin-wait at every barrier. When
another process holds a core, each parallel step waits on the thread that shares it: on a
2-core machine, training beside one busy process ran 6-14x slower with the default than
with one thread. ``runtime.threads: 0`` (the default) therefore takes the cores that are
free when the stage starts; a number fixes it; ``SOUNDOPS_THREADS`` overrides both for
one command. It is a runtime setting, never a DVC param: it changes how fast a stage runs
(float sums may round differently with another thread count, as they do on another CPU).
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import time
from pathlib import Path

from pipeline_lib.base.errors import ParamsError

log = logging.getLogger(__name__)

ENV = "SOUNDOPS_THREADS"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def busy_elsewhere(samples: int = 5, gap_s: float = 0.04) -> int:
    """Threads running on other work now: the median of a few reads of the kernel's
    runnable count, less this process's own; the 1-minute load average where there is
    no ``/proc`` (it lags, so it is the fallback)."""
    stat = Path("/proc/stat")
    if not stat.is_file():
        return round(os.getloadavg()[0])
    counts = []
    for i in range(samples):
        for line in stat.read_text(encoding="ascii").splitlines():
            if line.startswith("procs_running "):
                counts.append(int(line.split()[1]))
        if i + 1 < samples:
            time.sleep(gap_s)
    return max(0, round(statistics.median(counts)) - 1) if counts else 0


def resolve(setting: int) -> int:
    """The thread count for ``runtime.threads`` (0 = the free cores, at least one)."""
    raw = os.environ.get(ENV, "").strip()
    if raw:
        if not raw.isdigit() or not 1 <= int(raw) <= 256:
            raise ParamsError(f"{ENV}: expected a whole number of threads 1-256, got {raw!r}.")
        return int(raw)
    if setting > 0:
        return setting
    return max(1, _cores() - busy_elsewhere())


def apply(n: int) -> None:
    """Size torch, OpenMP and onnxruntime to ``n`` threads for this process and the
    processes it starts (OMP_NUM_THREADS is read when torch is first imported)."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ[f"{ENV}_RESOLVED"] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    log.debug("compute threads: %d of %d core(s)", n, _cores())


def current() -> int:
    """The count :func:`apply` chose in this process (or an ancestor), else every core."""
    raw = os.environ.get(f"{ENV}_RESOLVED", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else _cores()
