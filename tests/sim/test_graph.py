"""The dependency-driven step core: legacy figures, lane exclusivity, dependencies, token conservation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import heteromoe
from heteromoe.sched.policies.pimoe import PimoePolicy
from heteromoe.sim import StepSimulator, SyntheticWorkload
from heteromoe.sim.layer_work import split_requests
from heteromoe.sim.options import ABLATIONS, StepOptions

FIXTURE = Path(__file__).parent / "data" / "legacy_step_times.json"


def _legacy_cases():
    data = json.loads(FIXTURE.read_text())
    return data, data["cases"]


def test_legacy_mode_reproduces_the_serialized_model():
    data, cases = _legacy_cases()
    routing = {}
    worst = 0.0
    for c in cases:
        spec = (heteromoe.MoEModelSpec(**data["small_model"]) if c["model"] == "small"
                else heteromoe.models.get(c["model"]))
        key = (c["model"], c["batch"])
        if key not in routing:
            routing[key] = SyntheticWorkload(spec, seed=0).steps(c["batch"], 1)[0]
        ctx = 2048 if c["context"] == 2048 else np.arange(c["batch"]) * 37 % 4096
        policy = PimoePolicy(group_by="channel", overshoot=True) if c["policy"] == "pimoe" else c["policy"]
        sim = StepSimulator(spec, data["system"], c["gpus"], policy, ctx, record=False, options=StepOptions.legacy())
        got = sim.run(routing[key]).step_time_s
        worst = max(worst, abs(got - c["step_time_s"]) / c["step_time_s"])
    assert worst <= 1e-9


SETUPS = [("qwen3-30b-a3b", 1, 64), ("gpt-oss-120b", 4, 32), ("qwen3.5-397b-a17b", 8, 48)]


@pytest.mark.parametrize("model,gpus,batch", SETUPS)
@pytest.mark.parametrize("policy", ["sieve", "pimoe", "gpu-only"])
def test_no_lane_runs_two_operations_at_once(model, gpus, batch, policy):
    spec = heteromoe.models.get(model)
    sim = StepSimulator(spec, "b200-hbm3e-pim", gpus, policy, context=1024, prefill=(1, 16))
    result = sim.run(SyntheticWorkload(spec).steps(batch - 1 + 16, 1)[0])
    lanes: dict = {}
    for s in result.timeline.spans:
        lanes.setdefault((s.gpu, s.lane), []).append((s.start_s, s.end_s))
    for spans in lanes.values():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start >= end - 1e-15
    assert result.step_time_s == pytest.approx(max(s.end_s for s in result.timeline.spans))


def test_no_operation_starts_before_its_inputs():
    spec = heteromoe.models.get("gpt-oss-120b")
    result = StepSimulator(spec, "b200-hbm3e-pim", 4, "sieve", context=2048).run(SyntheticWorkload(spec).steps(64, 1)[0])
    assert result.sub_batches == 2
    spans = {(s.gpu, s.layer, s.sub, s.name): s for s in result.timeline.spans}
    chain = ["qkv", "attention", "o_proj+router"]
    for (g, layer, sub, name), span in spans.items():
        if name in chain[1:]:
            before = spans[g, layer, sub, chain[chain.index(name) - 1]]
            assert span.start_s >= before.end_s - 1e-15
        if name in ("experts_gpu", "experts_pim", "dispatch+combine", "shared_experts"):
            routed = max(spans[h, layer, sub, "o_proj+router"].end_s for h in range(4))
            assert span.start_s >= routed - 1e-15  # after the collective AllGather of counts
        if name == "qkv" and layer > 0:
            prev = [s.end_s for (h, lay, sb, n), s in spans.items()
                    if lay == layer - 1 and sb == sub and n in ("experts_gpu", "experts_pim", "dispatch+combine")]
            assert span.start_s >= max(prev) - 1e-15


def test_sub_batches_overlap_attention_with_experts():
    """With two sub-batches, one's attention on PIM runs while the other's experts run on the SMs."""
    spec = heteromoe.models.get("qwen3-30b-a3b")
    result = StepSimulator(spec, "b200-hbm3e-pim", 1, "sieve", context=2048).run(SyntheticWorkload(spec).steps(128, 1)[0])
    attn = [s for s in result.timeline.spans if s.name == "attention" and s.sub == 1]
    gexp = [s for s in result.timeline.spans if s.name == "experts_gpu" and s.sub == 0]
    assert any(a.start_s < e.end_s and e.start_s < a.end_s for a in attn for e in gexp if a.layer == e.layer)


@pytest.mark.parametrize("decode,gpus,subs,prefill", [(256, 8, 2, (0, 0)), (13, 4, 2, (3, 5)), (1, 1, 2, (0, 0)),
                                                      (30, 1, 3, (2, 64))])
def test_sub_batches_conserve_tokens(decode, gpus, subs, prefill):
    sub = split_requests(decode, gpus, subs, 100, prefill)
    rows = np.concatenate(sub.rows)
    assert np.array_equal(np.sort(rows), np.arange(decode + prefill[0] * prefill[1]))
    assert sub.tokens.sum() == rows.size
    assert sub.decode.sum() == decode and sub.prefill_requests.sum() == prefill[0]
    assert sub.context.sum() == pytest.approx(100 * decode)
    spec = heteromoe.models.get("qwen3-30b-a3b")
    routing = SyntheticWorkload(spec).steps(rows.size, 1)[0]
    total = np.bincount(routing[0].reshape(-1), minlength=spec.num_experts)
    split = sum(np.bincount(routing[0][r].reshape(-1), minlength=spec.num_experts) for r in sub.rows)
    assert np.array_equal(total, split)


def test_each_modeling_change_can_be_turned_off():
    full = StepOptions()
    for name in ABLATIONS:
        off = full.without(name)
        assert getattr(off, name) == getattr(StepOptions.legacy(), name) != getattr(full, name)
    with pytest.raises(ValueError, match="unknown modeling change 'nope'"):
        full.without("nope")
    with pytest.raises(ValueError, match="pim_attention must be 'bank' or 'bytes'"):
        StepOptions(pim_attention="x")
