"""The zoo: every model runs on a feature window and reports parameters and MACs."""

from __future__ import annotations

import pytest
import torch

from pipeline_lib.detect.models import ZOO, build, count_params_macs


@pytest.mark.parametrize("arch", list(ZOO))
@pytest.mark.parametrize("classes", [2, 5])
def test_models_give_one_logit_per_class(arch: str, classes: int) -> None:
    model = build(arch, classes, 148, 40).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 1, 148, 40))
    assert out.shape == (3, classes)
    params, macs = count_params_macs(model, 148, 40)
    assert params == sum(p.numel() for p in model.parameters()) and macs > params


def test_mac_count_of_a_known_layer() -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 10 * 8, 2)
    )
    _, macs = count_params_macs(model, 10, 8)
    assert macs == 10 * 8 * 4 * 9 + 4 * 10 * 8 * 2


def test_unknown_architecture_is_named() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'resnet9000'"):
        build("resnet9000", 2, 148, 40)
