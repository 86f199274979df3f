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


def test_sieve_greedy_hand_case(fastpath):
    # Experts sorted by load: PIM times 5, 3, 1; each costs 1 s of GPU weight reads, no launch cost.
    # Start: all on PIM -> max = 9. Move e0: GPU 1, PIM 4 -> 4. Move e1: GPU 2, PIM 1 -> 2.
    # Move e2: GPU 3, PIM 0 -> 3, not lower than 2: stop. Two experts move.
    moved = fastpath.sieve_greedy(np.array([0, 1, 2]), np.array([0, 3]), np.ones(3), np.zeros(3),
                                  np.array([5.0, 3.0, 1.0]), np.zeros(1), np.zeros(1), 0.0, np.zeros(1))
    assert moved.tolist() == [2]


def test_sieve_greedy_comm_floor_stops_early(fastpath):
    # T_comm = 6 dominates after the first move (PIM 4 < 6): the second move does not lower max -> stop at 1.
    moved = fastpath.sieve_greedy(np.array([0, 1, 2]), np.array([0, 3]), np.ones(3), np.zeros(3),
                                  np.array([5.0, 3.0, 1.0]), np.array([6.0]), np.zeros(1), 0.0, np.zeros(1))
    assert moved.tolist() == [1]


def test_implementations_agree_bitwise():
    if len(_ext.IMPLEMENTATIONS) < 2:
        pytest.skip(f"only {list(_ext.IMPLEMENTATIONS)} available")
    rng = np.random.default_rng(7)
    for trial in range(50):
        num_gpus = int(rng.integers(1, 9))
        num_experts = int(rng.integers(num_gpus, 300))
        order = rng.permutation(num_experts)
        cuts = np.sort(rng.integers(0, num_experts + 1, size=num_gpus - 1))
        seg = np.concatenate([[0], cuts, [num_experts]]).astype(np.int64)
        args = (order, seg, rng.random(num_experts) * 1e-5, rng.random(num_experts) * 1e-5,
                rng.random(num_experts) * 1e-5, rng.random(num_gpus) * 1e-4, rng.random(num_gpus) * 1e-6, 3e-6,
                rng.random(num_gpus) * 1e-5)
        results = {name: impl.sieve_greedy(*args).tolist() for name, impl in _ext.IMPLEMENTATIONS.items()}
        assert len({tuple(r) for r in results.values()}) == 1, (trial, results)
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
