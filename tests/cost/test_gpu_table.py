"""The measured GPU cost table (`heteromoe calibrate`'s output) and how the cost model picks it."""
from __future__ import annotations

import json

import numpy as np
import pytest

import heteromoe
from heteromoe.calibrate import table_from_measurements
from heteromoe.cost.gpu import GpuRoofline
from heteromoe.cost.gpu_table import (
    GpuCostTable,
    find_table,
    load_tables,
    shipped_tables,
)
from heteromoe.cost.model import CostModel
from heteromoe.sched import get_policy
from heteromoe.sched.placement import Placement

H100 = heteromoe.systems.get("h100-hbm3-pim")
QWEN = heteromoe.models.get("qwen3-30b-a3b")


def test_interpolation_and_extrapolation_by_hand():
    table = GpuCostTable({1: 2e-6, 4: 5e-6, 8: 7e-6}, fixed_s=10e-6)
    np.testing.assert_allclose(table.time_at([0, 1, 2, 4, 6, 8, 12]),
                               [0, 2e-6, 3e-6, 5e-6, 6e-6, 7e-6, 9e-6])  # past 8: the last slope, 0.5 us/token
    assert table.read_s_per_expert == pytest.approx(2e-6)
    assert table.time_s(np.array([1, 0, 4])) == pytest.approx(2e-6 + 5e-6 + 10e-6)
    assert table.time_s(np.zeros(3, dtype=int)) == 0.0


def test_grouped_regime_costs_only_where_an_expert_exceeds_the_gemv():
    table = GpuCostTable({1: 2e-6, 8: 4e-6}, fixed_s=5e-6, grouped_fixed_s=40e-6, gemv_max_tokens=2)
    assert table.regime_fixed_s(np.array([1, 2, 0])) == 0.0
    assert table.regime_fixed_s(np.array([1, 3])) == pytest.approx(40e-6)


def test_small_batches_are_priced_by_the_gemv_table_where_one_is_given():
    """A table whose main regime is the tensor-core kernel prices batches of at most gemv_batch_tokens tokens
    (run on the GEMV alone) by its small-batch table: the regime term is the difference."""
    table = GpuCostTable({1: 3e-6, 8: 4e-6}, fixed_s=25e-6, gemv_batch_tokens=4,
                         small_batch=({1: 2e-6, 4: 2.5e-6}, 10e-6))
    tokens = np.array([1, 2, 0, 1])
    small = float(np.sum(table.small_batch.time_at(tokens))) + 10e-6
    assert small == pytest.approx(2e-6 + (2e-6 + 0.5e-6 / 3) + 2e-6 + 10e-6)
    assert table.time_s(tokens) + table.regime_fixed_s(tokens, batch_tokens=2) == pytest.approx(small)
    assert table.regime_fixed_s(tokens, batch_tokens=5) == 0.0  # past the GEMV batches: the main table


@pytest.mark.parametrize("bad", [{}, {0: 1e-6}, {1: -1e-6}, {1: float("nan")}])
def test_bad_tables_are_refused(bad):
    with pytest.raises(ValueError):
        GpuCostTable(bad, fixed_s=1e-6)


def test_fit_recovers_slope_and_fixed_costs():
    raw = [{"tokens": n, "experts": [8, 16, 32], "layer_s": [f + m * s for m in (8, 16, 32)]}
           for n, s, f in ((1, 3e-6, 10e-6), (2, 4e-6, 10e-6), (8, 5e-6, 60e-6), (16, 6e-6, 60e-6))]
    table = table_from_measurements(128, 8, 2048, 768, "bfloat16", raw, gemv_max_tokens=2)
    assert table["per_expert_s"]["1"] == pytest.approx(3e-6)
    assert table["per_expert_s"]["16"] == pytest.approx(6e-6)
    assert table["fixed_s"] == pytest.approx(10e-6)
    assert table["grouped_fixed_s"] == pytest.approx(50e-6)


def test_the_shipped_h100_table_is_preferred_over_the_roofline():
    assert any(t.get("gpu") == "h100" for t in shipped_tables())
    cost = CostModel(H100, QWEN)
    assert isinstance(cost.gpu, GpuCostTable) and "h100.json" in cost.gpu.source
    assert isinstance(CostModel(H100, QWEN, gpu_model="roofline").gpu, GpuRoofline)
    # another GPU, or an expert shape nobody measured: the roofline
    assert isinstance(CostModel(heteromoe.systems.get("b200-hbm3e-pim"), QWEN).gpu, GpuRoofline)
    assert isinstance(CostModel(H100, heteromoe.models.get("gpt-oss-120b")).gpu, GpuRoofline)
    with pytest.raises(ValueError, match="'fast'"):
        CostModel(H100, QWEN, gpu_model="fast")


def test_gpu_only_plan_charges_the_grouped_side_where_it_runs():
    cost = CostModel(H100, QWEN)
    placement = Placement.from_homes(np.zeros(128, dtype=np.int64), 1)
    few = np.zeros(128, dtype=np.int64)
    few[:8] = 1
    many = few.copy()
    many[0] = 40
    plan_few = get_policy("gpu-only").plan(few, placement, 1, cost)
    plan_many = get_policy("gpu-only").plan(many, placement, 1, cost)
    t = cost.gpu
    # one token (8 pairs): a batch the runtime runs on the GEMV alone, priced by the shipped small-batch table
    assert t.small_batch is not None
    assert plan_few.t_gpu_s == pytest.approx(8 * t.small_batch.time_at([1])[0] + t.small_batch.launch_s)
    # 47 pairs = 5 tokens: past the GEMV batches, the main (tensor-core) table and its regime term
    assert plan_many.t_gpu_s == pytest.approx(7 * t.time_at([1])[0] + t.time_at([40])[0] + t.launch_s + t.grouped_fixed_s)


def test_find_table_matches_gpu_key_and_shape(tmp_path):
    data = {"gpu": "h100", "device": "test", "tables": {"x": {
        "shape": {"num_experts": 4, "top_k": 2, "hidden_size": QWEN.hidden_size,
                  "intermediate_size": QWEN.moe_intermediate_size, "dtype": "bfloat16"},
        "per_expert_s": {"1": 1e-6, "2": 2e-6}, "fixed_s": 3e-6}}}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    table = find_table(H100, QWEN, [load_tables(path)])
    assert table is not None and table.launch_s == pytest.approx(3e-6)
    assert find_table(heteromoe.systems.get("b200-hbm3e-pim"), QWEN, [load_tables(path)]) is None
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="heteromoe calibrate"):
        load_tables(tmp_path / "bad.json")
