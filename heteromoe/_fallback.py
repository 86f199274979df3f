"""Fallbacks for `heteromoe._C`: the same two functions, in numba and in plain numpy/python.

The arithmetic mirrors csrc/heteromoe_ext.cpp statement by statement (double precision, the same
summation order), so every implementation returns bit-identical results; tests compare them all.
"""
from __future__ import annotations

import numpy as np

__all__ = ["python_impl", "numba_impl", "numba_load_error"]


def _check_ids(expert_ids: np.ndarray, num_experts: int) -> None:
    if num_experts <= 0:
        raise ValueError(f"num_experts must be positive, got {num_experts}")
    if expert_ids.size:
        bad = np.flatnonzero((expert_ids < 0) | (expert_ids >= num_experts))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"expert id {int(expert_ids[i])} at pair {i} is outside [0, {num_experts})")


class python_impl:  # noqa: N801 - a namespace with the extension's function names
    """Plain numpy/python implementation (always available)."""

    name = "python"

    @staticmethod
    def counting_sort(expert_ids: np.ndarray, num_experts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Args: expert_ids [P] int64. Returns counts [E], offsets [E+1], order [P] (stable)."""
        expert_ids = np.ascontiguousarray(expert_ids, dtype=np.int64)
        _check_ids(expert_ids, num_experts)
        counts = np.bincount(expert_ids, minlength=num_experts).astype(np.int64)
        offsets = np.zeros(num_experts + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        order = np.argsort(expert_ids, kind="stable").astype(np.int64)
        return counts, offsets, order

    @staticmethod
    def sieve_greedy(order, seg, read_s, flop_s, pim_s, comm_s, gpu_other_s, launch_s, pim_fixed_s) -> np.ndarray:
        """See csrc/heteromoe_ext.cpp `sieve_greedy`. Returns moved [G] int64."""
        order = [int(x) for x in order]
        seg = [int(x) for x in seg]
        rd, fl, pm = (np.asarray(a, dtype=np.float64).tolist() for a in (read_s, flop_s, pim_s))
        cm, go, pf = (np.asarray(a, dtype=np.float64).tolist() for a in (comm_s, gpu_other_s, pim_fixed_s))
        launch_s = float(launch_s)
        moved = np.zeros(len(seg) - 1, dtype=np.int64)
        for g in range(len(seg) - 1):
            pim = pf[g]
            for i in range(seg[g], seg[g + 1]):
                pim += pm[order[i]]
            best = max(max(cm[g], go[g]), pim)
            read = flop = 0.0
            m = 0
            for i in range(seg[g], seg[g + 1]):
                e = order[i]
                n_read, n_flop = read + rd[e], flop + fl[e]
                t = max(max(cm[g], max(n_read, n_flop) + launch_s + go[g]), pim - pm[e])
                if not t < best:
                    break
                best, read, flop, pim, m = t, n_read, n_flop, pim - pm[e], m + 1
            moved[g] = m
        return moved


def _build_numba():
    import numba

    @numba.njit(cache=True)
    def _counting_sort(expert_ids, num_experts):
        n = expert_ids.shape[0]
        counts = np.zeros(num_experts, dtype=np.int64)
        for i in range(n):
            counts[expert_ids[i]] += 1
        offsets = np.zeros(num_experts + 1, dtype=np.int64)
        for e in range(num_experts):
            offsets[e + 1] = offsets[e] + counts[e]
        cursor = offsets[:-1].copy()
        order = np.empty(n, dtype=np.int64)
        for i in range(n):
            e = expert_ids[i]
            order[cursor[e]] = i
            cursor[e] += 1
        return counts, offsets, order

    @numba.njit(cache=True)
    def _sieve_greedy(order, seg, rd, fl, pm, cm, go, launch_s, pf):
        g_count = seg.shape[0] - 1
        moved = np.zeros(g_count, dtype=np.int64)
        for g in range(g_count):
            pim = pf[g]
            for i in range(seg[g], seg[g + 1]):
                pim += pm[order[i]]
            best = max(max(cm[g], go[g]), pim)
            read = 0.0
            flop = 0.0
            m = 0
            for i in range(seg[g], seg[g + 1]):
                e = order[i]
                n_read = read + rd[e]
                n_flop = flop + fl[e]
                t_gpu = max(n_read, n_flop) + launch_s + go[g]
                n_pim = pim - pm[e]
                t = max(max(cm[g], t_gpu), n_pim)
                if not t < best:
                    break
                best = t
                read = n_read
                flop = n_flop
                pim = n_pim
                m += 1
            moved[g] = m
        return moved

    class numba_impl:  # noqa: N801
        """numba-compiled implementation."""

        name = "numba"

        @staticmethod
        def counting_sort(expert_ids, num_experts):
            expert_ids = np.ascontiguousarray(expert_ids, dtype=np.int64)
            _check_ids(expert_ids, num_experts)
            return _counting_sort(expert_ids, np.int64(num_experts))

        @staticmethod
        def sieve_greedy(order, seg, read_s, flop_s, pim_s, comm_s, gpu_other_s, launch_s, pim_fixed_s):
            f = lambda a: np.ascontiguousarray(a, dtype=np.float64)  # noqa: E731
            i = lambda a: np.ascontiguousarray(a, dtype=np.int64)  # noqa: E731
            return _sieve_greedy(i(order), i(seg), f(read_s), f(flop_s), f(pim_s), f(comm_s), f(gpu_other_s),
                                 float(launch_s), f(pim_fixed_s))

    return numba_impl


try:
    numba_impl = _build_numba()
    numba_load_error: str | None = None
except Exception as exc:  # noqa: BLE001 - numba missing or broken: the python path remains
    numba_impl = None
    numba_load_error = repr(exc)
