"""The fast path (heteromoe._C and its fallbacks) against plain references, and across implementations."""
from __future__ import annotations

import numpy as np
import pytest

from heteromoe import _ext

SIZES = [(1, 1, 1), (1, 8, 3), (7, 5, 2), (64, 128, 8), (33, 512, 10)]


def reference_counting_sort(ids: np.ndarray, num_experts: int):
    counts = np.array([(ids == e).sum() for e in range(num_experts)], dtype=np.int64)
    order = np.array([i for e in range(num_experts) for i in range(ids.size) if ids[i] == e], dtype=np.int64)
    return counts, order


@pytest.mark.parametrize("tokens,experts,k", SIZES)
def test_counting_sort_matches_reference(fastpath, tokens, experts, k):
    rng = np.random.default_rng(tokens * 1000 + experts)
    ids = np.stack([rng.choice(experts, size=k, replace=False) for _ in range(tokens)]).reshape(-1)
    counts, offsets, order = fastpath.counting_sort(ids, experts)
    ref_counts, ref_order = reference_counting_sort(ids, experts)
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_array_equal(order, ref_order)
    np.testing.assert_array_equal(offsets, np.concatenate([[0], np.cumsum(ref_counts)]))


def test_counting_sort_empty_and_all_on_one(fastpath):
    counts, offsets, order = fastpath.counting_sort(np.zeros(0, dtype=np.int64), 4)
    assert counts.tolist() == [0, 0, 0, 0] and order.size == 0 and offsets.tolist() == [0, 0, 0, 0, 0]
    counts, _, order = fastpath.counting_sort(np.full(9, 2, dtype=np.int64), 4)
    assert counts.tolist() == [0, 0, 9, 0] and order.tolist() == list(range(9))


@pytest.mark.parametrize("bad", [-1, 4, 99])
def test_counting_sort_rejects_out_of_range(fastpath, bad):
    with pytest.raises(ValueError, match=f"expert id {bad}"):
        fastpath.counting_sort(np.array([0, 1, bad], dtype=np.int64), 4)


def plan_args(counts, pim_per_token=1.0, read_s=1.0, comm=0.0, launch=0.0, gpus=1, home=None):
    """Toy layer: reading an expert on the GPU costs read_s, GPU compute is free, PIM costs per token."""
    counts = np.asarray(counts, dtype=np.int64)
    home = np.zeros(counts.size, dtype=np.int64) if home is None else np.asarray(home, dtype=np.int64)
    size = int(counts.max()) + 1
    return (counts, home, gpus, read_s, np.zeros(size), np.arange(size) * pim_per_token,
            np.full(gpus, comm), np.zeros(gpus), launch, np.zeros(gpus))


def test_sieve_plan_hand_case(fastpath):
    # PIM costs 1 s per token, an expert's GPU read 1 s. Sorted loads 5, 3, 1: all on PIM -> 9.
    # Move 5: GPU 1, PIM 4 -> 4. Move 3: GPU 2, PIM 1 -> 2. Move 1: GPU 3, PIM 0 -> 3, not lower: stop.
    assert fastpath.sieve_plan(*plan_args([3, 0, 5, 1]))[0].tolist() == [3, 0, 5, 0]


def test_sieve_plan_comm_floor_stops_early(fastpath):
    # T_comm = 6 dominates after the first move (PIM 4 < 6): the next move does not lower the max -> stop.
    assert fastpath.sieve_plan(*plan_args([3, 0, 5, 1], comm=6.0))[0].tolist() == [0, 0, 5, 0]


def test_best_prefix_equals_sieves_stop_for_monotone_costs(fastpath):
    # Along Sieve's order the GPU side only grows and the PIM side only shrinks, so the max is
    # quasi-convex and Sieve's first stop is the best prefix: heteromoe's prefix scan agrees.
    # Launch 5 s: all PIM 8; one move: GPU 1+5 = 6, PIM 6 -> 6; two: GPU 7, PIM 4 -> 7: stop at one.
    args = plan_args([2, 2, 2, 2], launch=5.0)
    assert fastpath.sieve_plan(*args)[0].tolist() == [2, 0, 0, 0]
    assert fastpath.heteromoe_plan(*args)[0].tolist() == [2, 0, 0, 0]


def test_heteromoe_splits_an_expert_when_the_gpu_is_compute_bound(fastpath):
    # GPU compute 1 s per token (flop_tab), no read cost; PIM 1 s per token. One expert with 10 tokens:
    # all on one side -> 10; split 5/5 -> 5.
    counts = np.array([10], dtype=np.int64)
    args = (counts, np.zeros(1, dtype=np.int64), 1, 0.0, np.arange(11, dtype=np.float64),
            np.arange(11, dtype=np.float64), np.zeros(1), np.zeros(1), 0.0, np.zeros(1))
    assert fastpath.sieve_plan(*args)[0].tolist() == [0]  # moving all 10 to the GPU does not lower the max (10)
    assert fastpath.heteromoe_plan(*args)[0].tolist() == [5]


def test_plans_per_gpu_segments(fastpath):
    # Two GPUs, each plans its own experts: GPU 0 has 5 and 3, GPU 1 has 4.
    args = plan_args([5, 4, 3], home=[0, 1, 0], gpus=2)
    assert fastpath.sieve_plan(*args)[0].tolist() == [5, 4, 3]  # GPU0: 8 -> 3 -> 2; GPU1: 4 -> 1
    assert fastpath.heteromoe_plan(*args)[0].tolist() == [5, 4, 3]


@pytest.mark.parametrize("kernel", ["sieve_plan", "heteromoe_plan"])
def test_plan_kernels_reject_bad_arguments(fastpath, kernel):
    fn = getattr(fastpath, kernel)
    with pytest.raises(ValueError, match="cost tables must cover token counts up to 9"):
        args = list(plan_args([9, 1]))
        args[4] = np.zeros(3)
        fn(*args)
    with pytest.raises(ValueError, match="expert_gpu outside"):
        fn(*plan_args([1, 1], home=[0, 3], gpus=2))


def test_implementations_agree_bitwise():
    if len(_ext.IMPLEMENTATIONS) < 2:
        pytest.skip(f"only {list(_ext.IMPLEMENTATIONS)} available")
    rng = np.random.default_rng(7)
    for trial in range(40):
        num_gpus = int(rng.integers(1, 9))
        num_experts = int(rng.integers(num_gpus, 300))
        counts = rng.poisson(rng.choice([0.3, 4.0, 30.0], size=num_experts)).astype(np.int64)
        home = rng.integers(0, num_gpus, size=num_experts)
        size = int(counts.max()) + 1
        pim_tab = np.cumsum(rng.random(size) * 1e-6)
        pim_tab[0] = 0.0
        args = (counts, home, num_gpus, rng.random() * 2e-6, np.arange(size) * rng.random() * 1e-8, pim_tab,
                rng.random(num_gpus) * 1e-5, rng.random(num_gpus) * 1e-6, 3e-6, rng.random(num_gpus) * 1e-5)
        for kernel in ("sieve_plan", "heteromoe_plan"):
            results = {name: tuple(np.concatenate([a.astype(np.float64) for a in getattr(impl, kernel)(*args)]).tolist())
                       for name, impl in _ext.IMPLEMENTATIONS.items()}
            assert len(set(results.values())) == 1, (trial, kernel, results)
        ids = rng.integers(0, num_experts, size=int(rng.integers(0, 500)))
        sorts = {name: impl.counting_sort(ids, num_experts) for name, impl in _ext.IMPLEMENTATIONS.items()}
        first = next(iter(sorts.values()))
        for other in sorts.values():
            for a, b in zip(first, other):
                np.testing.assert_array_equal(a, b)


def test_facade_reports_choice():
    assert _ext.impl.name in _ext.IMPLEMENTATIONS
    assert _ext.HAS_EXT == ("c" in _ext.IMPLEMENTATIONS)
    if not _ext.HAS_EXT:
        assert _ext.ext_load_error


def test_package_works_without_the_extension():
    """With `heteromoe._C` unimportable, the facade falls back and plans are identical."""
    import subprocess
    import sys

    code = (
        "import sys, json; sys.modules['heteromoe._C'] = None\n"
        "import numpy as np, heteromoe\nfrom heteromoe import _ext\n"
        "counts = np.arange(128) % 7\n"
        "p = heteromoe.schedule(counts, model='qwen3-30b-a3b', system='b200-hbm3e-pim')\n"
        "print(json.dumps([_ext.HAS_EXT, _ext.impl.name, p.gpu_tokens.tolist()]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    has_ext, name, gpu_tokens = __import__("json").loads(out)
    import heteromoe

    expected = heteromoe.schedule(np.arange(128) % 7, model="qwen3-30b-a3b", system="b200-hbm3e-pim").gpu_tokens
    assert has_ext is False and name in ("numba", "python")
    assert gpu_tokens == expected.tolist()


@pytest.mark.parametrize("policy", ["sieve", "heteromoe"])
def test_fast_path_times_equal_the_cost_model(policy):
    """The planners' own evaluation of their split is bit-identical to CostModel.times."""
    import heteromoe
    from heteromoe.cost import CostModel
    from heteromoe.sched import get_policy
    from heteromoe.sched.placement import contiguous_placement

    rng = np.random.default_rng(3)
    for model, gpus in (("qwen3-30b-a3b", 1), ("qwen3.5-397b-a17b", 8), ("mixtral-8x7b", 2)):
        spec = heteromoe.models.get(model)
        cost = CostModel(heteromoe.systems.get("b200-hbm3e-pim"), spec, attn_kv_bytes=1e7)
        homes = contiguous_placement(spec.num_experts, gpus)
        counts = rng.poisson(rng.choice([0.2, 5.0, 60.0], size=spec.num_experts))
        plan = get_policy(policy).plan(counts, homes, gpus, cost)
        ref = cost.times(counts, plan.gpu_tokens, plan.pim_tokens, homes, gpus)
        assert plan.per_gpu_t_gpu_s.tolist() == ref.t_gpu_s.tolist()
        assert plan.per_gpu_t_pim_s.tolist() == ref.t_pim_s.tolist()
        assert plan.per_gpu_t_comm_s.tolist() == ref.t_comm_s.tolist()


def test_route_to_replicas_agrees_across_implementations(fastpath):
    rng = np.random.default_rng(11)
    for _ in range(30):
        G = int(rng.integers(2, 9))
        E = int(rng.integers(G, 200))
        homes = np.sort(rng.integers(0, G, size=E))
        extra = [(int(e), int(g)) for e in rng.choice(E, size=min(E, 2 * G), replace=False)
                 for g in rng.choice(G, size=1) if g != homes[e]]
        phys2log = np.array(list(range(E)) + [e for e, _ in extra], dtype=np.int64)
        slot_gpu = np.concatenate([homes, np.array([g for _, g in extra], dtype=np.int64)])
        counts = rng.poisson(rng.choice([0.3, 20.0], size=E))
        out = fastpath.route_to_replicas(counts, phys2log, slot_gpu, G)
        ref = _ext.IMPLEMENTATIONS["python"].route_to_replicas(counts, phys2log, slot_gpu, G)
        assert out.tolist() == ref.tolist()
        assert np.bincount(phys2log, weights=out, minlength=E).astype(int).tolist() == counts.tolist()
    with pytest.raises(ValueError, match="slot_gpu outside"):
        fastpath.route_to_replicas(np.array([1, 1]), np.array([0, 1, 0]), np.array([0, 1, 5]), 2)


def test_bad_fastpath_value_is_one_line_naming_it(monkeypatch):
    from heteromoe.errors import UserError

    monkeypatch.setenv("HETEROMOE_FASTPATH", "cc")
    message = r"^HETEROMOE_FASTPATH='cc' is unknown; set it to one of c?.*python"
    with pytest.raises(_ext.FastPathError, match=message) as exc:
        _ext._choose()
    assert isinstance(exc.value, ImportError) and isinstance(exc.value, UserError) and "\n" not in str(exc.value)
    monkeypatch.setenv("HETEROMOE_FASTPATH", "python")
    assert _ext._choose().name == "python"
