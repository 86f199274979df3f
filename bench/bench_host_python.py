"""The Python share of a layer call's host time, measured on any machine (pytest-benchmark).

Run:  python -m pytest bench/bench_host_python.py --benchmark-json bench/results/host-python-<machine>.json

On a GPU a decode layer call's host time is Python (executor, fused path) plus one C++ call that launches
the kernels (`bench/gpu_host_time.py` measures both there). This suite measures the Python part alone, on
the CPU it runs on: a Qwen3-30B-A3B-shaped bf16 layer (uninitialized weights; nothing is computed), one
token, with the CUDA entry points the path calls (`_cuda.gemv_layer` / `_cuda.plan_layer`, the stream
handle, the capture check) replaced by stubs that return at once, so what is timed is the Python code
between the caller and the C++ call: tensor checks, the workspace, the output's allocation (on the CPU
here), the one-call records, the device plan's ring and, amortized, settling the device plans' statistics
(one settle per 64 calls). Also settling alone: 64 device plans into the statistics.
"""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch

import heteromoe
from heteromoe import kernels
from heteromoe.cost.model import CostModel
from heteromoe.device import registry
from heteromoe.routing import BimodalRouting
from heteromoe.runtime import fused, plan_stats
from heteromoe.runtime.call import LayerCall
from heteromoe.runtime.executor import MoEExecutor
from heteromoe.runtime.layer import ExpertLayer
from heteromoe.runtime.report import LayerStats
from heteromoe.sched import get_policy
from heteromoe.sched.placement import Placement

MODEL = "qwen3-30b-a3b"


class _Event:  # a CUDA event's record / synchronize, which the ring of device plans calls
    def record(self) -> None:
        pass

    def synchronize(self) -> None:
        pass


def _cpu_ring(cls, num_experts: int, device: torch.device, cost: CostModel):
    rows = torch.zeros(2, plan_stats.RING_CALLS, 2, num_experts, dtype=torch.int32)
    return cls(rows, torch.zeros_like(rows), [[rows[h, i] for i in range(plan_stats.RING_CALLS)] for h in range(2)],
               [_Event(), _Event()], cost)


@pytest.fixture
def stubbed(monkeypatch):
    """A Qwen3-30B-A3B-shaped layer, one token's routing, and the CUDA entry points stubbed."""
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

    if not kernels.HAS_CUDA_KERNELS:
        pytest.skip(f"heteromoe._cuda is not built (its workspace-size functions are used): {kernels.cuda_load_error}")
    spec = heteromoe.models.get(MODEL)
    config = Qwen3MoeConfig(hidden_size=spec.hidden_size, moe_intermediate_size=spec.moe_intermediate_size,
                            num_experts=spec.num_experts, num_experts_per_tok=spec.top_k)
    with torch.device("meta"):
        module = Qwen3MoeExperts(config).to(torch.bfloat16)
    layer = ExpertLayer.from_module("layer0", module.to_empty(device="cpu"))
    real = kernels._cuda
    monkeypatch.setattr(kernels, "_cuda", types.SimpleNamespace(
        gemv_layer=lambda *args: None, plan_layer=lambda *args: None,
        gemv_layer_workspace=real.gemv_layer_workspace, plan_layer_workspace=real.plan_layer_workspace))
    monkeypatch.setattr(kernels, "_stream", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr(plan_stats.PlanRing, "allocate", classmethod(_cpu_ring))
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, layer.hidden_size, generator=gen).to(torch.bfloat16)
    ids = torch.randperm(layer.num_experts, generator=gen)[: spec.top_k][None, :]
    weights = torch.rand(1, spec.top_k, generator=gen).to(torch.bfloat16)
    return layer, hidden, ids, weights


def _path(layer: ExpertLayer, hidden: torch.Tensor, weights: torch.Tensor) -> fused.FusedLayerPath:
    """A fused path whose one-call record for this layer is made as on CUDA (the CPU tensors would not)."""
    path = fused.FusedLayerPath()
    err = torch.zeros(2, dtype=torch.int64)
    path._calls[(id(layer.module), hidden.dtype, weights.dtype, hidden.get_device())] = fused._OneCall(
        dtype=kernels._DTYPE_CODE[hidden.dtype], weights_dtype=kernels._DTYPE_CODE[weights.dtype],
        round_products=True, layer=layer, device=hidden.device, err_word=err)
    path._err_view[layer.name] = err.numpy()
    return path


def test_gpu_only_token_python(benchmark, stubbed):
    """FusedLayerPath.run, gpu-only, one token (on a GPU: the one C++ call `_cuda.gemv_layer` follows)."""
    layer, hidden, ids, weights = stubbed
    path = _path(layer, hidden, weights)
    out = benchmark(path.run, layer, hidden, ids, weights)
    assert out.shape == hidden.shape
    benchmark.extra_info["machine"] = "this CPU; CUDA entry points stubbed"


def test_device_planned_token_python(benchmark, stubbed):
    """The executor's device-planned call (policy heteromoe, h100-hbm3-pim), one token, from
    the executor's composition (device plan source, fused runner) down to the stubbed `_cuda.plan_layer`; settling every 64 calls included."""
    layer, hidden, ids, weights = stubbed
    cost = CostModel(heteromoe.systems.get("h100-hbm3-pim"), heteromoe.models.get(MODEL))
    torch_backend = registry.get("torch")
    executor = MoEExecutor(get_policy("heteromoe"), torch_backend, registry.get("pim-emulator"), torch_backend,
                           fused=_path(layer, hidden, weights), plan_on_device=True)
    placement = Placement.from_homes(np.zeros(layer.num_experts, dtype=np.int64), 1)
    # a side stream's handle, as code before commit 6b30f2b read on every device-planned call (the -before run)
    executor.fused._side[hidden.device] = types.SimpleNamespace(cuda_stream=0)
    calls = 0

    def call() -> torch.Tensor:
        nonlocal calls
        calls += 1
        roles = executor.roles  # the device plan source directly: these CPU tensors would take host plans
        return executor._compose(LayerCall(layer, cost, placement, hidden, ids, weights), roles.plans, roles.runner)

    out = benchmark(call)
    assert out.shape == hidden.shape
    executor.flush()
    assert executor.stats[layer.name].calls == calls  # every call settled once (rings of 64 over the rounds)
    benchmark.extra_info["machine"] = "this CPU; CUDA entry points stubbed"


@pytest.mark.parametrize("system", ["h100-hbm3-pim", "b200-hbm3e-pim"])
def test_settle_64_device_plans(benchmark, system):
    """64 device plans (bimodal routing, batch 1) into the statistics: what one ring's settling costs."""
    spec = heteromoe.models.get(MODEL)
    cost = CostModel(heteromoe.systems.get(system), spec)
    policy = get_policy("heteromoe")
    placement = Placement.from_homes(np.zeros(spec.num_experts, dtype=np.int64), 1)
    routing = BimodalRouting.for_model(spec, seed=0)
    counts = routing.counts(1, plan_stats.RING_CALLS)
    take = np.stack([policy.plan(c, placement, 1, cost).gpu_tokens for c in counts])
    stats = LayerStats("layer0")
    benchmark(plan_stats.settle_rows, cost, policy, take, counts, np.ones(len(counts), dtype=np.int64), stats)
    assert stats.calls % plan_stats.RING_CALLS == 0 and stats.calls > 0
