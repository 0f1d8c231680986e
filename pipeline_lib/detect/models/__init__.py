"""A small model zoo sized for microcontrollers, plus a larger teacher.

Every model takes features shaped (batch, 1, frames, bins) and returns class logits, and
uses only operators that convert to full-integer INT8 TFLite (conv, depthwise conv,
batch norm folded into conv, ReLU, average pooling, fully connected, add).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pipeline_lib.detect.models.bcresnet import BCResNet
from pipeline_lib.detect.models.dscnn import DSCNN
from pipeline_lib.detect.models.stream_dscnn import StreamDSCNN
from pipeline_lib.detect.models.tcresnet import TCResNet8
from pipeline_lib.detect.models.teacher import Teacher

ZOO: dict[str, Callable[..., nn.Module]] = {
    "stream_dscnn": StreamDSCNN,
    "dscnn": DSCNN,
    "tcresnet8": TCResNet8,
    "bcresnet1": lambda **kw: BCResNet(width=1, **kw),
    "bcresnet2": lambda **kw: BCResNet(width=2, **kw),
    "teacher": Teacher,
}


def build(arch: str, num_classes: int, frames: int, bins: int, **kwargs: Any) -> nn.Module:
    """Instantiate a zoo model by name."""
    if arch not in ZOO:
        raise ValueError(f"unknown architecture '{arch}'; expected one of {', '.join(ZOO)}")
    return ZOO[arch](num_classes=num_classes, frames=frames, bins=bins, **kwargs)


def count_params_macs(model: nn.Module, frames: int, bins: int) -> tuple[int, int]:
    """Parameters and multiply-accumulates of one inference (conv and linear layers)."""
    macs = 0

    def hook(mod: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(mod, nn.Conv2d | nn.Conv1d):
            per_out = (mod.in_channels // mod.groups) * int(torch.tensor(mod.kernel_size).prod())
            macs += out.numel() * per_out
        elif isinstance(mod, nn.Linear):
            macs += out.numel() * mod.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Conv1d | nn.Linear)
    ]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, frames, bins))
    model.train(was_training)
    for h in handles:
        h.remove()
    return sum(p.numel() for p in model.parameters()), macs


__all__ = ["ZOO", "build", "count_params_macs"]
