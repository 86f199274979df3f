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


def test_activation_groups_follow_the_flow():
    import heteromoe
    from heteromoe.cost.pim_bank import BankPimTiming

    stream = heteromoe.systems.get("b200-hbm3e-pim").pim  # 24 banks, four per tFAW window
    assert stream.activation_groups == 6
    assert stream.activation_issue_cycles == 5 * stream.timings.t_faw_cycles
    acts = [c for c, _ in BankPimTiming(stream).gemv_commands(256, 256, trace=True).commands if c == "ACT_ALLBANK"]
    assert len(acts) % stream.activation_groups == 0 and acts
    tile = heteromoe.systems.get("samsung-hbm2-pim").pim  # one all-bank ACT per even/odd bank set
    assert tile.activation_groups == 1 and tile.activation_issue_cycles == 0
