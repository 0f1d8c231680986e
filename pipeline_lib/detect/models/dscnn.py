"""DS-CNN after the MLPerf Tiny keyword-spotting reference (Zhang et al., "Hello Edge").

The first convolution strides 4x4 so that, on a 1.5 s micro_speech input (148 x 40), the
widest activation is 37 x 10 x 40 int8 values. With 40 channels the INT8 TFLite model is
about 32 KB and TensorFlow Lite Micro measures a 35.4 KB tensor arena (a layer's input and
output, 29.6 KB, plus the interpreter's own state): inside a 64 KB flash / 40 KB RAM
budget. 48 channels would need 43 KB of arena.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline_lib.detect.models.pooling import global_avg


def _bn_relu(ch: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(ch), nn.ReLU()]


class DSCNN(nn.Module):
    def __init__(
        self,
        num_classes: int,
        frames: int,
        bins: int,
        channels: int = 40,
        blocks: int = 4,
        dropout: float = 0.2,
        stride: Sequence[int] = (4, 4),
    ) -> None:
        super().__init__()
        del frames, bins  # global pooling makes the model size-agnostic
        layers: list[nn.Module] = [
            nn.Conv2d(
                1, channels, (10, 4), stride=(stride[0], stride[1]), padding=(4, 1), bias=False
            ),
            *_bn_relu(channels),
            nn.Dropout(dropout),
        ]
        for _ in range(blocks):
            layers += [
                nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
                *_bn_relu(channels),
                nn.Conv2d(channels, channels, 1, bias=False),
                *_bn_relu(channels),
            ]
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = global_avg(self.features(x))
        out: torch.Tensor = self.head(self.dropout(x))
        return out
