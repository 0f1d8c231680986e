"""Training throughput per zoo model and front-end speed, on this machine's CPU (or GPU).

Prints samples/s of training steps (forward, backward, AdamW) for each zoo model on 1.5 s
micro_speech-shaped inputs, and each front end's speed in multiples of real time over a
minute of audio. All figures come from one run, so ratios between them are fair:

    python benchmarks/train_extract_speed.py [--batch 64] [--steps 8]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from pipeline_lib.audio import features
from pipeline_lib.base.params import parse_params
from pipeline_lib.detect.models import ZOO, build, count_params_macs

REPO = Path(__file__).resolve().parents[1]


def train_speed(
    arch: str, batch: int, steps: int, device: torch.device, options: dict[str, Any]
) -> float:
    model = build(arch, 2, 148, 40, **options).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, 148, 40, device=device)
    y = torch.randint(0, 2, (batch,), device=device)

    def run(n: int) -> None:
        for _ in range(n):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    run(2)  # warm-up
    start = time.perf_counter()
    run(steps)
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device {device}, torch threads {torch.get_num_threads()}")
    print(f"{'model':26s} {'params':>8s} {'MACs':>9s} {'train samples/s':>16s}")
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    configured = (raw["model"]["arch"], raw["model"]["options"])
    for arch, options in [*((a, {}) for a in ZOO), configured]:
        params, macs = count_params_macs(build(arch, 2, 148, 40, **options), 148, 40)
        speed = train_speed(arch, args.batch, args.steps, device, options)
        name = f"{arch} {options}" if options else arch
        print(f"{name:26s} {params:8d} {macs / 1e6:8.2f}M {speed:16.0f}")
    audio = (np.random.default_rng(0).standard_normal(16000 * 60) * 0.1).astype(np.float32)
    for front_end in ("logmel", "micro"):
        raw["features"]["front_end"] = front_end
        cfg = parse_params(raw).features
        features.compute(audio[:16000], cfg, 16000)
        start = time.perf_counter()
        features.compute(audio, cfg, 16000)
        took = time.perf_counter() - start
        print(f"front end {front_end:6s}: {60 / took:8.0f}x real time (one core, 60 s of audio)")


if __name__ == "__main__":
    main()
