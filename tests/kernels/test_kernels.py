"""The MoE layer kernels: C++, numba and python twins (and the CUDA kernels on a GPU) against the plain
torch reference, including empty experts, one token and all tokens on one expert."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from heteromoe import kernels
from heteromoe.kernels import reference

CPU_IMPLS = ["c", "numba", "python"]
PREP_FIELDS = ("counts", "hot_offs", "hot_pairs", "cold_pairs", "cold_expert", "cold_begin", "cold_count",
               "pair_row", "meta")
gpu = pytest.mark.skipif(not (torch.cuda.is_available() and kernels.HAS_CUDA_KERNELS),
                         reason="needs a CUDA GPU and heteromoe._cuda (run `pytest -m gpu` on one)")


def cpu_impl(name):
    if name not in kernels.CPU_IMPLEMENTATIONS:
        pytest.skip(f"CPU kernels {name!r} are not built here")
    return kernels.CPU_IMPLEMENTATIONS[name]


def routings():
    """(name, top_k_index [T, k], E): decode and prefill shapes, edge cases."""
    rng = np.random.default_rng(0)
    bimodal = np.stack([rng.choice(16, 4, replace=False, p=np.r_[np.full(2, 0.3), np.full(14, 0.4 / 14)])
                        for _ in range(37)])
    return [
        ("one-token", np.array([[3, 0, 7, 5]]), 8),
        ("empty-experts", np.array([[1, 2], [2, 1], [1, 2]]), 6),
        ("all-on-one-expert", np.full((9, 1), 4), 5),
        ("bimodal", bimodal, 16),
        ("no-tokens", np.zeros((0, 2), dtype=np.int64), 4),
    ]


ROUTINGS = routings()
SPLITS = [("threshold-0", None, 0), ("threshold-2", None, 2), ("take-half", "half", 0)]


def take_for(ids, num_experts, mode):
    if mode != "half":
        return None
    counts = np.bincount(ids.reshape(-1), minlength=num_experts)
    return (counts // 2).astype(np.int32)


def as_numpy(prep) -> dict:
    return {f: np.asarray(getattr(prep, f).cpu()) if hasattr(prep, f) else np.asarray(prep[f]) for f in PREP_FIELDS}


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("split", SPLITS, ids=[s[0] for s in SPLITS])
@pytest.mark.parametrize("routing", ROUTINGS, ids=[r[0] for r in ROUTINGS])
def test_route_prep_matches_reference(impl, split, routing):
    _, ids, E = routing
    _, mode, threshold = split
    take = take_for(ids, E, mode)
    ref = as_numpy(reference.route_prep(torch.from_numpy(ids), E, take_hot=take, threshold=threshold))
    got = cpu_impl(impl).route_prep(ids.reshape(-1), E, take, threshold, min(E, ids.size))
    for f in PREP_FIELDS:
        np.testing.assert_array_equal(np.asarray(got[f]), ref[f], err_msg=f)
    # every pair exactly once, stable inside each expert
    n = ids.size
    rows = ref["pair_row"]
    assert sorted(rows.tolist()) == sorted(set(rows.tolist())) and (rows >= 0).all()
    hot = ref["hot_pairs"][: ref["meta"][0]]
    assert (np.diff(ids.reshape(-1)[hot]) >= 0).all()
    assert ref["meta"][0] + ref["meta"][1] == n


def test_route_prep_reports_the_first_bad_id():
    ids = np.array([[0, 1], [9, 2], [-1, 0]])
    ref = reference.route_prep(torch.from_numpy(ids), 4)
    assert int(ref.meta[3]) == 3  # pair 2 (1-based)
    for impl in kernels.CPU_IMPLEMENTATIONS.values():
        assert int(np.asarray(impl.route_prep(ids.reshape(-1), 4, None, 0, 4)["meta"])[3]) == 3


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("routing", ROUTINGS, ids=[r[0] for r in ROUTINGS])
def test_gather_gemv_unpermute_match_reference(impl, routing):
    _, ids, E = routing
    kern = cpu_impl(impl)
    T, k = ids.shape
    d, f = 16, 8
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(T, d, generator=gen)
    up = torch.randn(E, 2 * f, d, generator=gen)
    down = torch.randn(E, d, f, generator=gen)
    w = torch.rand(T, k, generator=gen)
    prep = reference.route_prep(torch.from_numpy(ids), E, threshold=1)
    # permute
    got = np.asarray(kern.gather_rows(x.numpy(), prep.hot_pairs.numpy(), k))
    np.testing.assert_array_equal(got, reference.gather_rows(x, prep.hot_pairs, k).numpy())
    # GEMV with the fused SiLU gate, then the down projection
    h_ref = reference.expert_gemv(x, up, prep, in_pairs=prep.cold_pairs, top_k=k, out_rows=f, silu_chunk=True)
    args = (prep.cold_expert.numpy(), prep.cold_begin.numpy(), prep.cold_count.numpy())
    h = np.asarray(kern.expert_gemv(x.numpy(), prep.cold_pairs.numpy(), k, up.numpy(), *args, f, True, T * k))
    np.testing.assert_allclose(h, h_ref.numpy(), rtol=1e-5, atol=1e-5)
    y_ref = reference.expert_gemv(h_ref, down, prep, in_pairs=None, top_k=k, out_rows=d, silu_chunk=False)
    y = np.asarray(kern.expert_gemv(h_ref.numpy(), None, k, down.numpy(), *args, d, False, T * k))
    np.testing.assert_allclose(y, y_ref.numpy(), rtol=1e-5, atol=1e-5)
    # unpermute: bit-identical (same fp32 sums in slot order)
    y_hot = torch.randn(T * k, d, generator=gen)
    out = np.asarray(kern.unpermute(y_hot.numpy(), y_ref.numpy(), prep.pair_row.numpy(), w.reshape(-1).numpy(), T, k))
    np.testing.assert_array_equal(out, reference.unpermute(y_hot, y_ref, prep.pair_row, w, round_products=False).numpy())


def test_cpu_twins_agree_bit_for_bit_on_the_gemv():
    """C++ and numba sum the GEMV in the same order: equal bits, not only close."""
    if not {"c", "numba"} <= set(kernels.CPU_IMPLEMENTATIONS):
        pytest.skip("needs both the C++ extension and numba")
    ids = ROUTINGS[3][1]
    E, T, k, d, f = 16, ids.shape[0], ids.shape[1], 32, 24
    gen = torch.Generator().manual_seed(2)
    x, up = torch.randn(T, d, generator=gen), torch.randn(E, 2 * f, d, generator=gen)
    prep = reference.route_prep(torch.from_numpy(ids), E, threshold=3)
    args = (x.numpy(), prep.cold_pairs.numpy(), k, up.numpy(), prep.cold_expert.numpy(), prep.cold_begin.numpy(),
            prep.cold_count.numpy(), f, True, T * k)
    c, nb = (np.asarray(kernels.CPU_IMPLEMENTATIONS[n].expert_gemv(*args)) for n in ("c", "numba"))
    np.testing.assert_array_equal(c, nb)


def test_histogram_all_implementations():
    ids = torch.tensor([[0, 3], [3, 3], [1, 0]])
    expected = np.array([2, 1, 0, 3, 0])
    np.testing.assert_array_equal(kernels.expert_histogram(ids, 5).numpy(), expected)
    np.testing.assert_array_equal(reference.expert_histogram(ids, 5).numpy(), expected)
    for impl in kernels.CPU_IMPLEMENTATIONS.values():
        np.testing.assert_array_equal(np.asarray(impl.expert_histogram(ids.numpy().reshape(-1), 5)), expected)


def test_unknown_cpu_kernels_name_the_choice():
    with pytest.raises(ValueError, match="'fortran'"):
        kernels.cpu_kernels("fortran")


# -- CUDA: the same checks against the CPU twins and the reference --------------------------------------

@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("split", SPLITS, ids=[s[0] for s in SPLITS])
@pytest.mark.parametrize("routing", ROUTINGS, ids=[r[0] for r in ROUTINGS])
def test_cuda_route_prep_equals_cpu(split, routing):
    _, ids, E = routing
    _, mode, threshold = split
    take = take_for(ids, E, mode)
    cpu = as_numpy(kernels.route_prep(torch.from_numpy(ids), E, take_hot=take, threshold=threshold))
    cuda = as_numpy(kernels.route_prep(torch.from_numpy(ids).cuda(), E, take_hot=take, threshold=threshold))
    for f in PREP_FIELDS:
        np.testing.assert_array_equal(cuda[f], cpu[f], err_msg=f)


@pytest.mark.gpu
@gpu
def test_cuda_route_prep_large_batch_and_many_experts():
    rng = np.random.default_rng(3)
    ids = np.stack([rng.choice(512, 10, replace=False) for _ in range(700)])
    cpu = as_numpy(kernels.route_prep(torch.from_numpy(ids), 512, threshold=6))
    cuda = as_numpy(kernels.route_prep(torch.from_numpy(ids).cuda(), 512, threshold=6))
    for f in PREP_FIELDS:
        np.testing.assert_array_equal(cuda[f], cpu[f], err_msg=f)


@pytest.mark.gpu
@gpu
def test_cuda_bad_id_lands_in_pinned_memory():
    err = torch.zeros(2, dtype=torch.int64, pin_memory=True)
    kernels.route_prep(torch.tensor([[0, 1], [7, 2]], device="cuda"), 4, err_out=err)
    torch.cuda.synchronize()
    assert err.tolist() == [3, 7]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("routing", ROUTINGS[:4], ids=[r[0] for r in ROUTINGS[:4]])
def test_cuda_gather_gemv_unpermute(dtype, routing):
    _, ids, E = routing
    T, k = ids.shape
    d, f = 64, 48
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(T, d, generator=gen).to(dtype)
    up = (torch.randn(E, 2 * f, d, generator=gen) / 8).to(dtype)
    down = (torch.randn(E, d, f, generator=gen) / 8).to(dtype)
    w = torch.rand(T, k, generator=gen).to(dtype)
    prep = reference.route_prep(torch.from_numpy(ids), E, threshold=1)
    cprep = kernels.route_prep(torch.from_numpy(ids).cuda(), E, threshold=1)
    torch.testing.assert_close(kernels.gather_rows(x.cuda(), cprep.hot_pairs, k)[: int(prep.meta[0])].cpu(),
                               reference.gather_rows(x, prep.hot_pairs, k)[: int(prep.meta[0])], rtol=0, atol=0)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for max_tokens in (1, 8):
        h = kernels.expert_gemv(x.cuda(), up.cuda(), cprep, in_pairs=cprep.cold_pairs, top_k=k, out_rows=f,
                                silu_chunk=True, max_tokens=max_tokens)
        h_ref = reference.expert_gemv(x, up, prep, in_pairs=prep.cold_pairs, top_k=k, out_rows=f, silu_chunk=True)
        rows = int(prep.meta[1])
        torch.testing.assert_close(h[:rows].cpu().float(), h_ref[:rows].float(), **tol)
        y = kernels.expert_gemv(h_ref.cuda(), down.cuda(), cprep, in_pairs=None, top_k=k, out_rows=d, silu_chunk=False,
                                max_tokens=max_tokens)
        y_ref = reference.expert_gemv(h_ref, down, prep, in_pairs=None, top_k=k, out_rows=d, silu_chunk=False)
        torch.testing.assert_close(y[:rows].cpu().float(), y_ref[:rows].float(), **tol)
    # the hot side's rows on the GEMV (a decode batch's GPU set): entries found through hot_offs
    hot_rows = int(prep.meta[0])
    h = kernels.expert_gemv(x.cuda(), up.cuda(), cprep, in_pairs=cprep.hot_pairs, top_k=k, out_rows=f, silu_chunk=True,
                            max_tokens=T, side="hot")
    h_ref = reference.expert_hot_rows(x, up, prep, in_pairs=prep.hot_pairs, top_k=k, out_rows=f, silu_chunk=True)
    torch.testing.assert_close(h[:hot_rows].cpu().float(), h_ref[:hot_rows].float(), **tol)
    y = kernels.expert_gemv(h_ref.cuda(), down.cuda(), cprep, in_pairs=None, top_k=k, out_rows=d, silu_chunk=False,
                            max_tokens=T, lists_ready=True, side="hot")
    y_ref = reference.expert_hot_rows(h_ref, down, prep, in_pairs=None, top_k=k, out_rows=d, silu_chunk=False)
    torch.testing.assert_close(y[:hot_rows].cpu().float(), y_ref[:hot_rows].float(), **tol)
    y_hot = torch.randn(T * k, d, generator=gen).to(dtype)
    y_cold = torch.randn(T * k, d, generator=gen).to(dtype)
    for round_products in (False, True):
        got = kernels.unpermute(y_hot.cuda(), y_cold.cuda(), cprep.pair_row, w.cuda(), round_products=round_products)
        ref = reference.unpermute(y_hot, y_cold, prep.pair_row, w, round_products=round_products)
        assert torch.equal(got.cpu(), ref), f"unpermute differs ({dtype}, round_products={round_products})"


@pytest.mark.gpu
@gpu
def test_cuda_gemv_equals_cpu_twin_in_fp32():
    ids = ROUTINGS[3][1]
    E, T, k, d, f = 16, ids.shape[0], ids.shape[1], 256, 64
    gen = torch.Generator().manual_seed(5)
    x, up = torch.randn(T, d, generator=gen), torch.randn(E, 2 * f, d, generator=gen)
    prep = kernels.route_prep(torch.from_numpy(ids), E, threshold=3)
    cpu = kernels.expert_gemv(x, up, prep, in_pairs=prep.cold_pairs, top_k=k, out_rows=f, silu_chunk=True, max_tokens=8)
    cprep = kernels.route_prep(torch.from_numpy(ids).cuda(), E, threshold=3)
    cuda = kernels.expert_gemv(x.cuda(), up.cuda(), cprep, in_pairs=cprep.cold_pairs, top_k=k, out_rows=f,
                               silu_chunk=True, max_tokens=8)
    rows = int(prep.meta[1])
    torch.testing.assert_close(cuda[:rows].cpu(), cpu[:rows], rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("rule", ["sieve", "heteromoe"])
@pytest.mark.parametrize("batch", [1, 3, 16, 64, 256])
def test_device_planner_equals_the_host_planner(rule, batch):
    """route_prep_plan plans in the routing kernel with the C++ fast path's rule and doubles: same plan."""
    import heteromoe
    from heteromoe.cost.model import CostModel
    from heteromoe.routing import BimodalRouting
    from heteromoe.sched.placement import Placement
    from heteromoe.sched import get_policy

    spec = heteromoe.models.get("qwen3-30b-a3b")
    for system, gpu_model in (("h100-hbm3-pim", None), ("h100-hbm3-pim", "roofline"), ("b200-hbm3e-pim", None)):
        cost = CostModel(heteromoe.systems.get(system), spec, gpu_model=gpu_model)
        ids = BimodalRouting(num_experts=128, top_k=8, hot_share=0.5, ratio=14.0, seed=batch).decode(batch, 1, 1)[0, 0]
        counts = np.bincount(ids.reshape(-1), minlength=128)
        placement = Placement.from_homes(np.zeros(128, dtype=np.int64), 1)
        host = get_policy(rule).plan(counts, placement, 1, cost)
        flop, pim = cost.tables(batch)
        gfix, pfix = cost.fixed_arrays(1, True)
        plan = kernels.DevicePlan(rule, torch.from_numpy(flop).cuda(), torch.from_numpy(np.asarray(pim, np.float64)).cuda(),
                                  float(cost.gpu.read_s_per_expert), float(cost.gpu.launch_s), 0.0, float(gfix[0]),
                                  float(pfix[0]))
        out = torch.empty(2, 128, dtype=torch.int32, device="cuda")
        prep = kernels.route_prep_plan(torch.from_numpy(ids).cuda(), 128, plan, plan_out=out)
        np.testing.assert_array_equal(out[0].cpu().numpy(), host.gpu_tokens, err_msg=f"{system} {gpu_model}")
        np.testing.assert_array_equal(out[1].cpu().numpy(), counts, err_msg=f"{system} {gpu_model}")
        with pytest.raises(ValueError, match=r"plan_out must be a contiguous \[2, 128\]"):
            kernels.route_prep_plan(torch.from_numpy(ids).cuda(), 128, plan, plan_out=out[0])
        assert int(prep.meta[0]) == int(host.gpu_tokens.sum()) and int(prep.meta[1]) == int(host.pim_tokens.sum())


# -- the tensor-core kernel (expert_mma) ------------------------------------------------------------------
def test_expert_mma_off_cuda_is_the_gemv_and_the_reference():
    """Where the tensor-core kernel cannot run (CPU, fp32) the call is the GEMV's (cold) or the reference's (hot,
    as the GEMV's hot side is off CUDA)."""
    ids = ROUTINGS[3][1]
    E, (T, k), d, f = 16, ids.shape, 40, 24
    gen = torch.Generator().manual_seed(6)
    x, up = torch.randn(T, d, generator=gen), torch.randn(E, 2 * f, d, generator=gen)
    prep = kernels.route_prep(torch.from_numpy(ids), E, threshold=3)
    cold = kernels.expert_mma(x, up, prep, in_pairs=prep.cold_pairs, top_k=k, out_rows=f, silu_chunk=True, max_tokens=T)
    gemv = kernels.expert_gemv(x, up, prep, in_pairs=prep.cold_pairs, top_k=k, out_rows=f, silu_chunk=True, max_tokens=T)
    assert torch.equal(cold, gemv)
    hot = kernels.expert_mma(x, up, prep, in_pairs=prep.hot_pairs, top_k=k, out_rows=f, silu_chunk=True, max_tokens=T,
                             side="hot")
    hot_rows = int(prep.meta[0])
    assert hot_rows > 0
    assert torch.equal(kernels.expert_gemv(x, up, prep, in_pairs=prep.hot_pairs, top_k=k, out_rows=f, silu_chunk=True,
                                           max_tokens=T, side="hot")[:hot_rows], hot[:hot_rows])
    # the hot rows, one expert at a time: x rows of the hot pairs times each expert's [gate; up]
    ends = prep.hot_offs.tolist()
    for e, (begin, end) in enumerate(zip([0] + ends[:-1], ends)):
        for r in range(begin, end):
            y = up[e] @ x[int(prep.hot_pairs[r]) // k]
            torch.testing.assert_close(hot[r], torch.nn.functional.silu(y[:f]) * y[f:], rtol=1e-5, atol=1e-5)
    for kernel in (kernels.expert_mma, kernels.expert_gemv):
        with pytest.raises(ValueError, match="'warm'"):
            kernel(x, up, prep, in_pairs=None, top_k=k, out_rows=f, silu_chunk=True, max_tokens=T, side="warm")


def mma_routings():
    """ROUTINGS plus an expert with 150 tokens (several passes of the kernel) next to cold ones, and experts of
    41 and 35 tokens (one pass of the shared-memory kernel, its last token tile part full) beside ones of a few."""
    rng = np.random.default_rng(7)
    heavy = np.stack([np.r_[0, rng.choice(np.arange(1, 12), 2, replace=False)] for _ in range(150)])
    mid = np.stack([np.r_[0, 1 + (t < 35), rng.choice(np.arange(3, 12))] for t in range(41)])
    return ROUTINGS[:4] + [("one-expert-150-tokens", heavy, 12), ("experts-41-35-tokens", mid, 12)]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dims", [(64, 96), (72, 40)], ids=["k32", "k8-tail"])
@pytest.mark.parametrize("routing", mma_routings(), ids=[r[0] for r in mma_routings()])
def test_cuda_mma_matches_reference(dtype, dims, routing):
    _, ids, E = routing
    T, k = ids.shape
    d, f = dims
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(T, d, generator=gen).to(dtype)
    up = (torch.randn(E, 2 * f, d, generator=gen) / 8).to(dtype)
    down = (torch.randn(E, d, f, generator=gen) / 8).to(dtype)
    tol = dict(rtol=2e-2, atol=2e-2)
    for threshold in (0, 2):  # everything cold; experts above 2 tokens hot
        prep = reference.route_prep(torch.from_numpy(ids), E, threshold=threshold)
        cprep = kernels.route_prep(torch.from_numpy(ids).cuda(), E, threshold=threshold)
        for max_tokens in sorted({T, max(1, T // 3)}):
            if max_tokens < int(np.bincount(ids.reshape(-1), minlength=E).max()):
                continue  # the contract: no expert has more than max_tokens tokens
            for side, rows, pairs, ref_fn in (("cold", int(prep.meta[1]), "cold_pairs", reference.expert_gemv),
                                              ("hot", int(prep.meta[0]), "hot_pairs", reference.expert_hot_rows)):
                h = kernels.expert_mma(x.cuda(), up.cuda(), cprep, in_pairs=getattr(cprep, pairs), top_k=k, out_rows=f,
                                       silu_chunk=True, max_tokens=max_tokens, side=side)
                h_ref = ref_fn(x, up, prep, in_pairs=getattr(prep, pairs), top_k=k, out_rows=f, silu_chunk=True)
                torch.testing.assert_close(h[:rows].cpu().float(), h_ref[:rows].float(), **tol)
                y = kernels.expert_mma(h_ref.cuda(), down.cuda(), cprep, in_pairs=None, top_k=k, out_rows=d,
                                       silu_chunk=False, max_tokens=max_tokens, side=side)
                y_ref = ref_fn(h_ref, down, prep, in_pairs=None, top_k=k, out_rows=d, silu_chunk=False)
                torch.testing.assert_close(y[:rows].cpu().float(), y_ref[:rows].float(), **tol)
