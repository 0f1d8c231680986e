"""The monitor's regression rule: a rise over the recorded FAH beyond the tolerance, told
apart from a rate that is merely over target."""

from __future__ import annotations

from pipeline_lib.release.monitor import regression


def test_regression_rule() -> None:
    field = {"fah": 6.0, "fah_lo": 2.2, "fah_hi": 13.0}
    assert not regression(field, recorded_fah=1.0, max_fah=8.0, tolerance=2.0).regression
    hit = regression(field, recorded_fah=0.0, max_fah=8.0, tolerance=2.0)
    assert hit.regression and not hit.over_target and "tolerance" in hit.reason
    over = regression(field, recorded_fah=5.0, max_fah=2.0, tolerance=2.0)
    assert over.over_target and not over.regression
    assert "release.gates.max_fah 2.00" in over.reason
