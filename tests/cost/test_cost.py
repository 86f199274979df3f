"""Cost model v1 against hand-computed roofline numbers."""
from __future__ import annotations

import numpy as np
import pytest

import heteromoe
from heteromoe.cost import CostModel, PimRooflineV1

SYSTEM = heteromoe.systems.get("h100-hbm3-pim")
MODEL = heteromoe.models.get("qwen3-30b-a3b")


def test_gpu_roofline_by_hand():
    cost = CostModel(SYSTEM, MODEL, gpu_model="roofline")
    w = 3 * 2048 * 768 * 2  # bytes of one bf16 expert
    read = w / (0.85 * 3.35e12)
    flop = 6 * 2048 * 768 / (0.8 * 989e12)
    tokens = np.zeros(128, dtype=np.int64)
    tokens[:3] = [1, 10, 1000]
    expected = max(3 * read, 1011 * flop) + SYSTEM.gpu.launch_overhead_s
    assert cost.gpu.time_s(tokens) == pytest.approx(expected)
    assert cost.gpu.time_s(np.zeros(128)) == 0.0


def test_pim_bank_serializes_tokens():
    pim = PimRooflineV1(SYSTEM.pim, MODEL)
    w = 3 * 2048 * 768 * 2
    one = max(w / (9 * 3.35e12), 6 * 2048 * 768 / (9 * 3.35e12)) + SYSTEM.pim.command_overhead_s
    times = pim.times_s(np.array([0, 1, 2, 7]))
    assert times.tolist() == pytest.approx([0.0, one, 2 * one, 7 * one])


def test_pim_logic_batches_tokens():
    system = heteromoe.systems.get("h100-logic-pim")
    pim = PimRooflineV1(system.pim, MODEL)
    times = pim.times_s(np.array([1, 2, 4]))
    # Logic-PIM at 8 FLOP/B is read-bound for few tokens: 1, 2 and 4 tokens cost the same sweep
    assert times[0] == pytest.approx(times[1]) == pytest.approx(times[2])
    assert pim.times_s(np.array([10_000]))[0] > times[0]  # compute-bound eventually


def test_comm_zero_on_one_gpu_and_positive_on_four():
    cost = CostModel(SYSTEM, MODEL)
    counts = np.full(128, 4)
    assert cost.comm_s(counts, np.zeros(128, dtype=np.int64), 1).tolist() == [0.0]
    homes = np.repeat(np.arange(4), 32)
    t = cost.comm_s(counts, homes, 4)
    remote_bytes = 32 * 4 * 0.75 * 2048 * 2
    assert t == pytest.approx(np.full(4, 2 * (remote_bytes / 450e9 + 1e-6)))


def test_pim_beats_gpu_for_one_token_and_loses_for_many():
    cost = CostModel(SYSTEM, MODEL, gpu_model="roofline")
    one = np.zeros(128, dtype=np.int64)
    one[0] = 1
    assert cost.pim.times_s(one).sum() < cost.gpu.time_s(one)
    many = one * 64
    assert cost.pim.times_s(many).sum() > cost.gpu.time_s(many)


@pytest.mark.parametrize("system", ["h100-hbm3-pim", "b200-hbm3e-pim", "h100-logic-pim"])
def test_lookups_at_the_counts_equal_the_dense_tables(system):
    """`gpu_flop_s` / `pim_time_s` give the tables' values bit for bit, computed at the counts only."""
    cost = CostModel(heteromoe.systems.get(system), MODEL)
    counts = np.array([0, 1, 2, 3, 17, 255, 4096, 65535])
    flop_tab, pim_tab = cost.tables(int(counts.max()))
    assert np.array_equal(cost.gpu_flop_s(counts), flop_tab[counts])
    assert np.array_equal(cost.pim_time_s(counts), pim_tab[counts])
