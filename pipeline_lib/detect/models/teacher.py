"""A larger residual CNN (about 0.4 M parameters) to distil from; not meant for a device."""

from __future__ import annotations

import torch
from torch import nn

from pipeline_lib.detect.models.pooling import global_avg


class _Res(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip: nn.Module = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act(self.body(x) + self.skip(x))
        return out


class Teacher(nn.Module):
    def __init__(self, num_classes: int, frames: int, bins: int, width: int = 32) -> None:
        super().__init__()
        del frames, bins
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(1, w, 3, stride=(2, 1), padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            _Res(w, w, 1),
            _Res(w, 2 * w, 2),
            _Res(2 * w, 4 * w, 2),
            _Res(4 * w, 4 * w, 1),
        )
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.dropout(global_avg(self.net(x))))
        return out
