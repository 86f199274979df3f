import numpy as np
import pytest

from heteromoe.spec.hardware import refresh_stretch


def test_refresh_stretch_is_busy_plus_its_stall():
    busy = np.array([0.0, 1.0, 7.5, 3900.0])
    stretched = refresh_stretch(busy, 3900.0, 350.0)
    assert stretched == pytest.approx(busy + refresh_stretch(busy, 3900.0, 350.0, stall_only=True))
    # a period that loses 350 of 3900 does work 3550 of them
    assert stretched[3] == pytest.approx(3900.0 * 3900.0 / 3550.0)
    assert refresh_stretch(busy, 3900.0, 0.0) == pytest.approx(busy)
