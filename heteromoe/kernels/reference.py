"""Plain torch versions of the MoE layer kernels: the reference every implementation is tested against, and
the path for devices and dtypes the compiled kernels do not cover. Same outputs, same summation order
in `unpermute` (slot by slot, fp32), so equal bit for bit there; the GEMV agrees within fp32 rounding.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["expert_gemv", "expert_histogram", "gather_rows", "route_prep", "unpermute"]


def expert_histogram(ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    ids = ids.reshape(-1)
    valid = (ids >= 0) & (ids < num_experts)
    return torch.bincount(ids[valid], minlength=num_experts).to(torch.int32)


def route_prep(ids: torch.Tensor, num_experts: int, *, take_hot=None, threshold: int = 0, max_cold: int | None = None):
    from heteromoe.kernels import RoutePrep

    ids = ids.reshape(-1).to(torch.int64)
    dev, n = ids.device, int(ids.shape[0])
    max_cold = min(num_experts, n) if max_cold is None else int(max_cold)
    i32 = torch.int32
    valid = (ids >= 0) & (ids < num_experts)
    bad = int(torch.nonzero(~valid)[0, 0]) + 1 if (~valid).any() else 0
    counts = expert_histogram(ids, num_experts).to(torch.int64)
    if take_hot is None:
        hot = torch.where(counts > threshold, counts, torch.zeros_like(counts))
    else:
        hot = torch.minimum(torch.as_tensor(np.asarray(take_hot), device=dev).to(torch.int64).clamp(min=0), counts)
    cold = counts - hot
    hot_off = torch.cumsum(hot, 0) - hot
    cold_off = torch.cumsum(cold, 0) - cold
    key = torch.where(valid, ids, torch.full_like(ids, num_experts))
    order = torch.sort(key, stable=True).indices  # pairs by expert, ascending pair index inside
    sorted_e = key[order]
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n, device=dev) - torch.cat([starts, torch.tensor([0], device=dev)])[sorted_e]
    ok = sorted_e < num_experts
    e_ok = sorted_e.clamp(max=num_experts - 1)
    is_hot = ok & (rank < hot[e_ok])
    is_cold = ok & ~is_hot
    hot_pairs = torch.full((n,), -1, dtype=i32, device=dev)
    cold_pairs = torch.full((n,), -1, dtype=i32, device=dev)
    pair_row = torch.full((n,), -1, dtype=i32, device=dev)
    hot_row = (hot_off[e_ok] + rank)[is_hot]
    cold_row = (cold_off[e_ok] + rank - hot[e_ok])[is_cold]
    hot_pairs[hot_row] = order[is_hot].to(i32)
    cold_pairs[cold_row] = order[is_cold].to(i32)
    pair_row[order[is_hot]] = hot_row.to(i32)
    pair_row[order[is_cold]] = (cold_row + n).to(i32)
    cold_experts = torch.nonzero(cold > 0).reshape(-1)
    k_cold = int(cold_experts.shape[0])
    pad = lambda t: torch.cat([t.to(i32), torch.zeros(max_cold - k_cold, dtype=i32, device=dev)])
    meta = torch.tensor([int(hot.sum()), int(cold.sum()), k_cold, bad], dtype=i32, device=dev)
    return RoutePrep(counts=counts.to(i32), hot_offs=torch.cumsum(hot, 0).to(i32), hot_pairs=hot_pairs,
                     cold_pairs=cold_pairs, cold_expert=pad(cold_experts), cold_begin=pad(cold_off[cold_experts]),
                     cold_count=pad(cold[cold_experts]), pair_row=pair_row, meta=meta)


def gather_rows(x: torch.Tensor, pairs: torch.Tensor, top_k: int) -> torch.Tensor:
    pairs = pairs.to(torch.int64)
    out = torch.zeros(pairs.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
    used = pairs >= 0
    out[used] = x[pairs[used] // top_k]
    return out


def expert_gemv(x: torch.Tensor, weight: torch.Tensor, prep, *, in_pairs, top_k: int, out_rows: int,
                silu_chunk: bool) -> torch.Tensor:
    """Per cold expert, a plain matmul in fp32 (rounded to x's dtype per linear, as the fused kernel does)."""
    slices = zip(*(t.tolist() for t in (prep.cold_expert, prep.cold_begin, prep.cold_count)))
    return _expert_rows(x, weight, prep.num_pairs, slices, in_pairs, top_k, out_rows, silu_chunk)


def expert_hot_rows(x: torch.Tensor, weight: torch.Tensor, prep, *, in_pairs, top_k: int, out_rows: int,
                    silu_chunk: bool) -> torch.Tensor:
    """The same per hot expert (rows from `prep.hot_offs`, the inclusive ends of each expert's hot rows)."""
    ends = prep.hot_offs.tolist()
    slices = ((e, begin, end - begin) for e, (begin, end) in enumerate(zip([0] + ends[:-1], ends)))
    return _expert_rows(x, weight, prep.num_pairs, slices, in_pairs, top_k, out_rows, silu_chunk)


def _expert_rows(x, weight, num_rows, slices, in_pairs, top_k, out_rows, silu_chunk) -> torch.Tensor:
    out = torch.zeros(num_rows, out_rows, dtype=x.dtype, device=x.device)
    for e, begin, count in slices:
        if count == 0:
            continue
        pos = torch.arange(begin, begin + count, device=x.device)
        src = in_pairs.to(torch.int64)[pos] // top_k if in_pairs is not None else pos
        y = (x[src].float() @ weight[e].float().T).to(x.dtype)
        if silu_chunk:
            gate, up = y[:, :out_rows], y[:, out_rows:]
            y = torch.nn.functional.silu(gate) * up
        out[pos] = y
    return out


def unpermute(y_hot: torch.Tensor, y_cold: torch.Tensor, pair_row: torch.Tensor, weights: torch.Tensor, *,
              round_products: bool) -> torch.Tensor:
    tokens, top_k = weights.shape
    n = tokens * top_k
    rows = torch.cat([y_hot[:n], y_cold[:n]]) if y_hot.shape[0] >= n and y_cold.shape[0] >= n else None
    if rows is None:
        raise ValueError(f"y_hot and y_cold need {n} rows each, got {y_hot.shape[0]} and {y_cold.shape[0]}")
    acc = torch.zeros(tokens, y_hot.shape[1], dtype=torch.float32, device=y_hot.device)
    pr = pair_row.to(torch.int64).reshape(tokens, top_k)
    for s in range(top_k):
        used = pr[:, s] >= 0
        prod = rows[pr[:, s].clamp(min=0)].float() * weights[:, s].float()[:, None]
        if round_products:
            prod = prod.to(y_hot.dtype).float()
        acc = acc + torch.where(used[:, None], prod, torch.zeros_like(prod))
    return acc.to(y_hot.dtype)
