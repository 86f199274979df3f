"""One MoE layer on a GPU: heteromoe's fused path against transformers' grouped_mm (pytest-benchmark).

Run on a GPU machine:
    python -m pytest bench/bench_gpu_layer.py --benchmark-json bench/results/gpu-layer-<gpu>.json
Qwen3-30B-A3B-shaped layer (128 experts, top-8, d 2048, f 768, bf16) and Mixtral-8x7B-shaped (8 experts,
top-2, d 4096, f 14336), bimodal routing (`routing.synth`), batch 1, 2, 4, 16, 64, 256.

Two clocks, both recorded:
  graph: device time of one layer call, the call captured in a CUDA graph and replayed 50 times between
         events (what a serving engine that graphs its decode step pays; no launch or Python cost);
  eager: wall time of one call from Python, synchronized (launches and host work included).
test_heteromoe_gpu_only_split_k sweeps split-K of the down projection (HETEROMOE_BENCH_SPLIT_K, see there;
bench/gpu_splitk.sh); test_heteromoe_gpu_only_wide_pass the tensor-core kernel's pass width with split-K
(HETEROMOE_BENCH_WIDE, see there; bench/gpu_wide_pass.sh); test_heteromoe_gpu_only_grouped what runs the hot
experts off the tensor cores (HETEROMOE_BENCH_GROUPED, see there; bench/gpu_grouped.sh).
extra_info holds the bytes of the weights the routing touches, the read bandwidth measured in the same
run (summing a 4 GiB tensor), and the share of it each path reaches. `heteromoe` (the policy with a
GPU/PIM plan) needs the counts on the host, so it has only the eager clock; its host time is recorded.
Skipped without a CUDA GPU.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SHAPES = {"qwen3-30b-a3b": (128, 8, 2048, 768), "mixtral-8x7b": (8, 2, 4096, 14336)}
BATCHES = [int(b) for b in os.environ.get("HETEROMOE_BENCH_BATCHES", "1,2,4,16,64,256").split(",")]  # a subset for A/B runs
REPLAYS = 50


@pytest.fixture(scope="module")
def bandwidth():
    from heteromoe.calibrate import read_bandwidth

    return read_bandwidth()


_LAYERS: dict = {}
executor_views: dict = {}  # model -> the ExpertLayer view of the last executor_for


def layer(model: str):
    from heteromoe.calibrate import expert_layer

    if model not in _LAYERS:
        _LAYERS.clear()
        torch.cuda.empty_cache()
        E, k, d, f = SHAPES[model]
        _LAYERS[model] = expert_layer(E, k, d, f)
    return _LAYERS[model]


def routing(model: str, batch: int):
    from heteromoe.routing import BimodalRouting

    E, k, d, f = SHAPES[model]
    gen = BimodalRouting(num_experts=E, top_k=k, hot_share=0.5, ratio=14.0, seed=batch)
    ids = torch.from_numpy(gen.decode(batch, 1, 1)[0, 0]).cuda()
    g = torch.Generator(device="cuda").manual_seed(batch)
    weights = torch.softmax(torch.randn(batch, k, device="cuda", generator=g), dim=-1).to(torch.bfloat16)
    hidden = torch.randn(batch, d, device="cuda", dtype=torch.bfloat16, generator=g)
    touched = len(np.unique(ids.cpu().numpy())) * 3 * d * f * 2
    return hidden, ids, weights, touched


def executor_for(model: str, policy: str, plan_ahead: bool = False, plan_on_device: bool = False,
                 mma_max_tokens: int = 256, split_k=None, mma_min_warps_per_sm: int | None = None,
                 mma_pass_tiles: int | None = None, grouped_gemm: str | None = None, grouped_tile=None):
    import heteromoe
    from heteromoe.cost.model import CostModel
    from heteromoe.device import registry
    from heteromoe.runtime.executor import MoEExecutor
    from heteromoe.runtime.fused import FusedLayerPath
    from heteromoe.runtime.layer import ExpertLayer
    from heteromoe.sched import get_policy
    from heteromoe.sched.placement import Placement

    E = SHAPES[model][0]
    cost = CostModel(heteromoe.systems.get("h100-hbm3-pim"), heteromoe.models.get(model))
    torch_backend = registry.get("torch")
    executor = MoEExecutor(get_policy(policy), torch_backend, registry.get("pim-emulator"), torch_backend,
                           fused=FusedLayerPath(mma_max_tokens=mma_max_tokens, split_k=split_k,
                                                mma_min_warps_per_sm=mma_min_warps_per_sm,
                                                mma_pass_tiles=mma_pass_tiles, grouped_gemm=grouped_gemm,
                                                grouped_tile=grouped_tile),
                           plan_ahead=plan_ahead, plan_on_device=plan_on_device)
    view = executor_views[model] = ExpertLayer.from_module("layer", layer(model))
    placement = Placement.from_homes(np.zeros(E, dtype=np.int64), 1)
    return lambda h, i, w: executor.run(view, cost, placement, h, i, w), executor


def record(benchmark, seconds_per_call: float, touched: int, bandwidth: float, clock: str, **extra) -> None:
    benchmark.extra_info.update(gpu=torch.cuda.get_device_name(), clock=clock, seconds_per_call=seconds_per_call,
                                touched_weight_bytes=touched, read_bandwidth_bytes_per_s=bandwidth,
                                share_of_read_bandwidth=touched / seconds_per_call / bandwidth, **extra)


def bench_graph(benchmark, fn, touched, bandwidth, **extra):
    from heteromoe.calibrate import graph_time_s

    per_call = graph_time_s(fn, replays=REPLAYS)  # captured, warmed, timed with events
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()

    def replay():
        for _ in range(REPLAYS):
            graph.replay()
        torch.cuda.synchronize()

    benchmark.pedantic(replay, rounds=10, iterations=1, warmup_rounds=1)
    record(benchmark, per_call, touched, bandwidth, "graph", wall_s_per_replay=benchmark.stats.stats.median / REPLAYS,
           **extra)


def bench_eager(benchmark, fn, touched, bandwidth, **extra):
    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    for _ in range(3):
        run()
    # host time of a call: what the CPU spends before the GPU work is queued (no sync inside the timing)
    host = []
    for _ in range(20):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        host.append(time.perf_counter() - t0)
    torch.cuda.synchronize()
    benchmark.pedantic(run, rounds=30, iterations=1)
    record(benchmark, benchmark.stats.stats.median, touched, bandwidth, "eager", host_s_per_call=float(np.median(host)),
           **extra)


def check(out, ref):
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2 * ref.abs().max().item())


@pytest.mark.parametrize("clock", ["graph", "eager"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("model", list(SHAPES))
def test_transformers_grouped_mm(benchmark, bandwidth, model, batch, clock):
    experts = layer(model)
    hidden, ids, weights, touched = routing(model, batch)
    with torch.no_grad():
        (bench_graph if clock == "graph" else bench_eager)(benchmark, lambda: experts(hidden, ids, weights), touched,
                                                           bandwidth, model=model, batch=batch, path="grouped_mm")


@pytest.mark.parametrize("hot", ["mma", "grouped_mm"])
@pytest.mark.parametrize("clock", ["graph", "eager"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("model", list(SHAPES))
def test_heteromoe_gpu_only(benchmark, bandwidth, model, batch, clock, hot):
    """gpu-only: the shipped path (`hot="mma"`: batches up to 4 tokens all on the GEMV, above every expert on the
    tensor-core kernel or, where its down projection has too few warps unsplit and Triton runs, experts above 2
    tokens on the Triton grouped GEMM beside the GEMV; the kernel is in extra_info) or, for comparison, experts
    above 2 tokens on torch's grouped_mm and the rest on the GEMV."""
    if hot == "grouped_mm" and batch <= 4:
        pytest.skip("batches up to 4 tokens run all on the GEMV either way")
    experts = layer(model)
    hidden, ids, weights, touched = routing(model, batch)
    run, executor = executor_for(model, "gpu-only", mma_max_tokens=256 if hot == "mma" else 0,
                                 grouped_gemm=None if hot == "mma" else "grouped_mm")
    path = "heteromoe gpu-only" if hot == "mma" else "heteromoe gpu-only (grouped_mm hot side)"
    kernel, splits = gpu_only_kernel(executor.fused, executor_views[model], batch, SHAPES[model][1], hidden.device)
    with torch.no_grad():
        check(run(hidden, ids, weights), experts(hidden, ids, weights))
        (bench_graph if clock == "graph" else bench_eager)(benchmark, lambda: run(hidden, ids, weights), touched,
                                                           bandwidth, model=model, batch=batch, path=path,
                                                           kernel=kernel, down_k_splits=splits)
    assert executor.generic_reasons == {}, executor.generic_reasons


def gpu_only_kernel(fused, view, batch: int, top_k: int, device: torch.device) -> tuple[str, int]:
    """The kernel a gpu-only call of `batch` tokens runs its experts on ("gemv", "mma", "grouped_mm + gemv" or
    "triton + gemv", as the fused path chooses) and the splits of its down projection."""
    if batch <= fused.tuning.gemv_batch_tokens:
        kernel = "gemv"
    elif fused.mma_ok(view, batch, batch * top_k, device):
        kernel = "mma"
    else:
        return ("triton" if fused.hot_on_triton(view, device) else "grouped_mm") + " + gemv", 1
    return kernel, fused.down_k_splits(view, batch, batch * top_k, device, kernel)


# Split-K sweep (bench/gpu_splitk.sh): HETEROMOE_BENCH_SPLIT_K="1,2,4,8" runs gpu-only once per setting, each
# a fixed number of down-projection splits (heteromoe.kernels.splitk.SplitKRule(fixed=S); "warps:W" for the
# warps-per-SM rule); unset, the test is skipped.
SPLIT_SETTINGS = [v for v in os.environ.get("HETEROMOE_BENCH_SPLIT_K", "").split(",") if v]


@pytest.mark.parametrize("setting", SPLIT_SETTINGS or ["unset"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("model", list(SHAPES))
def test_heteromoe_gpu_only_split_k(benchmark, bandwidth, model, batch, setting):
    """gpu-only (graph clock) with the down projection cut into a fixed number of K ranges (split-K); the
    splits launched and the kernel that runs the batch are in extra_info."""
    if not SPLIT_SETTINGS:
        pytest.skip("set HETEROMOE_BENCH_SPLIT_K (e.g. 1,2,4,8) to sweep split-K")
    from heteromoe.kernels.splitk import SplitKRule, down_warps, expected_experts

    rule = SplitKRule.from_env(setting)
    experts = layer(model)
    hidden, ids, weights, touched = routing(model, batch)
    run, executor = executor_for(model, "gpu-only", split_k=rule)
    fused, view = executor.fused, executor_views[model]
    E, k, d, f = SHAPES[model]
    kernel, splits = gpu_only_kernel(fused, view, batch, k, hidden.device)
    # the rule's input: the unsplit down projection's warps per SM (on the kernel S >= 2 would run, over the
    # experts a call of this batch touches under uniform routing), and the warps this routing gives
    rule_kernel = "gemv" if batch <= fused.tuning.gemv_batch_tokens else "mma"
    sms = torch.cuda.get_device_properties(hidden.device).multi_processor_count
    warps_per_sm = down_warps(rule_kernel, d, expected_experts(E, k, batch), batch) / sms
    touched_warps_per_sm = down_warps(rule_kernel, d, touched // (3 * d * f * 2), batch) / sms
    with torch.no_grad():
        check(run(hidden, ids, weights), experts(hidden, ids, weights))
        bench_graph(benchmark, lambda: run(hidden, ids, weights), touched, bandwidth, model=model, batch=batch,
                    path="heteromoe gpu-only", split_k=setting, down_k_splits=splits, kernel=kernel,
                    rule_kernel=rule_kernel, unsplit_warps_per_sm=warps_per_sm,
                    touched_unsplit_warps_per_sm=touched_warps_per_sm)
    assert executor.generic_reasons == {}, executor.generic_reasons


# Wide-pass sweep (bench/gpu_wide_pass.sh): HETEROMOE_BENCH_WIDE="default,4,6,8" runs gpu-only once per variant:
# "default" is the shipped path (the kernel mma_ok picks: the grouped GEMM + GEMV where the tensor-core kernel is
# too narrow); an integer P runs every expert on the tensor cores (mma_min_warps_per_sm=0) with passes of P tiles of 8
# tokens (KernelTuning.mma_pass_tiles; 4 is the default 32-token pass), once per split-K setting in
# HETEROMOE_BENCH_WIDE_SPLIT_K (SplitKRule.from_env values, default "1"); unset, the test is skipped.
WIDE_VARIANTS = [v for v in os.environ.get("HETEROMOE_BENCH_WIDE", "").split(",") if v]
WIDE_SPLITS = [v for v in os.environ.get("HETEROMOE_BENCH_WIDE_SPLIT_K", "1").split(",") if v]


def expert_reads(ids: torch.Tensor, num_experts: int, pass_tokens: int) -> int:
    """Readings of an expert's weights a call makes: passes of at most pass_tokens tokens over each expert."""
    counts = np.bincount(ids.cpu().numpy().reshape(-1), minlength=num_experts)
    return int(np.ceil(counts / pass_tokens).sum())


@pytest.mark.parametrize("split", WIDE_SPLITS)
@pytest.mark.parametrize("variant", WIDE_VARIANTS or ["unset"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("model", list(SHAPES))
def test_heteromoe_gpu_only_wide_pass(benchmark, bandwidth, model, batch, variant, split):
    """gpu-only (graph clock) with the tensor-core kernel's pass `variant` tiles wide and the down projection
    split by `split`; the kernel, the splits launched and the readings of expert weights are in extra_info."""
    if not WIDE_VARIANTS:
        pytest.skip("set HETEROMOE_BENCH_WIDE (e.g. default,4,6,8) to sweep the pass width")
    if variant == "default" and split != WIDE_SPLITS[0]:
        pytest.skip("the default path is measured once (its own split rule)")
    from heteromoe.kernels.splitk import SplitKRule

    experts = layer(model)
    hidden, ids, weights, touched = routing(model, batch)
    if variant == "default":
        run, executor = executor_for(model, "gpu-only")
        tiles = executor.fused.tuning.pass_tiles(batch * SHAPES[model][1], SHAPES[model][0])  # the default's rule
    else:
        tiles = int(variant)
        run, executor = executor_for(model, "gpu-only", split_k=SplitKRule.from_env(split), mma_min_warps_per_sm=0,
                                     mma_pass_tiles=tiles)
    fused, view = executor.fused, executor_views[model]
    E, k, d, f = SHAPES[model]
    kernel, splits = gpu_only_kernel(fused, view, batch, k, hidden.device)
    # tokens per reading of an expert's weights on the tensor cores: the wide pass above 32 tokens, else one pass
    # of 32 (the shared-memory kernel) or of the whole batch (up to 16 tokens)
    pass_tokens = 8 * tiles if tiles > 4 and batch > 32 else 32 if batch >= 17 else batch
    with torch.no_grad():
        check(run(hidden, ids, weights), experts(hidden, ids, weights))
        bench_graph(benchmark, lambda: run(hidden, ids, weights), touched, bandwidth, model=model, batch=batch,
                    path="heteromoe gpu-only", wide_variant=variant, pass_tiles=tiles,
                    split_k=split if variant != "default" else "default", down_k_splits=splits, kernel=kernel,
                    expert_reads=expert_reads(ids, E, pass_tokens) if kernel == "mma" else None,
                    touched_experts=touched // (3 * d * f * 2))
    assert executor.generic_reasons == {}, executor.generic_reasons


GROUPED_VARIANTS = [v for v in os.environ.get("HETEROMOE_BENCH_GROUPED", "").split(",") if v]


@pytest.mark.parametrize("variant", GROUPED_VARIANTS or ["unset"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("model", list(SHAPES))
def test_heteromoe_gpu_only_grouped(benchmark, bandwidth, model, batch, variant):
    """gpu-only (graph clock) with the hot experts (above gemv_max_tokens tokens) on `variant`, the tensor-core
    kernel off (mma_max_tokens=0): "grouped_mm" (torch's, after gather_rows, the gate apart), "triton" (the Triton
    grouped GEMM, its tile chosen by tokens per expert) or "triton:<tile>" (e.g. triton:128x64x64w8s4t);
    "default" is the shipped path (its own kernel choice)."""
    if not GROUPED_VARIANTS:
        pytest.skip("set HETEROMOE_BENCH_GROUPED (e.g. default,grouped_mm,triton) to sweep the hot side's GEMM")
    from heteromoe.kernels.grouped_triton import GroupedTile

    experts = layer(model)
    hidden, ids, weights, touched = routing(model, batch)
    gemm, _, tile = variant.partition(":")
    if variant == "default":
        run, executor = executor_for(model, "gpu-only")
    else:
        run, executor = executor_for(model, "gpu-only", mma_max_tokens=0, grouped_gemm=gemm,
                                     grouped_tile=GroupedTile.parse(tile) if tile else None)
    fused, view = executor.fused, executor_views[model]
    E, k, d, f = SHAPES[model]
    kernel, splits = gpu_only_kernel(fused, view, batch, k, hidden.device)
    counts = np.bincount(ids.cpu().numpy().reshape(-1), minlength=E)
    with torch.no_grad():
        check(run(hidden, ids, weights), experts(hidden, ids, weights))
        bench_graph(benchmark, lambda: run(hidden, ids, weights), touched, bandwidth, model=model, batch=batch,
                    path="heteromoe gpu-only", grouped_variant=variant, kernel=kernel, down_k_splits=splits,
                    hot_experts=int((counts > fused.tuning.gemv_max_tokens).sum()), max_expert_tokens=int(counts.max()),
                    touched_experts=touched // (3 * d * f * 2))
    assert executor.generic_reasons == {}, executor.generic_reasons
    assert fused.triton_fallbacks == 0, "the Triton kernel did not run"


MODES = [("host", "eager"), ("plan-ahead", "eager"), ("device", "eager"), ("device", "graph")]


@pytest.mark.parametrize("mode", MODES, ids=[f"{m}-{c}" for m, c in MODES])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("model", list(SHAPES))
def test_heteromoe_policy_with_pim_split(benchmark, bandwidth, model, batch, mode):
    """The `heteromoe` policy: GPU share on the grouped GEMM, the PIM set on the GEMV kernel on a second
    stream (GPU-emulated PIM: the time is this GPU's, not HBM-PIM's). The plan is made on the host from this
    call's counts after a device-to-host copy (host), from the previous call's counts without waiting
    (plan-ahead), or inside the routing kernel (device; the only one a CUDA graph can capture)."""
    planning, clock = mode
    experts = layer(model)
    hidden, ids, weights, touched = routing(model, batch)
    run, executor = executor_for(model, "heteromoe", plan_ahead=planning == "plan-ahead",
                                 plan_on_device=planning == "device")
    with torch.no_grad():
        check(run(hidden, ids, weights), experts(hidden, ids, weights))
        check(run(hidden, ids, weights), experts(hidden, ids, weights))  # plan-ahead: now from the last counts
        executor.flush()
        plan = executor.last_plans["layer"]
        extra = dict(model=model, batch=batch, path=f"heteromoe policy {planning}",
                     pim_experts=int(plan.pim_experts.size), gpu_experts=int(plan.gpu_experts.size))
        (bench_graph if clock == "graph" else bench_eager)(benchmark, lambda: run(hidden, ids, weights), touched,
                                                           bandwidth, **extra)
    assert executor.generic_reasons == {}, executor.generic_reasons
