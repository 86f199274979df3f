"""Colocated prefill (paper §7.3): prompt tokens join the step; `heteromoe simulate --prefill`."""
from __future__ import annotations

import json

import numpy as np
import pytest

import heteromoe
from heteromoe.cli import main
from heteromoe.sim import (StepSimulator, SyntheticWorkload, chunked_prefill, sieve_prefill, sieve_prefill_requests,
                           sweep)


def test_prefill_tokens_join_the_step():
    spec = heteromoe.models.get("qwen3-30b-a3b")
    decode = SyntheticWorkload(spec).steps(16, 1)[0]
    colocated = SyntheticWorkload(spec).steps(14 + 2 * 256, 1)[0]
    base = StepSimulator(spec, "b200-hbm3e-pim", 1, "sieve", 2048, record=False).run(decode)
    sim = StepSimulator(spec, "b200-hbm3e-pim", 1, "sieve", np.full(14, 2048), prefill=(2, 256))
    mixed = sim.run(colocated)
    assert mixed.step_time_s > base.step_time_s
    assert any(s.name == "prefill_attention" for s in mixed.timeline.spans)
    assert sum(p.gpu_tokens.sum() + p.pim_tokens.sum() for p in mixed.plans[:2]) == (14 + 512) * spec.top_k
    with pytest.raises(ValueError, match="fewer than the 2 x 256 prefill tokens"):
        sim.run(colocated[:, :100])
    with pytest.raises(ValueError, match="prefill must be"):
        StepSimulator(spec, "b200-hbm3e-pim", 1, "sieve", prefill=(2, 0))


def test_sweep_caps_prefill_requests_at_the_batch():
    records = sweep("qwen3-30b-a3b", "b200-hbm3e-pim", 1, ["no-exp"], [1, 4], steps=1, prefill=(2, 32))
    assert [r["prefill"] for r in records] == [[1, 32], [2, 32]]


def test_simulate_prefill_option(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["simulate", "--model", "qwen3-30b-a3b", "--system", "b200-hbm3e-pim", "--batch", "4",
                 "--policies", "sieve", "--steps", "1", "--prefill", "1x64", "--quiet", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["records"][0]["prefill"] == [1, 64]
    assert main(["simulate", "--model", "qwen3-30b-a3b", "--system", "b200-hbm3e-pim", "--prefill", "2y"]) != 0
    assert "--prefill must be REQUESTSxTOKENS, e.g. 2x1024, got '2y'" in capsys.readouterr().err


def test_sieve_schedule_two_then_eight_prefill_requests():
    assert [sieve_prefill_requests(b) for b in (1, 3, 4, 16, 32, 33, 64, 256)] == [0, 0, 2, 2, 2, 8, 8, 8]
    assert sieve_prefill(16) == (2, 1024) and sieve_prefill(64, 48) == (8, 48)
    assert sieve_prefill(16, 0) == (0, 0) and sieve_prefill(2) == (0, 0)


def test_chunked_prefill_shares_what_the_decodes_leave_of_the_budget():
    assert chunked_prefill(16, 512) == (2, (512 - 14) // 2)
    assert chunked_prefill(256, 512) == (8, (512 - 248) // 8)
    assert chunked_prefill(256, 200) == (0, 0)  # decodes fill the budget
    assert chunked_prefill(16, 512, requests=1) == (1, 497)
    with pytest.raises(ValueError, match="budget must be >= 1"):
        chunked_prefill(16, 0)
