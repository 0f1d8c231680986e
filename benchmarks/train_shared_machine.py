"""Training speed alone and beside one busy process, with soundops' thread sizing and with
torch's default (a thread per core).

Each measurement is a fresh process that runs the train stage's step (the configured model,
forward, backward, AdamW) on 1.5 s micro_speech-shaped batches. "beside" starts one
process spinning on a core first, as another job on a shared machine would. All figures
come from one run, so the ratios are fair:

    python benchmarks/train_shared_machine.py [--steps 30] [--batch 64]

Bar (issue 14): with soundops' sizing (``runtime.threads: 0``), speed beside one busy
process within 2x of speed alone.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARAMS = "params.yaml"

CHILD = r"""
import json, os, sys, time
sizing, steps, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if sizing == "soundops":
    from pipeline_lib.base import threads
    threads.apply(threads.resolve(0))
import torch, yaml
from pipeline_lib.detect.models import build
raw = yaml.safe_load(open(sys.argv[4], encoding="utf-8"))
model = build(raw["model"]["arch"], 2, 148, 40, **raw["model"]["options"]).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x, y = torch.randn(batch, 1, 148, 40), torch.randint(0, 2, (batch,))
def run(n):
    for _ in range(n):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
run(3)
t = time.perf_counter(); run(steps)
print(json.dumps({"s_per_batch": (time.perf_counter() - t) / steps,
                  "threads": torch.get_num_threads()}))
"""


def _spin(stop: float) -> None:
    while time.monotonic() < stop:
        pass


def measure(sizing: str, busy: bool, steps: int, batch: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "SOUNDOPS_THREADS")}
    spinner = None
    if busy:
        spinner = mp.Process(target=_spin, args=(time.monotonic() + 600,), daemon=True)
        spinner.start()
        time.sleep(1.0)  # running before the stage starts, as another job would be
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                CHILD,
                sizing,
                str(steps),
                str(batch),
                str(REPO / "params.yaml"),
            ],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            cwd=REPO,
        ).stdout
    finally:
        if spinner is not None:
            spinner.terminate()
            spinner.join()
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    print(f"{os.cpu_count()} core(s); load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'sizing':10s} {'machine':8s} {'threads':>7s} {'s/batch':>8s}")
    got: dict[tuple[str, bool], float] = {}
    for sizing in ("soundops", "default"):
        for busy in (False, True):
            r = measure(sizing, busy, args.steps, args.batch)
            got[(sizing, busy)] = r["s_per_batch"]
            where = "beside" if busy else "alone"
            print(f"{sizing:10s} {where:8s} {int(r['threads']):7d} {r['s_per_batch']:8.3f}")
    for sizing in ("soundops", "default"):
        ratio = got[(sizing, True)] / got[(sizing, False)]
        print(f"{sizing}: beside one busy process {ratio:.2f}x slower than alone")
    verdict = got[("soundops", True)] / got[("soundops", False)] <= 2.0
    print(f"bar (soundops within 2x): {'met' if verdict else 'NOT met'}")


if __name__ == "__main__":
    main()
