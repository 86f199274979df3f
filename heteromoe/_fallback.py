"""Fallbacks for `heteromoe._C`: the same functions, as numba-compiled and as plain python code.

Each algorithm is written once below as loop code over numpy arrays, mirroring csrc/heteromoe_ext.cpp
statement by statement (double precision, the same summation order). `python_impl` runs it as is,
`numba_impl` runs it through `numba.njit`; tests check that all implementations agree bit for bit.
"""
from __future__ import annotations

import numpy as np

__all__ = ["numba_impl", "numba_load_error", "python_impl"]


# -- the algorithms (plain python over numpy arrays; numba compiles the same source) -------------------

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


def _sorted_by_gpu(counts, home, num_gpus):
    """Active experts of each GPU by count descending, ties by lower id."""
    seg = np.zeros(num_gpus + 1, dtype=np.int64)
    for e in range(counts.shape[0]):
        if counts[e] > 0:
            seg[home[e] + 1] += 1
    for g in range(num_gpus):
        seg[g + 1] += seg[g]
    order = np.empty(seg[num_gpus], dtype=np.int64)
    cursor = seg[:-1].copy()
    for e in range(counts.shape[0]):
        if counts[e] > 0:
            order[cursor[home[e]]] = e
            cursor[home[e]] += 1
    for g in range(num_gpus):
        block = order[seg[g]:seg[g + 1]].copy()
        keys = -counts[block]
        idx = np.argsort(keys, kind="mergesort")
        for i in range(block.shape[0]):
            order[seg[g] + i] = block[idx[i]]
    return order, seg


def _evaluate(counts, home, num_gpus, read_s, flop, pim_tab, gfix, launch_s, pfix, out):
    """Per-GPU T_GPU and T_PIM of a split, summed in expert-id order."""
    read = np.zeros(num_gpus)
    fl = np.zeros(num_gpus)
    pim = np.zeros(num_gpus)
    busy = np.zeros(num_gpus, dtype=np.bool_)
    for e in range(counts.shape[0]):
        g = home[e]
        k = out[e]
        if k > 0:
            read[g] += read_s
            busy[g] = True
        fl[g] += flop[k]
        pim[g] += pim_tab[counts[e] - k]
    t_gpu = np.empty(num_gpus)
    t_pim = np.empty(num_gpus)
    for g in range(num_gpus):
        t_gpu[g] = max(read[g], fl[g]) + (launch_s if busy[g] else 0.0) + gfix[g]
        t_pim[g] = pim[g] + pfix[g]
    return out, t_gpu, t_pim


def _all_on_pim(counts, order, lo, hi, pim_tab, pfix_g):
    """T_PIM of a GPU with all of order[lo:hi] on PIM."""
    pim = pfix_g
    for i in range(lo, hi):
        pim += pim_tab[counts[order[i]]]
    return pim


def _sieve_plan(counts, home, num_gpus, read_s, flop, pim_tab, comm, gfix, launch_s, pfix):
    order, seg = _sorted_by_gpu(counts, home, num_gpus)
    out = np.zeros(counts.shape[0], dtype=np.int64)
    for g in range(num_gpus):
        pim = _all_on_pim(counts, order, seg[g], seg[g + 1], pim_tab, pfix[g])
        best = max(max(comm[g], gfix[g]), pim)
        read = 0.0
        fl = 0.0
        for i in range(seg[g], seg[g + 1]):
            e = order[i]
            n = counts[e]
            n_read = read + read_s
            n_flop = fl + flop[n]
            n_pim = pim - pim_tab[n]
            t = max(max(comm[g], max(n_read, n_flop) + launch_s + gfix[g]), n_pim)
            if not t < best:
                break
            best = t
            read = n_read
            fl = n_flop
            pim = n_pim
            out[e] = n
    return _evaluate(counts, home, num_gpus, read_s, flop, pim_tab, gfix, launch_s, pfix, out)


def _heteromoe_plan(counts, home, num_gpus, read_s, flop, pim_tab, comm, gfix, launch_s, pfix):
    order, seg = _sorted_by_gpu(counts, home, num_gpus)
    out = np.zeros(counts.shape[0], dtype=np.int64)
    for g in range(num_gpus):
        lo = seg[g]
        hi = seg[g + 1]
        cm = comm[g]
        gf = gfix[g]
        pim = _all_on_pim(counts, order, lo, hi, pim_tab, pfix[g])
        # 1. best prefix
        best = max(max(cm, gf), pim)
        best_m = 0
        read = 0.0
        fl = 0.0
        best_read = 0.0
        best_flop = 0.0
        best_pim = pim
        for i in range(lo, hi):
            n = counts[order[i]]
            read = read + read_s
            fl = fl + flop[n]
            pim = pim - pim_tab[n]
            t = max(max(cm, max(read, fl) + launch_s + gf), pim)
            if t < best:
                best = t
                best_m = i - lo + 1
                best_read = read
                best_flop = fl
                best_pim = pim
        for i in range(lo, lo + best_m):
            out[order[i]] = counts[order[i]]
        # 2. split the expert on either side of the boundary
        split_e = -1
        split_g = 0
        if best_m < hi - lo:
            e = order[lo + best_m]
            n = counts[e]
            for k in range(1, n):
                t_gpu = max(best_read + read_s, best_flop + flop[k]) + launch_s + gf
                t_pim = best_pim - pim_tab[n] + pim_tab[n - k]
                t = max(max(cm, t_gpu), t_pim)
                if t < best:
                    best = t
                    split_e = e
                    split_g = k
        if best_m > 0:
            e = order[lo + best_m - 1]
            n = counts[e]
            for k in range(1, n):
                t_gpu = max(best_read, best_flop - flop[n] + flop[k]) + launch_s + gf
                t_pim = best_pim + pim_tab[n - k]
                t = max(max(cm, t_gpu), t_pim)
                if t < best:
                    best = t
                    split_e = e
                    split_g = k
        if split_e >= 0:
            out[split_e] = split_g
    return _evaluate(counts, home, num_gpus, read_s, flop, pim_tab, gfix, launch_s, pfix, out)


def _route_to_replicas(counts, phys2log, slot_gpu, num_gpus):
    E = counts.shape[0]
    P = phys2log.shape[0]
    out = np.zeros(P, dtype=np.int64)
    replicated = np.zeros(E, dtype=np.bool_)
    for s in range(E, P):
        replicated[phys2log[s]] = True
    load = np.zeros(num_gpus, dtype=np.int64)
    n_rep = 0
    for e in range(E):
        if replicated[e]:
            n_rep += 1
        else:
            out[e] = counts[e]
            load[slot_gpu[e]] += counts[e]
    order = np.empty(n_rep, dtype=np.int64)
    i = 0
    for e in range(E):
        if replicated[e]:
            order[i] = e
            i += 1
    order = order[np.argsort(-counts[order], kind="mergesort")]
    for e in order:
        if counts[e] == 0:
            continue
        best = e
        for s in range(E, P):
            if phys2log[s] == e and load[slot_gpu[s]] < load[slot_gpu[best]]:
                best = s
        out[best] = counts[e]
        load[slot_gpu[best]] += counts[e]
    return out


# -- argument checks shared by the twins (the C++ side has the same ones) ---------------------------

def _check_ids(expert_ids: np.ndarray, num_experts: int) -> None:
    if num_experts <= 0:
        raise ValueError(f"num_experts must be positive, got {num_experts}")
    if expert_ids.size:
        bad = np.flatnonzero((expert_ids < 0) | (expert_ids >= num_experts))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"expert id {int(expert_ids[i])} at pair {i} is outside [0, {num_experts})")


def _plan_args(counts, home, num_gpus, read_s, flop_tab, pim_tab, comm, gfix, launch_s, pfix):
    i64 = lambda a: np.ascontiguousarray(a, dtype=np.int64)
    f64 = lambda a: np.ascontiguousarray(a, dtype=np.float64)
    counts, home = i64(counts), i64(home)
    comm, gfix, pfix, flop_tab, pim_tab = f64(comm), f64(gfix), f64(pfix), f64(flop_tab), f64(pim_tab)
    num_gpus = int(num_gpus)
    if home.shape != counts.shape:
        raise ValueError("expert_gpu must have one entry per expert")
    if num_gpus < 1:
        raise ValueError("num_gpus must be >= 1")
    if comm.shape[0] != num_gpus or gfix.shape[0] != num_gpus or pfix.shape[0] != num_gpus:
        raise ValueError("per-GPU arrays must have num_gpus entries")
    if counts.size and counts.min() < 0:
        raise ValueError("counts must be >= 0")
    if home.size and (home.min() < 0 or home.max() >= num_gpus):
        raise ValueError("expert_gpu outside [0, num_gpus)")
    max_count = int(counts.max()) if counts.size else 0
    if flop_tab.shape[0] <= max_count or pim_tab.shape[0] <= max_count:
        raise ValueError(f"cost tables must cover token counts up to {max_count}")
    return counts, home, num_gpus, float(read_s), flop_tab, pim_tab, comm, gfix, float(launch_s), pfix


class _Impl:
    """One implementation: the three kernels behind argument checks."""

    def __init__(self, name: str, counting_sort, sieve_plan, heteromoe_plan, route_to_replicas) -> None:
        self.name = name
        self._counting_sort, self._sieve, self._heteromoe = counting_sort, sieve_plan, heteromoe_plan
        self._route = route_to_replicas

    def counting_sort(self, expert_ids, num_experts):
        """Args: expert_ids [P] int64. Returns counts [E], offsets [E+1], order [P] (stable)."""
        expert_ids = np.ascontiguousarray(expert_ids, dtype=np.int64)
        _check_ids(expert_ids, num_experts)
        return self._counting_sort(expert_ids, np.int64(num_experts))

    def sieve_plan(self, *args):
        """See csrc/heteromoe_ext.cpp `sieve_plan`. Returns gpu_tokens [E], T_GPU [G], T_PIM [G]."""
        return self._sieve(*_plan_args(*args))

    def heteromoe_plan(self, *args):
        """See csrc/heteromoe_ext.cpp `heteromoe_plan`. Returns gpu_tokens [E], T_GPU [G], T_PIM [G]."""
        return self._heteromoe(*_plan_args(*args))

    def route_to_replicas(self, counts, phys2log, slot_gpu, num_gpus):
        """See csrc/heteromoe_ext.cpp `route_to_replicas`. Returns slot_counts [P] int64."""
        i64 = lambda a: np.ascontiguousarray(a, dtype=np.int64)
        counts, phys2log, slot_gpu = i64(counts), i64(phys2log), i64(slot_gpu)
        E, P = counts.shape[0], phys2log.shape[0]
        if slot_gpu.shape[0] != P or P < E:
            raise ValueError("phys2log and slot_gpu must have P >= E entries")
        if P and (phys2log.min() < 0 or phys2log.max() >= E):
            raise ValueError("phys2log outside [0, E)")
        if P and (slot_gpu.min() < 0 or slot_gpu.max() >= num_gpus):
            raise ValueError("slot_gpu outside [0, num_gpus)")
        return self._route(counts, phys2log, slot_gpu, int(num_gpus))


python_impl = _Impl("python", _counting_sort, _sieve_plan, _heteromoe_plan, _route_to_replicas)


def _build_numba() -> _Impl:
    import numba

    jit = numba.njit(cache=True)
    # the planners call _sorted_by_gpu, _all_on_pim and _evaluate: compile them against the jitted versions
    sieve_globals = dict(_sieve_plan.__globals__, _sorted_by_gpu=jit(_sorted_by_gpu), _evaluate=jit(_evaluate),
                         _all_on_pim=jit(_all_on_pim))
    import types

    def rebind(fn):
        return types.FunctionType(fn.__code__, sieve_globals, fn.__name__, fn.__defaults__, fn.__closure__)

    return _Impl("numba", jit(_counting_sort), jit(rebind(_sieve_plan)), jit(rebind(_heteromoe_plan)),
                 jit(_route_to_replicas))


try:
    numba_impl: _Impl | None = _build_numba()
    numba_load_error: str | None = None
except Exception as exc:  # noqa: BLE001 - numba missing or broken: the python path remains
    numba_impl = None
    numba_load_error = repr(exc)
