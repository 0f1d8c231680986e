"""TC-ResNet8 (Choi et al. 2019): temporal convolutions with the mel bins as channels.

Written with 2-D convolutions of height-1 kernels over a (batch, bins, 1, frames) view, so
it converts to TFLite without 1-D ops.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline_lib.detect.models.pooling import global_avg


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, (1, 9), stride=(1, stride), padding=(0, 4), bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, (1, 9), padding=(0, 4), bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=(1, stride), bias=False), nn.BatchNorm2d(cout)
            )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act(self.body(x) + self.skip(x))
        return out


class TCResNet8(nn.Module):
    def __init__(self, num_classes: int, frames: int, bins: int, width: float = 1.0) -> None:
        super().__init__()
        del frames
        ch = [int(c * width) for c in (16, 24, 32, 48)]
        self.stem = nn.Sequential(
            nn.Conv2d(bins, ch[0], (1, 3), padding=(0, 1), bias=False),
            nn.BatchNorm2d(ch[0]),
            nn.ReLU(),
        )
        self.blocks = nn.Sequential(
            _Block(ch[0], ch[1], 2), _Block(ch[1], ch[2], 2), _Block(ch[2], ch[3], 2)
        )
        self.head = nn.Linear(ch[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)  # (B, 1, T, F) -> (B, F, 1, T)
        x = global_avg(self.blocks(self.stem(x)))
        out: torch.Tensor = self.head(x)
        return out
