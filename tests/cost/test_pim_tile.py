"""Samsung HBM-PIM's tile flow: the command walk against PIMSimulator's published run and the DRAM timing rules."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import heteromoe
from heteromoe.cost import BankPimTiming
from heteromoe.cost.pim_tile import TileFlowCosts, tile_counts, walk_tile_gemv

# SAITPublic/PIMSimulator, PIMBenchFixture.gemv as shipped: GEMV 4096 x 4096, one input vector, 64 pseudo-channels
# (system_hbm_64ch.ini), tCK 1 ns (ini/HBM2_samsung_2M_16B_x64.ini)
STOCK_PIM_CYCLES = 13_166
STOCK_PLAIN_CYCLES = 36_082
STOCK_ONE_STACK_READ_BYTES_PER_S = 231e9  # MemBandwidthFixture, one stack


@pytest.fixture(scope="module")
def pim():
    return heteromoe.systems.get("samsung-hbm2-pim").pim


def test_stock_gemv_tiles(pim):
    n_in, n_out = tile_counts(pim, 4096, 4096, 64)
    assert (n_in, n_out) == (32, 1)  # 8 bursts of 16 FP16 per input tile; 8 rows x 8 units x 64 channels per output tile


def test_walk_reproduces_the_stock_run(pim):
    # the simulator's controller refreshes one tREFI after the start, then every tREFI
    walk = walk_tile_gemv(pim, 32, 1, 1, refresh_phase_cycles=pim.timings.t_refi_ns / pim.timings.tck_ns)
    assert walk.last_cmd == pytest.approx(STOCK_PIM_CYCLES, rel=0.02)
    assert sum(walk.spent.values()) == pytest.approx(walk.last_cmd)


def test_closed_form_reproduces_the_stock_run_and_the_plain_read(pim):
    t = BankPimTiming(pim, stacks=4)
    assert float(t.gemv_s(4096, 4096, 1)) * 1e9 == pytest.approx(STOCK_PIM_CYCLES, rel=0.10)
    assert t.hbm_read_s(4096, 4096, 1) * 1e9 == pytest.approx(STOCK_PLAIN_CYCLES, rel=0.10)
    one = BankPimTiming(pim, stacks=1)
    d = 8192
    assert d * d * 2 / one.hbm_read_s(d, d, 1) == pytest.approx(STOCK_ONE_STACK_READ_BYTES_PER_S, rel=0.10)


def test_pim_speedup_over_the_plain_read_of_expert_shapes(pim):
    """One stack, one input vector: the tile flow's speed-up over the plain read stays under the stock
    run's 2.74x and above 1.9x for MoE expert shapes (smaller ones lose more to per-tile overheads)."""
    t = BankPimTiming(pim, stacks=1)
    for d_in, d_out in ((2048, 1536), (768, 2048), (2880, 5760), (4096, 2048), (1024, 4096)):
        speedup = t.hbm_read_s(d_in, d_out, 1) / float(t.gemv_s(d_in, d_out, 1))
        assert 1.9 < speedup < 2.85, (d_in, d_out, speedup)


def test_walk_counts_the_flow_commands(pim):
    n_in, n_out, vectors = 3, 2, 2
    log = walk_tile_gemv(pim, n_in, n_out, vectors, trace=True).log
    reads = [c for c in log if c[0] == "RD"]
    writes = [c for c in log if c[0] == "WR"]
    macs = n_out * vectors * n_in * pim.grf_a_registers * pim.grf_b_registers
    assert len(reads) == 16 + macs + 2  # park in (every bank), the MACs, park out
    per_pass = 2 + n_in * pim.grf_a_registers + pim.grf_b_registers  # mode in/out, GRF_A inputs, GRF_B write-back
    assert len(writes) == 4 + 1 + n_out * vectors * per_pass + 2  # to all-bank mode, CRF, passes, to single-bank
    mac_banks = [b for name, _, b in reads[16:-2]]
    assert set(mac_banks) == {0, 1}  # even MACs address bank 0, odd MACs bank 1: all-bank commands


def test_walk_obeys_the_timing_rules(pim):
    tm = pim.timings
    log = walk_tile_gemv(pim, 5, 2, 2, refresh_phase_cycles=1000.0, trace=True).log
    columns = sorted(at for name, at, _ in log if name in ("RD", "WR"))
    assert np.all(np.diff(columns) >= 1)  # one command per cycle
    acts = sorted(at for name, at, _ in log if name == "ACT")
    assert all(b - a >= tm.t_faw_cycles for a, b in zip(acts, acts[4:]))  # at most four per tFAW
    for bank in range(pim.banks_per_pseudo_channel):
        mine = sorted((at, name) for name, at, b in log if b == bank)
        last = {}
        for at, name in mine:
            if name == "ACT":
                assert at - last.get("ACT", -1e9) >= tm.t_rc_cycles
                assert at - last.get("PRE", -1e9) >= tm.t_rp_cycles
            elif name == "RD":
                assert at - last["ACT"] >= tm.t_rcd_cycles
                assert at - max(last.get("RD", -1e9), last.get("WR", -1e9)) >= tm.t_ccd_l_cycles
            elif name == "WR":
                assert at - last["ACT"] >= tm.t_rcd_wr_cycles
            elif name == "PRE":
                assert at - last["ACT"] >= tm.t_ras_cycles
            last[name] = at
    refreshes = [at for name, at, _ in log if name == "REF"]
    assert len(refreshes) >= 2 and np.all(np.diff(refreshes) >= tm.t_refi_ns / tm.tck_ns - 1)
    rfc = tm.t_rfc_ns / tm.tck_ns
    assert not any(r <= at < r + rfc for r, at in itertools.product(refreshes, columns))  # nothing during tRFC


def test_closed_form_is_the_walks_arithmetic(pim):
    costs = TileFlowCosts.from_walks(pim)
    for n_in, passes in ((1, 1), (2, 3), (7, 2), (16, 2)):
        walk = walk_tile_gemv(pim, n_in, passes, 1)
        closed = costs.cycles(n_in, passes)
        assert closed[:4].sum() == pytest.approx(walk.last_cmd, rel=1e-9)  # exact without refresh
    arrays = costs.cycles(np.array([1, 4, 9]), np.array([2, 2, 5]))
    assert arrays.shape == (3, 5)
    np.testing.assert_allclose(arrays[2], costs.cycles(9, 5))


def test_pim_time_reports_the_stock_run(capsys):
    import json

    from heteromoe.cli import main

    assert main(["pim-time", "--system", "samsung-hbm2-pim", "--d-in", "4096", "--d-out", "4096", "--dtype", "fp16",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stacks"] == 4  # the preset's default: PIMSimulator's 64 pseudo-channels
    assert out["pim_ns"] == pytest.approx(STOCK_PIM_CYCLES, rel=0.10)
    assert out["hbm_read_ns"] == pytest.approx(STOCK_PLAIN_CYCLES, rel=0.10)
    assert out["speedup"] == pytest.approx(STOCK_PLAIN_CYCLES / STOCK_PIM_CYCLES, rel=0.10)
