"""CPU twins of the MoE layer kernels (csrc/moe_kernels_cpu.cpp, csrc/cuda/), written once as
loop code over numpy arrays: `python_kernels` runs it as is, `numba_kernels` through `numba.njit`.

float32 data, int32 indices; the same summation orders as the C++ twin (tests check bit equality for the
routing, the permute and the unpermute, and fp32 rounding agreement for the GEMV).
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

__all__ = ["numba_kernels", "numba_load_error", "python_kernels"]


def _expert_histogram(ids, num_experts):
    counts = np.zeros(num_experts, dtype=np.int32)
    for i in range(ids.shape[0]):
        e = ids[i]
        if e >= 0 and e < num_experts:
            counts[e] += 1
    return counts


def _route_prep(ids, num_experts, take, has_take, threshold, max_cold):
    n = ids.shape[0]
    counts = np.zeros(num_experts, dtype=np.int32)
    bad = 0
    for i in range(n):
        e = ids[i]
        if e >= 0 and e < num_experts:
            counts[e] += 1
        elif bad == 0:
            bad = i + 1
    hot = np.zeros(num_experts, dtype=np.int32)
    hot_off = np.zeros(num_experts, dtype=np.int32)
    cold_off = np.zeros(num_experts, dtype=np.int32)
    hot_offs = np.zeros(num_experts, dtype=np.int32)
    cold_expert = np.zeros(max_cold, dtype=np.int32)
    cold_begin = np.zeros(max_cold, dtype=np.int32)
    cold_count = np.zeros(max_cold, dtype=np.int32)
    n_hot = 0
    n_cold = 0
    k_cold = 0
    for e in range(num_experts):
        c = counts[e]
        if has_take:
            h = min(max(take[e], 0), c)
        else:
            h = c if c > threshold else 0
        hot[e] = h
        hot_off[e] = n_hot
        cold_off[e] = n_cold
        n_hot += h
        hot_offs[e] = n_hot
        if c > h:
            cold_expert[k_cold] = e
            cold_begin[k_cold] = n_cold
            cold_count[k_cold] = c - h
            k_cold += 1
        n_cold += c - h
    hot_pairs = np.full(n, -1, dtype=np.int32)
    cold_pairs = np.full(n, -1, dtype=np.int32)
    pair_row = np.full(n, -1, dtype=np.int32)
    cursor = np.zeros(num_experts, dtype=np.int32)
    for i in range(n):
        e = ids[i]
        if e < 0 or e >= num_experts:
            continue
        r = cursor[e]
        cursor[e] += 1
        if r < hot[e]:
            hot_pairs[hot_off[e] + r] = i
            pair_row[i] = hot_off[e] + r
        else:
            row = cold_off[e] + (r - hot[e])
            cold_pairs[row] = i
            pair_row[i] = n + row
    meta = np.array([n_hot, n_cold, k_cold, bad], dtype=np.int32)
    return counts, hot_offs, hot_pairs, cold_pairs, cold_expert, cold_begin, cold_count, pair_row, meta


def _gather_rows(x, pairs, top_k):
    rows = pairs.shape[0]
    out = np.zeros((rows, x.shape[1]), dtype=np.float32)
    for r in range(rows):
        if pairs[r] >= 0:
            out[r, :] = x[pairs[r] // top_k, :]
    return out


def _expert_gemv(x, in_pairs, has_pairs, top_k, weight, cold_expert, cold_begin, cold_count, out_rows, silu_chunk, rows):
    k_dim = weight.shape[2]
    out = np.zeros((rows, out_rows), dtype=np.float32)
    for c in range(cold_count.shape[0]):
        e = cold_expert[c]
        for t in range(cold_count[c]):
            pos = cold_begin[c] + t
            src = in_pairs[pos] // top_k if has_pairs else pos
            for j in range(out_rows):
                g = np.float32(0.0)
                for k in range(k_dim):
                    g += weight[e, j, k] * x[src, k]
                if silu_chunk:
                    u = np.float32(0.0)
                    for k in range(k_dim):
                        u += weight[e, j + out_rows, k] * x[src, k]
                    s = g / (np.float32(1.0) + np.exp(-g))
                    out[pos, j] = s * u
                else:
                    out[pos, j] = g
    return out


def _unpermute(y_hot, y_cold, pair_row, weights, tokens, top_k):
    d = y_hot.shape[1]
    n_pairs = tokens * top_k
    out = np.zeros((tokens, d), dtype=np.float32)
    for t in range(tokens):
        for j in range(d):
            acc = np.float32(0.0)
            for s in range(top_k):
                p = t * top_k + s
                row = pair_row[p]
                if row < 0:
                    continue
                v = y_hot[row, j] if row < n_pairs else y_cold[row - n_pairs, j]
                prod = v * weights[p]
                acc = acc + prod
            out[t, j] = acc
    return out


_NAMES = ("route_prep", "gather_rows", "expert_gemv", "unpermute", "expert_histogram")


class _Kernels:
    """The C++ twin's call signatures over one set of loop functions."""

    def __init__(self, name: str, fns: dict) -> None:
        self.name = name
        self._fns = SimpleNamespace(**fns)

    def expert_histogram(self, ids, num_experts):
        return self._fns.expert_histogram(np.ascontiguousarray(ids, dtype=np.int64), int(num_experts))

    def route_prep(self, ids, num_experts, take_hot, threshold, max_cold):
        has_take = take_hot is not None
        take = np.ascontiguousarray(take_hot if has_take else np.zeros(num_experts), dtype=np.int32)
        if has_take and take.shape[0] != num_experts:
            raise ValueError("take_hot must have one entry per expert")
        arrays = self._fns.route_prep(np.ascontiguousarray(ids, dtype=np.int64), int(num_experts), take, has_take,
                                      int(threshold), int(max_cold))
        keys = ("counts", "hot_offs", "hot_pairs", "cold_pairs", "cold_expert", "cold_begin", "cold_count",
                "pair_row", "meta")
        return dict(zip(keys, arrays))

    def gather_rows(self, x, pairs, top_k):
        return self._fns.gather_rows(np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(pairs, dtype=np.int32),
                                     int(top_k))

    def expert_gemv(self, x, in_pairs, top_k, weight, cold_expert, cold_begin, cold_count, out_rows, silu_chunk, rows):
        i32 = lambda a: np.ascontiguousarray(a, dtype=np.int32)
        has_pairs = in_pairs is not None
        pairs = i32(in_pairs if has_pairs else np.zeros(1))
        return self._fns.expert_gemv(np.ascontiguousarray(x, dtype=np.float32), pairs, has_pairs, int(top_k),
                                     np.ascontiguousarray(weight, dtype=np.float32), i32(cold_expert), i32(cold_begin),
                                     i32(cold_count), int(out_rows), bool(silu_chunk), int(rows))

    def unpermute(self, y_hot, y_cold, pair_row, weights, tokens, top_k):
        f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
        return self._fns.unpermute(f32(y_hot), f32(y_cold), np.ascontiguousarray(pair_row, dtype=np.int32),
                                   f32(weights), int(tokens), int(top_k))


_SOURCES = {"route_prep": _route_prep, "gather_rows": _gather_rows, "expert_gemv": _expert_gemv,
            "unpermute": _unpermute, "expert_histogram": _expert_histogram}
python_kernels = _Kernels("python", _SOURCES)

try:
    import numba

    numba_kernels: _Kernels | None = _Kernels("numba", {k: numba.njit(cache=True)(f) for k, f in _SOURCES.items()})
    numba_load_error: str | None = None
except Exception as exc:  # noqa: BLE001 - numba missing or broken: the python twin remains
    numba_kernels = None
    numba_load_error = repr(exc)
