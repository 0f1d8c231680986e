"""A DS-CNN over time that streams: the default model, and the one ESPHome can run.

The mel bins are the input channels and every convolution runs over time only, with no
padding in time ("valid"), as microWakeWord's MixedNet does. That makes the model exactly
streamable: the first convolution's time stride is the number of feature frames one
streaming step takes, each later layer needs only the last ``kernel - 1`` steps of its
input (a ring buffer), and the average over the window becomes an average over the last
``pool`` steps. :mod:`pipeline_lib.stages.export.esphome` rebuilds the exported INT8 graph
in that form, with TFLite resource variables holding the buffers, and the streaming model
then computes, step for step, what the whole-window model computes on the same window.

On a 1.5 s micro_speech window (148 x 40) with the defaults: stride 5 (one step per 50 ms),
29 steps after the first convolution, 5 after four depthwise blocks of kernel 7, so each
of those steps hears 1.28 s. On the demo phrase, kernel 5 (0.88 s heard, a phrase of two
words barely inside) needed a calibrated threshold of 0.994 and heard 83% of the test
positives; kernel 7 heard 90% at 0.92.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline_lib.detect.models.pooling import global_avg


class StreamDSCNN(nn.Module):
    def __init__(
        self,
        num_classes: int,
        frames: int,
        bins: int,
        channels: int = 48,
        blocks: int = 4,
        first_kernel: int = 8,
        stride: int = 5,
        kernel: int = 7,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if frames < first_kernel or (frames - first_kernel) % stride:
            raise ValueError(
                f"model.options: a window of {frames} frames does not split into steps of "
                f"{stride} after a first kernel of {first_kernel}; pick first_kernel so that "
                f"(frames - first_kernel) is a multiple of stride"
            )
        steps = (frames - first_kernel) // stride + 1 - blocks * (kernel - 1)
        if steps < 1:
            raise ValueError(
                f"model.options: {blocks} blocks of kernel {kernel} need more than the "
                f"{(frames - first_kernel) // stride + 1} steps a {frames}-frame window has"
            )
        self.stride, self.pool_steps = stride, steps
        layers: list[nn.Module] = [
            nn.Conv2d(bins, channels, (first_kernel, 1), stride=(stride, 1), bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Dropout(dropout),
        ]
        for _ in range(blocks):
            layers += [
                nn.Conv2d(channels, channels, (kernel, 1), groups=channels, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
                nn.Conv2d(channels, channels, 1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
            ]
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 2, 1)  # (B, 1, T, F) -> (B, F, T, 1): bins as channels
        x = global_avg(self.features(x))
        out: torch.Tensor = self.head(self.dropout(x))
        return out
