"""PIM truth in the simulator: the command walk's busy time, refresh stalls placed at the real start."""
from __future__ import annotations

import numpy as np
import pytest

import heteromoe
from heteromoe.cost.pim_bank import BankPimTiming
from heteromoe.sim.pim_truth import ExpertPimTruth, with_refresh


@pytest.fixture(scope="module")
def timing():
    return BankPimTiming(heteromoe.systems.get("b200-hbm3e-pim").pim)


@pytest.mark.parametrize("shape", [(2048, 1536, 1), (768, 2048, 3), (128, 2048, 8), (2880, 5760, 2)])
def test_busy_time_is_the_command_walks(timing, shape):
    closed = timing.gemv(*shape)
    walk = timing.gemv_commands(*shape, refresh_phase_ns=1234.5)
    assert closed.total_s - closed.refresh_s == pytest.approx(walk.total_s - walk.refresh_s, rel=1e-12)


def test_refresh_stalls_follow_the_clock():
    refi, rfc = 3.9e-6, 0.4e-6
    # no boundary crossed, one crossed, and one whose own stall pushes it over the next boundary
    got = with_refresh(np.array([0.1e-6, 3.8e-6, 3.5e-6, 1.0e-6]), np.array([1e-6, 1e-6, 3.9e-6, 0.0]), refi, rfc)
    assert got.tolist() == pytest.approx([1e-6, 1.4e-6, 4.7e-6, 0.0])
    # averaged over start phases, the stalls approach the closed form's expected factor
    starts = np.linspace(0, refi, 4001)[:-1]
    mean = with_refresh(starts, np.full(starts.size, 50e-6), refi, rfc).mean()
    assert mean == pytest.approx(50e-6 * refi / (refi - rfc), rel=0.01)


def test_expert_truth_sums_tp_and_takes_the_busiest_group(timing):
    spec = heteromoe.models.get("qwen3-30b-a3b")
    truth = ExpertPimTruth(timing, spec)
    slot_gpu = np.zeros(128, dtype=np.int64)
    tokens = np.zeros(128)
    tokens[[0, 8, 1]] = [3, 2, 1]  # experts 0 and 8 share stack group 0 (round-robin over 8 groups)
    tp = truth.busy_s(tokens, slot_gpu, 1, None)
    assert tp[0] == pytest.approx(6 * truth.per_token_busy_s(1.0))
    ep = truth.busy_s(tokens, slot_gpu, 1, 8)
    assert ep[0] == pytest.approx(5 * truth.per_token_busy_s(1 / 8))
