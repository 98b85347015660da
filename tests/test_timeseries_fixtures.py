"""The shipped backbone forecasts what it forecast at commit 82c2686 (tests/fixtures/timeseries_cases.py)."""

import numpy as np
import pytest

from tests.fixtures.timeseries_cases import FIXTURE, cases


@pytest.fixture(scope="module")
def now():
    return cases()


def test_forecasts_agree_with_those_recorded_at_82c2686(now):
    ref = np.load(FIXTURE)
    assert sorted(now) == sorted(ref.files)
    for name in ref.files:
        a, b = now[name], ref[name]
        assert a.shape == b.shape, name
        # 1e-5 of the forecast's own scale (float32 sums in a different order differ in the last bits)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()), err_msg=name)
