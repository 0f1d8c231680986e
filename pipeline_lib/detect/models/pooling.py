"""Global average pooling that quantises the same way in every runtime.

``x.mean(dim=(2, 3))`` is lowered by litert-torch to a TFLite MEAN whose output keeps its
input's scale, while PT2E (and so the INT8 ONNX) quantises the mean's output on its own:
the two INT8 artifacts then disagree by several steps. Average pooling means one thing in
both (TFLite AVERAGE_POOL_2D, ONNX AveragePool), and TensorFlow Lite Micro then matches
onnxruntime INT8 step for step. FP32 results are the same as with ``mean``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias


def global_avg(x: torch.Tensor) -> torch.Tensor:
    """(n, c, h, w) -> (n, c)."""
    return F.avg_pool2d(x, (int(x.shape[2]), int(x.shape[3]))).flatten(1)


def freq_avg(x: torch.Tensor) -> torch.Tensor:
    """(n, c, h, w) -> (n, c, h, 1): the average over the last (frequency) axis."""
    return F.avg_pool2d(x, (1, int(x.shape[3])))
