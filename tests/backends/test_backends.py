"""Every backend against a plain reference: transformers' own eager per-expert loop."""
from __future__ import annotations

import pytest
import torch

from heteromoe.device import registry
from heteromoe.routing import loads_from_topk
from heteromoe.runtime import ExpertLayer, WorkSlice
from tests.helpers import experts_module

BACKENDS = ["torch", "pim-emulator", "numba-cpu"]
LAYOUTS = ["qwen3_moe", "gpt_oss"]  # standard [E, out, in] vs transposed, interleaved gate/up, biases, clamp
TOKENS = [1, 3, 17]
EXPERTS = [1, 5, 8]


def reference(module, hidden, top_k_index, top_k_weights):
    """The module's eager loop (transformers' own plain implementation)."""
    saved = module.config._experts_implementation
    module.config._experts_implementation = "eager"
    try:
        with torch.no_grad():
            return module(hidden, top_k_index, top_k_weights)
    finally:
        module.config._experts_implementation = saved


def run_all_pairs(backend, module, hidden, top_k_index, top_k_weights):
    layer = ExpertLayer.from_module("layer", module)
    loads = loads_from_topk(top_k_index, layer.num_experts)
    experts = torch.arange(layer.num_experts).numpy()[loads.counts > 0]
    offsets = torch.zeros(len(experts) + 1, dtype=torch.int64).numpy()
    offsets[1:] = loads.counts[experts].cumsum()
    work = WorkSlice(experts=experts, offsets=offsets, pair_index=loads.order, top_k=top_k_index.shape[1])
    out_dtype = torch.promote_types(hidden.dtype, top_k_weights.dtype)
    pairs = torch.zeros(hidden.shape[0] * top_k_index.shape[1], hidden.shape[1], dtype=out_dtype)
    if not work.is_empty():
        with torch.no_grad():
            pairs[torch.from_numpy(work.pair_index)] = backend.run_experts(layer, hidden, top_k_weights, work)
    return pairs.view(hidden.shape[0], top_k_index.shape[1], hidden.shape[1]).sum(1).to(hidden.dtype)


def routing(tokens: int, num_experts: int, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(num_experts, generator=g)[:k] for _ in range(tokens)]) if tokens else \
        torch.zeros(0, k, dtype=torch.int64)
    weights = torch.rand(tokens, k, generator=g)
    return idx, weights


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("num_experts", EXPERTS)
def test_backend_matches_eager_loop(backend_name, layout, tokens, num_experts):
    backend = registry.get(backend_name)
    module = experts_module(layout, num_experts=num_experts)
    k = min(2, num_experts)
    hidden = torch.randn(tokens, 32, generator=torch.Generator().manual_seed(tokens))
    idx, w = routing(tokens, num_experts, k, seed=tokens + num_experts)
    torch.testing.assert_close(run_all_pairs(backend, module, hidden, idx, w), reference(module, hidden, idx, w),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_backend_edge_cases(backend_name):
    backend = registry.get(backend_name)
    module = experts_module("qwen3_moe", num_experts=8)
    # no tokens
    empty = run_all_pairs(backend, module, torch.zeros(0, 32), torch.zeros(0, 2, dtype=torch.int64), torch.zeros(0, 2))
    assert empty.shape == (0, 32)
    # all tokens on one expert (k = 1)
    hidden = torch.randn(9, 32)
    idx, w = torch.full((9, 1), 5), torch.rand(9, 1)
    torch.testing.assert_close(run_all_pairs(backend, module, hidden, idx, w), reference(module, hidden, idx, w),
                               rtol=1e-5, atol=1e-5)


def test_numba_refuses_bf16_with_reason():
    backend = registry.get("numba-cpu")
    ok, reason = backend.supports(ExpertLayer.from_module("l", experts_module("qwen3_moe", dtype=torch.bfloat16)))
    assert not ok and "bfloat16" in reason


def test_pim_emulator_estimates_from_cost_model():
    import numpy as np

    import heteromoe
    from heteromoe.cost import CostModel

    cost = CostModel(heteromoe.systems.get("h100-hbm3-pim"), heteromoe.models.get("qwen3-30b-a3b"))
    tokens = np.zeros(128, dtype=np.int64)
    tokens[:4] = [1, 1, 2, 3]
    assert registry.get("pim-emulator").estimate_time(cost, tokens) == pytest.approx(cost.pim.times_s(tokens).sum())
    assert registry.get("torch").estimate_time(cost, tokens) == pytest.approx(cost.gpu.time_s(tokens))


def test_torch_backend_uses_grouped_gemm_and_falls_back(monkeypatch):
    from heteromoe_backends.torch_backend import TorchBackend

    module = experts_module("qwen3_moe", num_experts=8)
    hidden = torch.randn(11, 32, generator=torch.Generator().manual_seed(3))
    idx, w = routing(11, 8, 2, seed=3)
    ref = reference(module, hidden, idx, w)
    grouped = TorchBackend()
    torch.testing.assert_close(run_all_pairs(grouped, module, hidden, idx, w), ref, rtol=1e-5, atol=1e-5)
    assert not grouped._grouped_failed  # the grouped path ran

    def no_kernel(*args, **kwargs):
        raise RuntimeError("grouped_mm: no kernel for this dtype")

    monkeypatch.setattr(torch.nn.functional, "grouped_mm", no_kernel)
    looped = TorchBackend()
    torch.testing.assert_close(run_all_pairs(looped, module, hidden, idx, w), ref, rtol=1e-5, atol=1e-5)
    assert looped._grouped_failed  # fell back to one matmul per expert, same numbers
