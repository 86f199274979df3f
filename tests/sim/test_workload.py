"""Trace replay: the shared formats, our own captures, and clear errors for mismatches."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import heteromoe
from heteromoe.routing import load_trace
from heteromoe.sim import StepSimulator, TraceWorkload, sweep

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "traces"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared traces not found at {SHARED}")


def spec_for(trace, layers):
    return heteromoe.MoEModelSpec(name="trace-shaped", hidden_size=2048, moe_intermediate_size=768,
                                  num_experts=trace.num_experts, top_k=trace.top_k, num_layers=layers,
                                  num_attention_heads=32, num_kv_heads=4, head_dim=128)


@needs_shared
@pytest.mark.parametrize("name,experts,k,layers", [
    ("DynaNDE-Simulator", 64, 6, 8), ("cerebras-assesment2", 64, 8, 1), ("vllm-expert-profiler", 60, 4, 1),
    ("vllm_moe_routelogging_patch", 60, 4, 1), ("ExperimentsForMoE", 64, 1, 12)])
def test_shared_traces_load_and_replay(name, experts, k, layers):
    trace = load_trace(SHARED / name)
    assert (trace.num_experts, trace.top_k, trace.num_layers) == (experts, k, layers)
    spec = spec_for(trace, max(layers, 4))
    steps = TraceWorkload(trace, spec).steps(16, 2)
    assert steps.shape == (2, spec.num_moe_layers, 16, k)
    result = StepSimulator(spec, "b200-hbm3e-pim", 2, "sieve").run(steps[0])
    assert result.step_time_s > 0


@needs_shared
def test_jsonl_warmup_rows_are_dropped():
    # the README of this log: 2,048 warm-up rows of uniform weights; 4,471 real tokens remain
    assert load_trace(SHARED / "cerebras-assesment2").num_tokens == 4471


@needs_shared
def test_mismatched_traces_are_clear_errors():
    trace = load_trace(SHARED / "DynaNDE-Simulator")
    with pytest.raises(ValueError, match="routes to 64 experts but model 'qwen3-30b-a3b' has 128"):
        TraceWorkload(trace, heteromoe.models.get("qwen3-30b-a3b"))
    with pytest.raises(ValueError, match="has 8 MoE layers; model 'trace-shaped' has 5"):
        TraceWorkload(trace, spec_for(trace, 5))
    with pytest.raises(ValueError, match="top-6 routing but model"):
        TraceWorkload(trace, heteromoe.MoEModelSpec(name="k8", hidden_size=8, moe_intermediate_size=8,
                                                    num_experts=64, top_k=8, num_layers=8))


def test_corrupt_traces_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "meta", "num_experts": 8}\n{"type": "route", "layer": 0, "topk_ids": [1, 2\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        load_trace(bad)
    bad.write_text('{"type": "meta", "num_experts": 8}\n{"type": "route", "layer": 0, "topk_ids": [1, 9]}\n')
    with pytest.raises(ValueError, match=r"expert ids outside \[0, 8\)"):
        load_trace(bad)
    bad.write_text('{"type": "meta", "num_experts": 8}\n{"type": "route", "layer": 0}\n')
    with pytest.raises(ValueError, match="line 2 is not a valid route record"):
        load_trace(bad)
    with pytest.raises(ValueError, match="unrecognised trace"):
        load_trace(tmp_path)


def test_wrapped_model_trace_round_trip(tmp_path):
    from tests.helpers import tiny_model

    model = tiny_model("qwen3_moe")
    unrecorded = heteromoe.wrap(model)
    with pytest.raises(RuntimeError, match="record_routing=True"):
        unrecorded.save_trace(tmp_path / "none.jsonl")
    unrecorded.unwrap()
    runtime = heteromoe.wrap(model, record_routing=True)
    ids = torch.randint(1, 128, (4, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    path = tmp_path / "captured.jsonl"
    lines = runtime.save_trace(path)
    runtime.unwrap()
    trace = load_trace(path)
    assert lines == 2 * (4 * 5 + 4 * 5) and trace.top_k_index.shape == (2, 40, 2)
    assert json.loads(path.read_text().splitlines()[0])["layer_names"] == [
        "model.layers.0.mlp.experts", "model.layers.1.mlp.experts"]
    spec = heteromoe.MoEModelSpec(name="tiny", hidden_size=32, moe_intermediate_size=24, num_experts=8, top_k=2,
                                  num_layers=2, num_attention_heads=4, num_kv_heads=2, head_dim=8)
    records = sweep(spec, "h100-hbm3-pim", 1, ["sieve"], [4, 8], trace=trace, steps=2)
    assert [r["batch"] for r in records] == [4, 8] and all(r["step_time_s"] > 0 for r in records)
