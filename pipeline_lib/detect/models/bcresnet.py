"""BC-ResNet (Kim et al. 2021): broadcasted residual learning.

Each block runs a frequency-wise depthwise conv with sub-spectral normalisation, averages
over frequency, runs a temporal depthwise conv on that 1-D signal and broadcasts it back.
Widths 1 and 2 scale the channels (8, 12, 16, 20) x width.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline_lib.detect.models.pooling import freq_avg, global_avg


class SubSpectralNorm(nn.Module):
    """Batch norm per frequency sub-band (folds into the preceding conv at export)."""

    def __init__(self, ch: int, bins: int, sub_bands: int = 5) -> None:
        super().__init__()
        self.sub = sub_bands if bins % sub_bands == 0 else 1
        self.bn = nn.BatchNorm2d(ch * self.sub)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, f = x.shape
        x = x.reshape(b, c, t, self.sub, f // self.sub).permute(0, 1, 3, 2, 4)
        x = self.bn(x.reshape(b, c * self.sub, t, f // self.sub))
        x = x.reshape(b, c, self.sub, t, f // self.sub).permute(0, 1, 3, 2, 4)
        return x.reshape(b, c, t, f)


class _BCBlock(nn.Module):
    def __init__(self, cin: int, cout: int, bins: int, stride: int, dilation: int) -> None:
        super().__init__()
        self.transition = cin != cout
        self.pre: nn.Module = nn.Identity()
        if self.transition:
            self.pre = nn.Sequential(
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
            )
        self.freq = nn.Sequential(
            nn.Conv2d(
                cout, cout, (1, 3), stride=(1, stride), padding=(0, 1), groups=cout, bias=False
            ),
            SubSpectralNorm(cout, bins // stride),
        )
        self.temporal = nn.Sequential(
            nn.Conv2d(
                cout,
                cout,
                (3, 1),
                padding=(dilation, 0),
                dilation=(dilation, 1),
                groups=cout,
                bias=False,
            ),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 1, bias=False),
            nn.Dropout(0.1),
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)
        f2 = self.freq(x)
        f1 = self.temporal(freq_avg(f2))
        out: torch.Tensor = self.act(f1 + f2 + (0 if self.transition else x))
        return out


class BCResNet(nn.Module):
    def __init__(self, num_classes: int, frames: int, bins: int, width: int = 1) -> None:
        super().__init__()
        del frames
        ch = [8 * width, 12 * width, 16 * width, 20 * width]
        self.stem = nn.Sequential(
            nn.Conv2d(1, 16 * width, 5, stride=(1, 2), padding=2, bias=False),
            nn.BatchNorm2d(16 * width),
            nn.ReLU(),
        )
        f = (bins + 1) // 2
        blocks: list[nn.Module] = []
        cin = 16 * width
        for stage, (cout, n, stride, dil) in enumerate(
            zip(ch, (2, 2, 4, 4), (1, 2, 2, 1), (1, 2, 4, 8), strict=True)
        ):
            for i in range(n):
                blocks.append(_BCBlock(cin, cout, f, stride if i == 0 else 1, dil))
                if i == 0:
                    f = (f + stride - 1) // stride
                cin = cout
            del stage
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Conv2d(cin, cin, (5, 5), padding=(2, 0), groups=cin, bias=False),
            nn.Conv2d(cin, 32 * width, 1, bias=False),
            nn.BatchNorm2d(32 * width),
            nn.ReLU(),
        )
        self.fc = nn.Linear(32 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = global_avg(self.head(self.blocks(self.stem(x))))
        out: torch.Tensor = self.fc(x)
        return out
