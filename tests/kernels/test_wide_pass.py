"""expert_mma's wide pass (`pass_tiles` 6, 8, 16: 48 / 64 / 128 tokens per reading of an expert's weights): the
argument checks (CPU), and on a GPU the wide kernels against the default kernels (the same sums per token, so the
same bits) and the reference, with and without split-K, through `kernels.expert_mma` and the layer paths."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from heteromoe import kernels
from heteromoe.kernels import reference
from heteromoe.kernels.splitk import SplitKRule
from heteromoe.runtime.options import KernelTuning

gpu = pytest.mark.skipif(not (torch.cuda.is_available() and kernels.HAS_CUDA_KERNELS),
                         reason="needs a CUDA GPU and heteromoe._cuda (run `pytest -m gpu` on one)")


# -- the argument (CPU) -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [5, 32, -1, True])
def test_pass_tiles_are_checked_everywhere(bad):
    ids = np.array([[0, 1], [1, 2], [2, 0]])
    gen = torch.Generator().manual_seed(1)
    x, up = torch.randn(3, 16, generator=gen), torch.randn(3, 16, 16, generator=gen)
    prep = kernels.route_prep(torch.from_numpy(ids), 3)
    message = rf"pass_tiles must be one of \(0, 4, 6, 8, 16\) \(0: the default\), got {bad!r}"
    with pytest.raises(ValueError, match=message):
        kernels.expert_mma(x, up, prep, in_pairs=prep.cold_pairs, top_k=2, out_rows=8, silu_chunk=True, max_tokens=3,
                           pass_tiles=bad)
    with pytest.raises(ValueError, match="pass_tiles must be one of"):
        KernelTuning(mma_pass_tiles=bad)


def test_off_cuda_the_pass_changes_nothing():
    ids = np.array([[0, 1], [1, 2], [2, 0]])
    gen = torch.Generator().manual_seed(2)
    x, up = torch.randn(3, 16, generator=gen), torch.randn(3, 16, 16, generator=gen)
    prep = kernels.route_prep(torch.from_numpy(ids), 3)
    call = dict(in_pairs=prep.cold_pairs, top_k=2, out_rows=8, silu_chunk=True, max_tokens=3)
    assert torch.equal(kernels.expert_mma(x, up, prep, **call), kernels.expert_mma(x, up, prep, **call, pass_tiles=8))


def test_fused_path_passes_the_choice_only_when_set():
    from heteromoe.runtime.fused import FusedLayerPath

    assert FusedLayerPath(mma_pass_tiles=0)._mma_pass(2048, 128) == {}
    assert FusedLayerPath(mma_pass_tiles=8)._mma_pass(64, 128) == {"mma_pass_tiles": 8}
    assert FusedLayerPath(tuning=KernelTuning(mma_pass_tiles=6))._mma_pass(8, 128) == {"mma_pass_tiles": 6}


def test_the_default_pass_follows_the_measured_rule():
    """None (the default): the 48-token pass from 16 routed pairs per expert on, the 32-token one below."""
    from heteromoe.runtime.fused import FusedLayerPath
    from heteromoe.runtime.options import WIDE_PASS_PAIRS_PER_EXPERT, WIDE_PASS_TILES

    tuning = KernelTuning()
    assert tuning.mma_pass_tiles is None and (WIDE_PASS_TILES, WIDE_PASS_PAIRS_PER_EXPERT) == (6, 16)
    assert tuning.pass_tiles(256 * 8, 128) == 6 and tuning.pass_tiles(128 * 8, 128) == 0  # Qwen3 at 256 / 128
    assert tuning.pass_tiles(64 * 2, 8) == 6 and tuning.pass_tiles(16 * 2, 8) == 0        # Mixtral at 64 / 16
    assert FusedLayerPath()._mma_pass(2048, 128) == {"mma_pass_tiles": 6}
    assert FusedLayerPath()._mma_pass(1024, 128) == {}


@pytest.mark.skipif(not kernels.HAS_CUDA_KERNELS, reason="heteromoe._cuda is not built")
def test_cuda_entry_point_checks_the_pass():
    """The C++ entry point names a bad width before it launches anything (no GPU needed: nothing to launch)."""
    args = dict(dtype=kernels._cuda.BF16, x=0, in_pairs=0, top_k=1, weight=0, list_expert=0, list_begin=0,
                list_count=0, offs=0, lists=0, rows=0, out_rows=8, k_dim=16, silu_chunk=False, max_tokens=64,
                lists_ready=False, out=0, stream=0)
    with pytest.raises(ValueError, match="pass_tiles must be 0 \\(the default\\), 4, 6, 8 or 16, got 5"):
        kernels._cuda.expert_mma(**args, pass_tiles=5)
    for tiles in kernels.MMA_PASS_TILES:
        kernels._cuda.expert_mma(**args, pass_tiles=tiles)  # no lists: no launch


# -- CUDA: the wide kernels -----------------------------------------------------------------------------------
def wide_routings():
    """(name, ids, E): experts of 41 / 35 tokens (one pass of any width, the last tile part full); of 97 tokens
    (one 128-token pass, two of 64, three of 48) beside cold ones; of 150 tokens (two 128-token passes, three of
    64, four of 48)."""
    rng = np.random.default_rng(5)
    mid = np.stack([np.r_[0, 1 + (t < 35), rng.choice(np.arange(3, 12))] for t in range(41)])
    two = np.stack([np.r_[0, rng.choice(np.arange(1, 8), 2, replace=False)] for _ in range(97)])
    three = np.stack([np.r_[0, rng.choice(np.arange(1, 12), 2, replace=False)] for _ in range(150)])
    return [("experts-41-35", mid, 12), ("one-expert-97", two, 8), ("one-expert-150", three, 12)]


ROUTINGS = wide_routings()


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tiles", [6, 8, 16])
@pytest.mark.parametrize("routing", ROUTINGS, ids=[r[0] for r in ROUTINGS])
def test_wide_pass_matches_the_default_kernel_and_the_reference(routing, tiles, dtype):
    """Both projections (the SiLU-gated up one, the down one unsplit and split in 3), cold and hot lists: the
    default kernel's bits (the same fp32 sums per token in the same K order) and the reference's rows."""
    _, ids, E = routing
    T, k = ids.shape
    d, f = 72, 1032  # rows not a multiple of a block's; K with a tail of 8, and 3 splits of the down projection
    gen = torch.Generator().manual_seed(tiles)
    x = torch.randn(T, d, generator=gen).to(dtype)
    up = (torch.randn(E, 2 * f, d, generator=gen) / 8).to(dtype)
    down = (torch.randn(E, d, f, generator=gen) / 16).to(dtype)
    tol = dict(rtol=2e-2, atol=2e-2)
    for threshold in (0, 2):  # everything cold; experts above 2 tokens hot
        prep = reference.route_prep(torch.from_numpy(ids), E, threshold=threshold)
        cprep = kernels.route_prep(torch.from_numpy(ids).cuda(), E, threshold=threshold)
        for side, rows, pairs, ref_fn in (("cold", int(prep.meta[1]), "cold_pairs", reference.expert_gemv),
                                          ("hot", int(prep.meta[0]), "hot_pairs", reference.expert_hot_rows)):
            if rows == 0:
                continue
            call = dict(top_k=k, max_tokens=T, side=side)
            h_ref = ref_fn(x, up, prep, in_pairs=getattr(prep, pairs), top_k=k, out_rows=f, silu_chunk=True)
            gated = [kernels.expert_mma(x.cuda(), up.cuda(), cprep, in_pairs=getattr(cprep, pairs), out_rows=f,
                                        silu_chunk=True, **call, pass_tiles=p)[:rows] for p in (0, tiles)]
            assert torch.equal(gated[0], gated[1]), f"{side}: up projection differs from the 32-token pass"
            torch.testing.assert_close(gated[1].cpu().float(), h_ref[:rows].float(), **tol)
            y_ref = ref_fn(h_ref, down, prep, in_pairs=None, top_k=k, out_rows=d, silu_chunk=False)[:rows]
            for splits in (1, 3):
                ys = [kernels.expert_mma(h_ref.cuda(), down.cuda(), cprep, in_pairs=None, out_rows=d,
                                         silu_chunk=False, **call, k_splits=splits, pass_tiles=p)[:rows]
                      for p in (0, tiles)]
                assert torch.equal(ys[0], ys[1]), f"{side}, {splits} splits: differs from the 32-token pass"
                torch.testing.assert_close(ys[1].cpu().float(), y_ref.float(), **tol, msg=f"{side} {splits}")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("tiles", [6, 8, 16])
def test_layer_paths_with_the_wide_pass_match_the_default(tiles):
    """gpu-only through `_cuda.gemv_layer` (unsplit and split in 2), the general path's hot side
    (`FusedLayerPath.run` with a GPU set) and a device-planned call (`_cuda.plan_layer`): the default pass's
    output bit for bit, also in a CUDA graph, and the module's within bf16's tolerance. 4 experts, 100 tokens:
    about 50 tokens per expert, one or two passes of 48 or 64 tokens, one of 128."""
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

    E, k, d, f, T = 4, 2, 256, 1064, 100
    module = expert_layer(E, k, d, f, seed=tiles)
    layer = ExpertLayer.from_module("layer0", module)
    gen = torch.Generator("cuda").manual_seed(tiles)
    hidden = torch.randn(T, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    ids = torch.stack([torch.randperm(E, device="cuda", generator=gen)[:k] for _ in range(T)])
    weights = torch.softmax(torch.randn(T, k, device="cuda", generator=gen), -1).to(torch.bfloat16)
    counts = np.bincount(ids.cpu().numpy().reshape(-1), minlength=E).astype(np.int32)
    assert counts.max() > 48  # two passes of 48 for the busiest expert
    with torch.no_grad():
        ref = module(hidden, ids, weights)
        for splits in (1, 2):
            rule = SplitKRule(fixed=splits, min_k_per_split=256)
            base = FusedLayerPath(mma_min_warps_per_sm=0, split_k=rule, mma_pass_tiles=0)  # the 32-token pass
            wide = FusedLayerPath(mma_min_warps_per_sm=0, split_k=rule, mma_pass_tiles=tiles)
            out = wide.run(layer, hidden, ids, weights)
            assert torch.equal(out, base.run(layer, hidden, ids, weights)), f"gemv_layer, {splits} splits"
            torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2 * ref.abs().max().item())
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                captured = wide.run(layer, hidden, ids, weights)
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(captured, out)
            hot = wide.run(layer, hidden, ids, weights, gpu_set=counts)  # the general path: hot side on expert_mma
            assert torch.equal(hot, base.run(layer, hidden, ids, weights, gpu_set=counts)), f"hot side, {splits}"
        # a device-planned heteromoe-policy call: the GPU set on the tensor cores (plan_layer)
        spec = dataclasses.replace(heteromoe.models.get("qwen3-30b-a3b"), num_experts=E, top_k=k)
        cost = CostModel(heteromoe.systems.get("h100-hbm3-pim"), spec)
        placement = Placement.from_homes(np.zeros(E, dtype=np.int64), 1)
        torch_backend = registry.get("torch")
        outs = []
        for fused in (FusedLayerPath(mma_min_warps_per_sm=0, mma_pass_tiles=0),
                      FusedLayerPath(mma_min_warps_per_sm=0, mma_pass_tiles=tiles)):
            executor = MoEExecutor(get_policy("heteromoe"), torch_backend, registry.get("pim-emulator"),
                                   torch_backend, fused=fused, plan_on_device=True)
            outs.append(executor.run(layer, cost, placement, hidden, ids, weights))
            assert executor.fused._last_ws is not None  # the one call ran
            executor.flush()
            assert executor.last_plans["layer0"].gpu_tokens.any()  # a GPU set on the tensor cores
        assert torch.equal(outs[0], outs[1]), "plan_layer"
