"""Split-K of the down projection (heteromoe.kernels.splitk and the CUDA split kernels): the rule that picks the
number of splits (CPU), and on a GPU the split kernels against the reference, the unsplit kernels and
themselves (the reduction is deterministic)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from heteromoe import kernels
from heteromoe.kernels import reference
from heteromoe.kernels.splitk import (H100_SPLIT_K, SPLIT_K_GRAIN, SplitKRule, down_warps, expected_experts,
                                      launched_splits)

gpu = pytest.mark.skipif(not (torch.cuda.is_available() and kernels.HAS_CUDA_KERNELS),
                         reason="needs a CUDA GPU and heteromoe._cuda (run `pytest -m gpu` on one)")

MIXTRAL_DOWN = dict(k_dim=14336, out_rows=4096, experts=8)  # 8 experts, d 4096, f 14336
QWEN3_DOWN = dict(k_dim=768, out_rows=2048, experts=128)  # 128 experts, d 2048, f 768


# -- the rule (CPU) ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("k_dim", [8, 256, 257, 768, 1000, 4096, 14336, 14344])
@pytest.mark.parametrize("requested", [1, 2, 3, 5, 7, 8, 64])
def test_launched_splits_cover_k_without_an_empty_split(requested, k_dim):
    splits = launched_splits(requested, k_dim)
    assert 1 <= splits <= requested
    assert splits == 1 or k_dim > (splits - 1) * SPLIT_K_GRAIN
    if requested == 1 or k_dim <= SPLIT_K_GRAIN:
        assert splits == 1
    if kernels.HAS_CUDA_KERNELS:  # the C++ launcher agrees, and its splits are whole grains, none empty
        launched, per = kernels._cuda.split_k(requested, k_dim)
        assert launched == splits and kernels._cuda.SPLIT_K_GRAIN == SPLIT_K_GRAIN
        if splits > 1:
            assert per % SPLIT_K_GRAIN == 0 and (splits - 1) * per < k_dim <= splits * per


def test_launched_splits_rejects_zero():
    with pytest.raises(ValueError, match="k_splits must be >= 1, got 0"):
        launched_splits(0, 1024)


def test_expected_experts_is_exact_for_one_token_and_grows_to_all():
    assert expected_experts(8, 2, 1) == pytest.approx(2)
    assert expected_experts(128, 8, 1) == pytest.approx(8)
    grown = [expected_experts(8, 2, t) for t in (1, 2, 4, 16, 256)]
    assert all(a < b for a, b in zip(grown, grown[1:])) and grown[-1] == pytest.approx(8)
    # against the mean over uniform random routings
    rng = np.random.default_rng(2)
    touched = [len(np.unique(np.stack([rng.choice(8, 2, replace=False) for _ in range(4)]))) for _ in range(4000)]
    assert expected_experts(8, 2, 4) == pytest.approx(np.mean(touched), abs=0.1)
    assert expected_experts(8, 2, 0) == 0.0


def test_h100_rule_splits_long_rows_of_few_experts_within_one_pass():
    """H100_SPLIT_K gives the H100 sweep's fastest S on the Mixtral-shaped layer (gpu-splitk-h100-*.json)."""
    from heteromoe.kernels.splitk import H100_SPLIT_K, expected_experts

    def mixtral(kernel, tokens):
        experts = expected_experts(8, 2, tokens)
        return H100_SPLIT_K.splits(kernel, k_dim=14336, out_rows=4096, experts=experts, tokens=tokens, sms=132,
                                      pairs=2 * tokens)

    assert [mixtral("gemv", t) for t in (1, 2, 4)] == [8, 8, 4]
    assert [mixtral("mma", t) for t in (16, 64)] == [2, 2]
    assert mixtral("mma", 256) == 1  # 64 pairs per expert: two passes, where every split launch lost
    assert H100_SPLIT_K.splits("mma", **QWEN3_DOWN, tokens=64, sms=132, pairs=512) == 1
    assert SplitKRule.from_env("h100") == H100_SPLIT_K


def test_default_rule_never_splits():
    rule = SplitKRule()
    assert not rule.splits_ever
    for kernel in ("gemv", "mma"):
        for tokens in (1, 4, 16, 256):
            assert rule.splits(kernel, **MIXTRAL_DOWN, tokens=tokens, sms=132) == 1


def test_warps_rule_splits_few_experts_with_long_rows_only():
    rule = SplitKRule(gemv_warps_per_sm=32, mma_warps_per_sm=32)
    # Mixtral on the tensor cores: 8 experts x 256 warps of 16 rows = 2048 warps, 15.5 per SM on 132 SMs
    assert down_warps("mma", 4096, 8, 64) == 2048
    assert rule.splits("mma", **MIXTRAL_DOWN, tokens=64, sms=132) == 3  # ceil(32 x 132 / 2048)
    # the GEMV's warps own 4 rows up to two tokens, 2 above: more warps, fewer splits
    assert down_warps("gemv", 4096, 2, 1) == 2048 and down_warps("gemv", 4096, 2, 4) == 4096
    assert rule.splits("gemv", **{**MIXTRAL_DOWN, "experts": 2}, tokens=1, sms=132) == 3
    assert rule.splits("gemv", **{**MIXTRAL_DOWN, "experts": 2}, tokens=4, sms=132) == 2
    # many experts, short rows: never (K 768 allows no split of 1024 elements)
    assert rule.splits("mma", **QWEN3_DOWN, tokens=64, sms=132) == 1
    assert rule.splits("gemv", **{**QWEN3_DOWN, "experts": 8}, tokens=1, sms=132) == 1
    # capped by max_splits and by K / min_k_per_split
    big = SplitKRule(gemv_warps_per_sm=1000, mma_warps_per_sm=1000)
    assert big.splits("mma", **MIXTRAL_DOWN, tokens=64, sms=132) == 8
    assert SplitKRule(mma_warps_per_sm=1000, min_k_per_split=4096).splits("mma", **MIXTRAL_DOWN, tokens=64,
                                                                           sms=132) == 3
    # each kernel its own target
    only_mma = SplitKRule(mma_warps_per_sm=32)
    assert only_mma.splits("mma", **MIXTRAL_DOWN, tokens=64, sms=132) == 3
    assert only_mma.splits("gemv", **MIXTRAL_DOWN, tokens=4, sms=132) == 1


def test_fixed_rule_is_capped_by_k():
    assert SplitKRule(fixed=4).splits("gemv", **MIXTRAL_DOWN, tokens=4, sms=132) == 4
    assert SplitKRule(fixed=4).splits("mma", **QWEN3_DOWN, tokens=4, sms=132) == 1
    assert SplitKRule(fixed=4, min_k_per_split=256).splits("mma", **QWEN3_DOWN, tokens=4, sms=132) == 3


@pytest.mark.parametrize("value, rule", [(None, H100_SPLIT_K), ("", H100_SPLIT_K), ("h100", H100_SPLIT_K),
                                         ("off", SplitKRule()),
                                         ("3", SplitKRule(fixed=3)),
                                         ("warps:24", SplitKRule(gemv_warps_per_sm=24.0, mma_warps_per_sm=24.0)),
                                         ("warps:40/12.5", SplitKRule(gemv_warps_per_sm=40.0, mma_warps_per_sm=12.5)),
                                         ("warps:40/12.5:64", SplitKRule(gemv_warps_per_sm=40.0, mma_warps_per_sm=12.5,
                                                                         mma_max_tokens_per_expert=64.0))])
def test_rule_from_the_environment_setting(value, rule):
    assert SplitKRule.from_env(value) == rule


def test_h100_rule_with_a_wider_pass_bound():
    """'h100:64': H100_SPLIT_K splitting the tensor cores' launches up to 64 pairs per expert (one pass of the
    8-tile kernel): the Mixtral-shaped layer at 256 tokens (64 pairs per touched expert) then splits in 2."""
    import dataclasses

    from heteromoe.kernels.splitk import H100_SPLIT_K

    rule = SplitKRule.from_env("h100:64")
    assert rule == dataclasses.replace(H100_SPLIT_K, mma_max_tokens_per_expert=64.0)
    mixtral_256 = dict(k_dim=14336, out_rows=4096, experts=expected_experts(8, 2, 256), tokens=256, sms=132, pairs=512)
    assert H100_SPLIT_K.splits("mma", **mixtral_256) == 1
    assert rule.splits("mma", **mixtral_256) == 2
    assert rule.splits("mma", **{**mixtral_256, "pairs": 1024}) == 1  # 128 pairs per expert: above the bound


@pytest.mark.parametrize("value", ["four", "warps:", "warps:1/2/3", "0", "h100x", "h100:abc", "3:4", "h100:-1",
                                   "h100:", "warps:30/30:", "h100:nan"])
def test_bad_settings_name_the_value(value):
    with pytest.raises(ValueError, match=repr(value) if value != "0" else "fixed must be >= 1"):
        SplitKRule.from_env(value)


@pytest.mark.parametrize("kwargs, match", [(dict(mma_warps_per_sm=-1), "mma_warps_per_sm must be >= 0, got -1"),
                                           (dict(min_k_per_split=100), "min_k_per_split must be >= 256, got 100"),
                                           (dict(max_splits=0), "max_splits must be >= 1, got 0")])
def test_rule_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SplitKRule(**kwargs)


def test_fused_path_takes_the_rule_and_never_splits_off_cuda():
    from heteromoe.runtime.fused import FusedLayerPath
    from heteromoe.runtime.layer import ExpertLayer
    from tests.helpers import tiny_model

    from heteromoe.kernels.splitk import H100_SPLIT_K
    from heteromoe.runtime.options import KernelTuning

    # the environment's override is read once (runtime.options.DEFAULT_TUNING); from_env reads a mapping
    env_path = FusedLayerPath(tuning=KernelTuning.from_env({"HETEROMOE_SPLIT_K": "4"}))
    assert env_path.tuning.split_k == SplitKRule(fixed=4)
    assert FusedLayerPath(tuning=KernelTuning.from_env({})).tuning.split_k == H100_SPLIT_K  # the default
    assert FusedLayerPath(tuning=KernelTuning.from_env({"HETEROMOE_SPLIT_K": ""})).tuning.split_k == H100_SPLIT_K
    assert FusedLayerPath(tuning=KernelTuning.from_env({"HETEROMOE_SPLIT_K": "off"})).tuning.split_k == SplitKRule()
    layer = ExpertLayer.from_module("layer0", tiny_model("qwen3_moe").model.layers[0].mlp.experts)
    path = FusedLayerPath(split_k=SplitKRule(fixed=4, min_k_per_split=256))
    assert path.down_k_splits(layer, 8, 16, torch.device("cpu"), "gemv") == 1


def test_split_arguments_are_checked_everywhere():
    """k_splits is checked on every device (off CUDA the kernels sum all of K in one pass, whatever it is)."""
    ids = np.array([[0, 1], [1, 2], [2, 0]])
    E, d, f = 3, 16, 8
    gen = torch.Generator().manual_seed(1)
    x, up = torch.randn(3, d, generator=gen), torch.randn(E, 2 * f, d, generator=gen)
    prep = kernels.route_prep(torch.from_numpy(ids), E)
    for kernel in (kernels.expert_gemv, kernels.expert_mma):
        with pytest.raises(ValueError, match="k_splits > 1 needs silu_chunk=False"):
            kernel(x, up, prep, in_pairs=prep.cold_pairs, top_k=2, out_rows=f, silu_chunk=True, max_tokens=3,
                   k_splits=2)
        with pytest.raises(ValueError, match="k_splits must be an integer >= 1, got 0"):
            kernel(x, up, prep, in_pairs=prep.cold_pairs, top_k=2, out_rows=f, silu_chunk=True, max_tokens=3,
                   k_splits=0)
    h = torch.randn(6, f, generator=gen)
    down = torch.randn(E, d, f, generator=gen)
    one = kernels.expert_gemv(h, down, prep, in_pairs=None, top_k=2, out_rows=d, silu_chunk=False, max_tokens=3)
    split = kernels.expert_gemv(h, down, prep, in_pairs=None, top_k=2, out_rows=d, silu_chunk=False, max_tokens=3,
                                k_splits=3)
    assert torch.equal(one, split)


# -- CUDA: the split kernels ------------------------------------------------------------------------------
def split_routings():
    """(name, ids, E): a decode batch (tensor cores: one 8-token tile), 12 tokens (two tiles), a bimodal batch,
    an expert of 150 tokens (several passes of the shared-memory kernel) beside cold ones, and experts of
    41 / 35 tokens (the shared-memory kernel, last tile part full)."""
    rng = np.random.default_rng(11)
    decode = np.array([[3, 0], [5, 3], [1, 0], [3, 6]])
    twelve = np.stack([rng.choice(6, 2, replace=False) for _ in range(12)])
    bimodal = np.stack([rng.choice(16, 4, replace=False, p=np.r_[np.full(2, 0.3), np.full(14, 0.4 / 14)])
                        for _ in range(37)])
    heavy = np.stack([np.r_[0, rng.choice(np.arange(1, 12), 2, replace=False)] for _ in range(150)])
    mid = np.stack([np.r_[0, 1 + (t < 35), rng.choice(np.arange(3, 12))] for t in range(41)])
    return [("decode-4", decode, 8), ("batch-12", twelve, 6), ("bimodal-37", bimodal, 16),
            ("one-expert-150", heavy, 12), ("experts-41-35", mid, 12)]


ROUTINGS = split_routings()
# (out_rows, K): K a multiple of the split grain, and K with a tail inside a split and a short last split
DIMS = [(64, 1024), (40, 1000), (72, 2312)]


def _down_case(routing, out_rows, k_dim, dtype, seed=0):
    _, ids, E = routing
    T, k = ids.shape
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(T * k, k_dim, generator=gen).to(dtype)
    down = (torch.randn(E, out_rows, k_dim, generator=gen) / 16).to(dtype)
    nothing_hot = ids.size  # no expert has more pairs: every row on the list (cold) side
    prep = reference.route_prep(torch.from_numpy(ids), E, threshold=nothing_hot)
    cprep = kernels.route_prep(torch.from_numpy(ids).cuda(), E, threshold=nothing_hot)
    ref = reference.expert_gemv(h.float(), down.float(), prep, in_pairs=None, top_k=k, out_rows=out_rows,
                                silu_chunk=False)
    rows = int(prep.meta[1])
    assert rows == T * k
    return h.cuda(), down.cuda(), cprep, ref, rows, T, k


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("dims", DIMS, ids=[f"rows{r}-k{k}" for r, k in DIMS])
@pytest.mark.parametrize("routing", ROUTINGS, ids=[r[0] for r in ROUTINGS])
@pytest.mark.parametrize("kernel", ["gemv", "mma"])
def test_split_down_projection_matches_reference(kernel, routing, dims, dtype):
    """Every split count gives the reference's rows (fp32 sums; bf16/fp16 within the dtype's rounding, fp32
    within 1e-4 relative) and the same bits on a second run; fp32 splits equal the unsplit kernel within fp32
    summation order."""
    if kernel == "mma" and dtype == torch.float32:
        pytest.skip("fp32 runs on the GEMV (expert_mma hands it over)")
    out_rows, k_dim = dims
    h, down, cprep, ref, rows, T, k = _down_case(routing, out_rows, k_dim, dtype)
    fn = kernels.expert_gemv if kernel == "gemv" else kernels.expert_mma
    max_tokens = T if kernel == "mma" else min(T, 8)
    call = dict(in_pairs=None, top_k=k, out_rows=out_rows, silu_chunk=False, max_tokens=max_tokens)
    one = fn(h, down, cprep, **call)[:rows].float().cpu()
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(one, ref[:rows], **tol)
    for splits in (2, 3, 5, 8):
        got = fn(h, down, cprep, **call, k_splits=splits)
        again = fn(h, down, cprep, **call, k_splits=splits)
        assert torch.equal(got[:rows], again[:rows]), f"split-K not deterministic at {splits} splits"
        torch.testing.assert_close(got[:rows].float().cpu(), ref[:rows], **tol, msg=f"{splits} splits")
        if dtype == torch.float32:
            torch.testing.assert_close(got[:rows].cpu(), one, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_split_hot_side_and_pair_lists(dtype):
    """The hot side's lists (hot_offs) split too; a row whose split sums are reduced is rounded once."""
    _, ids, E = ROUTINGS[3]  # one expert of 150 tokens beside cold ones
    T, k = ids.shape
    out_rows, k_dim = 48, 1536
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(T * k, k_dim, generator=gen).to(dtype)
    down = (torch.randn(E, out_rows, k_dim, generator=gen) / 16).to(dtype)
    prep = reference.route_prep(torch.from_numpy(ids), E, threshold=2)
    cprep = kernels.route_prep(torch.from_numpy(ids).cuda(), E, threshold=2)
    hot_rows = int(prep.meta[0])
    assert hot_rows >= 150
    ref = reference.expert_hot_rows(h.float(), down.float(), prep, in_pairs=None, top_k=k, out_rows=out_rows,
                                    silu_chunk=False)[:hot_rows]
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    fns = [kernels.expert_gemv] + ([kernels.expert_mma] if dtype != torch.float32 else [])
    for fn in fns:
        for splits in (1, 4):
            got = fn(h.cuda(), down.cuda(), cprep, in_pairs=None, top_k=k, out_rows=out_rows, silu_chunk=False,
                     max_tokens=T, side="hot", k_splits=splits)
            torch.testing.assert_close(got[:hot_rows].float().cpu(), ref, **tol, msg=f"{fn.__name__} {splits}")


def reference_layer(layer, hidden, ids, weights):
    """The layer in fp64, token by token: sum over slots of w * down_e(silu(gate_e x) * up_e x)."""
    up, down = layer.up_weight.double(), layer.down_weight.double()
    f = down.shape[2]
    out = torch.zeros(hidden.shape, dtype=torch.float64, device=hidden.device)
    for t in range(hidden.shape[0]):
        for s in range(ids.shape[1]):
            e = int(ids[t, s])
            gu = up[e] @ hidden[t].double()
            out[t] += float(weights[t, s]) * (down[e] @ (torch.nn.functional.silu(gu[:f]) * gu[f:]))
    return out


LAYER_CASES = [(torch.bfloat16, b) for b in (1, 3, 4, 20, 70)] + [(torch.float32, b) for b in (1, 3, 4)]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype, batch", LAYER_CASES, ids=[f"{str(d)[6:]}-{b}" for d, b in LAYER_CASES])
def test_layer_with_split_down_projection_matches_the_module(batch, dtype):
    """gpu-only through gemv_layer (one token's tail, the GEMV up to 4 tokens, the tensor-core kernels above)
    with the down projection split: the fp64 reference within bf16's tolerance (fp32: 1e-4 relative, and of
    the unsplit path); the same bits on every call and in a CUDA graph."""
    from heteromoe.calibrate import expert_layer
    from heteromoe.runtime.fused import FusedLayerPath
    from heteromoe.runtime.layer import ExpertLayer

    E, k, d, f = 8, 2, 256, 4360  # f: above the one-token combine's 4096, 17 grains and a tail of 8
    module = expert_layer(E, k, d, f, dtype=dtype, seed=batch)
    layer = ExpertLayer.from_module("layer0", module)
    gen = torch.Generator("cuda").manual_seed(batch)
    hidden = torch.randn(batch, d, device="cuda", dtype=dtype, generator=gen)
    ids = torch.stack([torch.randperm(E, device="cuda", generator=gen)[:k] for _ in range(batch)])
    weights = torch.softmax(torch.randn(batch, k, device="cuda", generator=gen), -1).to(dtype)
    plain = FusedLayerPath(mma_min_warps_per_sm=0)
    with torch.no_grad():
        ref = reference_layer(layer, hidden, ids, weights).to(dtype)
        base = plain.run(layer, hidden, ids, weights)
        for splits in (2, 3, 4):
            path = FusedLayerPath(mma_min_warps_per_sm=0, split_k=SplitKRule(fixed=splits, min_k_per_split=256))
            assert path.down_k_splits(layer, batch, batch * k, hidden.device, "gemv") == splits
            out = path.run(layer, hidden, ids, weights)
            assert torch.equal(out, path.run(layer, hidden, ids, weights))
            if dtype == torch.float32:
                torch.testing.assert_close(out, base, rtol=1e-4, atol=1e-4 * base.abs().max().item())
                torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
            else:
                torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2 * ref.abs().max().item())
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                captured = path.run(layer, hidden, ids, weights)
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(captured, out)


@pytest.mark.gpu
@gpu
def test_device_planned_call_splits_the_gpu_sets_down_projection():
    """A heteromoe-policy call planned on the device (`_cuda.plan_layer`, the GPU set on the tensor cores beside
    the PIM set's GEMV) with the GPU set's down projection split: the module's output, as unsplit."""
    import dataclasses

    import heteromoe
    from heteromoe.calibrate import expert_layer
    from heteromoe.cost.model import CostModel
    from heteromoe.device import registry
    from heteromoe.runtime.executor import MoEExecutor
    from heteromoe.runtime.fused import FusedLayerPath
    from heteromoe.runtime.layer import ExpertLayer
    from heteromoe.sched import get_policy
    from heteromoe.sched.placement import Placement

    E, k, d, f = 8, 2, 256, 1064
    module = expert_layer(E, k, d, f)
    layer = ExpertLayer.from_module("layer0", module)
    # the routing and cost model of test_device_plan_captures_in_a_cuda_graph_and_settles_stats: a plan with
    # experts on both sides
    spec = dataclasses.replace(heteromoe.models.get("qwen3-30b-a3b"), num_experts=E, top_k=k)
    cost = CostModel(heteromoe.systems.get("h100-hbm3-pim"), spec)
    placement = Placement.from_homes(np.zeros(E, dtype=np.int64), 1)
    gen = torch.Generator("cuda").manual_seed(7)
    ids = torch.stack([torch.randperm(E, device="cuda", generator=gen)[:k] for _ in range(24)])
    hidden = torch.randn(24, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    weights = torch.rand(24, k, device="cuda", generator=gen).to(torch.bfloat16)
    torch_backend = registry.get("torch")
    outs = {}
    with torch.no_grad():
        for splits in (1, 3):
            fused = FusedLayerPath(mma_min_warps_per_sm=0, split_k=SplitKRule(fixed=splits, min_k_per_split=256))
            executor = MoEExecutor(get_policy("heteromoe"), torch_backend, registry.get("pim-emulator"), torch_backend,
                                   fused=fused, plan_on_device=True)
            outs[splits] = executor.run(layer, cost, placement, hidden, ids, weights)
            assert executor.fused._last_ws is not None  # the one call ran
            executor.flush()
            plan = executor.last_plans["layer0"]
            assert plan.gpu_tokens.any()
            assert torch.equal(outs[splits], executor.run(layer, cost, placement, hidden, ids, weights))
        ref = module(hidden, ids, weights)
    for splits, out in outs.items():
        torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2 * ref.abs().max().item(),
                                   msg=f"{splits} splits")
