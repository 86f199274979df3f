"""The MoE layer's kernels on tensors: routing prep (histogram, hot/cold split, permutation), token permute,
cold-expert GEMV, weighted unpermute.

One call signature, several implementations, picked by the tensors' device:
  CUDA tensors -> `heteromoe._cuda` (csrc/cuda/; launched on the current stream, no host sync);
  CPU float32  -> `heteromoe._C` (csrc/moe_kernels_cpu.cpp), else the numba / python twins (kernels/_cpu.py),
                  the one the fast-path facade chose for the planners too (`_ext.FASTPATH`);
  anything else -> `reference`, plain torch ops (also what every implementation is tested against).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, fields

import numpy as np
import torch

from heteromoe import _ext
from heteromoe.kernels import reference
from heteromoe.kernels.device_plan import DEVICE_RULES, DevicePlan
from heteromoe.kernels._cpu import numba_kernels, python_kernels

logger = logging.getLogger(__name__)

__all__ = [
    "CPU_IMPLEMENTATIONS",
    "DEVICE_RULES",
    "DevicePlan",
    "HAS_CUDA_KERNELS",
    "RoutePrep",
    "cpu_kernels",
    "cuda_load_error",
    "expert_gemv",
    "expert_histogram",
    "MMA_PASS_TILES",
    "check_pass_tiles",
    "expert_mma",
    "mma_supported",
    "gather_rows",
    "route_prep",
    "unpermute",
]

try:
    from heteromoe import _cuda  # type: ignore[attr-defined]

    HAS_CUDA_KERNELS = True
    cuda_load_error: str | None = None
except ImportError as exc:
    _cuda = None
    HAS_CUDA_KERNELS = False
    cuda_load_error = repr(exc)
    if _ext.DEBUG_EXT:
        logger.warning("heteromoe._cuda failed to import: %s", cuda_load_error)

#: CPU implementations by name, in priority order.
CPU_IMPLEMENTATIONS = {name: impl for name, impl in (("c", _ext._C if _ext.HAS_EXT else None), ("numba", numba_kernels),
                                                    ("python", python_kernels)) if impl is not None}


def cpu_kernels(name: str | None = None):
    """The CPU implementation `name`, or the fast path's (`_ext.FASTPATH`: HETEROMOE_FASTPATH or priority,
    decided once for the planners and the kernels)."""
    if name is None:  # the facade's pick, or (a twin the kernels lack) the first by priority
        return CPU_IMPLEMENTATIONS.get(_ext.FASTPATH) or next(iter(CPU_IMPLEMENTATIONS.values()))
    if name not in CPU_IMPLEMENTATIONS:
        raise ValueError(f"CPU kernels {name!r} are not available here; available: {sorted(CPU_IMPLEMENTATIONS)}")
    return CPU_IMPLEMENTATIONS[name]


_DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def _np(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor's numpy view (no copy)."""
    return t.detach().numpy()


_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # CUDA builds of torch (what inductor calls)


def _stream(device: torch.device | None = None) -> int:
    """The current CUDA stream's handle on `device` (default: the current device). Read through torch's raw
    getter where it has one: `torch.cuda.current_stream()` builds a Stream object, several microseconds of a
    layer call's host time."""
    if _raw_stream is not None:
        return _raw_stream(torch.cuda.current_device() if device is None or device.index is None else device.index)
    return torch.cuda.current_stream(device).cuda_stream


def _on_cuda_kernels(t: torch.Tensor) -> bool:
    return t.is_cuda and HAS_CUDA_KERNELS


def _on_cpu_kernels(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


@dataclass(frozen=True)
class RoutePrep:
    """Where every routed pair of one layer call goes (int32 tensors on the routing's device).

    counts [E]; hot_offs [E] inclusive ends of each expert's hot rows (grouped_mm's offs);
    hot_pairs / cold_pairs [P] the flat pair of each hot / cold row (-1 past the used rows);
    cold_expert / cold_begin / cold_count [max_cold] the cold experts, compacted (count 0 past them);
    pair_row [P] each pair's output row: hot row r, or P + cold row; meta [4] = hot rows, cold rows,
    cold experts, 1 + the first pair with an expert id outside [0, E) (0: none).
    """

    counts: torch.Tensor
    hot_offs: torch.Tensor
    hot_pairs: torch.Tensor
    cold_pairs: torch.Tensor
    cold_expert: torch.Tensor
    cold_begin: torch.Tensor
    cold_count: torch.Tensor
    pair_row: torch.Tensor
    meta: torch.Tensor

    @property
    def num_pairs(self) -> int:
        return int(self.pair_row.shape[0])

    @property
    def max_cold(self) -> int:
        return int(self.cold_count.shape[0])

    @classmethod
    def empty(cls, num_experts: int, num_pairs: int, max_cold: int, device: torch.device) -> RoutePrep:
        """Uninitialized outputs for the CUDA kernels: one allocation, nine views."""
        sizes = (num_experts, num_experts, num_pairs, num_pairs, max_cold, max_cold, max_cold, num_pairs, 4)
        return cls(*torch.split(torch.empty(sum(sizes), dtype=torch.int32, device=device), sizes))

    def pointers(self) -> tuple[int, ...]:
        """The nine outputs' device addresses, in the order the CUDA route_prep entry points take them."""
        return tuple(getattr(self, f.name).data_ptr() for f in fields(self))


def route_prep(top_k_index: torch.Tensor, num_experts: int, *, take_hot: torch.Tensor | np.ndarray | None = None,
               threshold: int = 0, max_cold: int | None = None, err_out: torch.Tensor | None = None) -> RoutePrep:
    """Split every expert's pairs into hot (grouped GEMM) and cold (GEMV) rows, stable in pair order.

    Args:
        top_k_index: [T, k] expert ids.
        num_experts: E.
        take_hot: [E] pairs of each expert to put on the hot side (its first ones); None: every expert
            with more than `threshold` pairs is hot, whole.
        max_cold: length of the cold lists (default min(E, P): enough for any routing).
        err_out: CUDA only: a pinned int64 [2] host tensor the kernel fills with [1 + first bad pair, its id]
            when an id is outside [0, E) (read it without synchronizing; it stays untouched otherwise).
    """
    ids = top_k_index.reshape(-1)
    n = int(ids.shape[0])
    max_cold = min(num_experts, n) if max_cold is None else int(max_cold)
    if _on_cuda_kernels(ids):
        dev = ids.device
        ids = ids.to(torch.int64).contiguous()  # no copy when it already is
        if take_hot is None or (isinstance(take_hot, torch.Tensor) and take_hot.device == dev):
            take = take_hot
        else:
            take = torch.as_tensor(take_hot, dtype=torch.int32).to(dev, non_blocking=True)
        if take is not None and (take.dtype != torch.int32 or take.shape[0] != num_experts):
            raise ValueError(f"take_hot must be [{num_experts}] int32, got {tuple(take.shape)} {take.dtype}")
        prep = RoutePrep.empty(num_experts, n, max_cold, dev)
        _cuda.route_prep(ids.data_ptr(), n, num_experts, 0 if take is None else take.data_ptr(), int(threshold),
                         max_cold, *prep.pointers(), 0 if err_out is None else err_out.data_ptr(), _stream())
        return prep
    if ids.device.type == "cpu":
        take = None if take_hot is None else np.asarray(take_hot, dtype=np.int32)
        out = cpu_kernels().route_prep(_np(ids).astype(np.int64, copy=False), num_experts, take, int(threshold), max_cold)
        return RoutePrep(**{k: torch.from_numpy(np.asarray(v)) for k, v in out.items()})
    return reference.route_prep(ids, num_experts, take_hot=take_hot, threshold=threshold, max_cold=max_cold)


def route_prep_plan(top_k_index: torch.Tensor, num_experts: int, plan: DevicePlan, *, plan_out: torch.Tensor,
                    err_out: torch.Tensor | None = None) -> RoutePrep:
    """route_prep whose hot/cold split is the policy's plan, made in the same kernel from the counts (CUDA
    only; equal to the host planners bit for bit). `plan_out` ([2, E] int32) receives each expert's GPU tokens
    (row 0) and its tokens (row 1)."""
    if plan_out.numel() != 2 * num_experts or plan_out.dtype != torch.int32 or not plan_out.is_contiguous():
        raise ValueError(f"plan_out must be a contiguous [2, {num_experts}] int32 tensor, got "
                         f"{tuple(plan_out.shape)} {plan_out.dtype}")
    if not _on_cuda_kernels(top_k_index):
        raise ValueError("route_prep_plan runs on CUDA tensors with heteromoe._cuda built")
    plan_args = plan.kernel_args
    ids = top_k_index.reshape(-1).to(torch.int64).contiguous()
    n = int(ids.shape[0])
    max_cold = min(num_experts, n)
    prep = RoutePrep.empty(num_experts, n, max_cold, ids.device)
    _cuda.route_prep_plan(ids.data_ptr(), n, num_experts, max_cold, *prep.pointers(),
                          0 if err_out is None else err_out.data_ptr(), *plan_args, plan_out.data_ptr(), _stream())
    return prep


def expert_histogram(top_k_index: torch.Tensor, num_experts: int) -> torch.Tensor:
    """[E] int32 pairs per expert (ids outside [0, E) are not counted)."""
    ids = top_k_index.reshape(-1).to(torch.int64).contiguous()
    if _on_cuda_kernels(ids):
        counts = torch.empty(num_experts, dtype=torch.int32, device=ids.device)
        _cuda.expert_histogram(ids.data_ptr(), int(ids.shape[0]), num_experts, counts.data_ptr(), _stream())
        return counts
    if ids.device.type == "cpu":
        return torch.from_numpy(np.asarray(cpu_kernels().expert_histogram(_np(ids), num_experts)))
    return reference.expert_histogram(ids, num_experts)


def gather_rows(x: torch.Tensor, pairs: torch.Tensor, top_k: int) -> torch.Tensor:
    """[R, d] token permute: row r is x[pairs[r] // top_k] (rows whose pair is -1 are left unset/zero)."""
    x = x.contiguous()
    if _on_cuda_kernels(x):
        out = torch.empty(pairs.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
        _cuda.gather_rows(x.data_ptr(), pairs.data_ptr(), int(top_k), int(pairs.shape[0]), x.shape[1] * x.element_size(),
                          out.data_ptr(), _stream())
        return out
    if _on_cpu_kernels(x):
        return torch.from_numpy(np.asarray(cpu_kernels().gather_rows(_np(x), _np(pairs), top_k)))
    return reference.gather_rows(x, pairs, top_k)


def _check_k_splits(k_splits: int, silu_chunk: bool) -> None:
    if not isinstance(k_splits, (int, np.integer)) or k_splits < 1:
        raise ValueError(f"k_splits must be an integer >= 1, got {k_splits!r}")
    if k_splits > 1 and silu_chunk:
        raise ValueError("k_splits > 1 needs silu_chunk=False: the SiLU gate needs each row's whole sum")


def _split_args(k_splits: int, silu_chunk: bool, rows: int, out_rows: int, device: torch.device) -> tuple[int, int]:
    """(k_splits, partial-sum buffer address) for the CUDA entry points: fp32 [k_splits, rows, out_rows] when
    K is split (freed to torch's caching allocator on return: its stream-ordered reuse waits for the kernels
    queued on this stream)."""
    _check_k_splits(k_splits, silu_chunk)
    k_splits = int(k_splits)
    if k_splits == 1:
        return 1, 0
    partial = torch.empty(k_splits * rows * out_rows, dtype=torch.float32, device=device)
    return k_splits, partial.data_ptr()


def expert_gemv(x: torch.Tensor, weight: torch.Tensor, prep: RoutePrep, *, in_pairs: torch.Tensor | None, top_k: int,
                out_rows: int, silu_chunk: bool, max_tokens: int, lists_ready: bool = False,
                side: str = "cold", k_splits: int = 1) -> torch.Tensor:
    """[P, out_rows] cold rows: row begin_c + t = W_e x_t for each cold expert c (rows of other positions unset).
    `side="hot"` runs the hot side's rows instead (`prep.hot_offs`, read through `in_pairs=prep.hot_pairs`):
    a decode-sized batch's GPU set, whose experts have a token or two each.

    Args:
        x: input rows; cold position `pos` reads row `in_pairs[pos] // top_k` (or row `pos` if in_pairs is None).
        weight: [E, out_rows, K], or [E, 2 out_rows, K] = [gate; up] with silu_chunk (writes silu(gate) * up).
        max_tokens: the most tokens any cold expert can have (picks the kernel's token tile).
        lists_ready: CUDA: the prep's lists were written before the kernel just before this one on the stream
            (true for the down projection after the up one), so the kernel may read them and prefetch its
            weights while that kernel finishes (programmatic dependent launch).
        k_splits: CUDA: cut K into this many ranges (split-K, `heteromoe.kernels.splitk`; fp32 partial sums
            reduced in split order, deterministic); needs silu_chunk=False. Elsewhere the result is the same
            sum in one pass.
    """
    if side not in ("cold", "hot"):
        raise ValueError(f"side must be 'cold' or 'hot', got {side!r}")
    rows = prep.num_pairs
    if _on_cuda_kernels(x) and x.dtype in _DTYPE_CODE and weight.dtype == x.dtype:
        x, weight = x.contiguous(), weight.contiguous()
        out = torch.empty(rows, out_rows, dtype=x.dtype, device=x.device)
        split = _split_args(k_splits, silu_chunk, rows, out_rows, x.device)
        _cuda.expert_gemv(_DTYPE_CODE[x.dtype], x.data_ptr(), 0 if in_pairs is None else in_pairs.data_ptr(), int(top_k),
                          weight.data_ptr(), *_lists(prep, side), int(out_rows), int(weight.shape[2]),
                          bool(silu_chunk), int(max_tokens), bool(lists_ready), out.data_ptr(), _stream(), *split)
        return out
    _check_k_splits(k_splits, silu_chunk)  # the same argument checks everywhere
    if side == "hot":
        return reference.expert_hot_rows(x, weight, prep, in_pairs=in_pairs, top_k=top_k, out_rows=out_rows,
                                         silu_chunk=silu_chunk)
    if _on_cpu_kernels(x, weight):
        out = cpu_kernels().expert_gemv(_np(x.contiguous()), None if in_pairs is None else _np(in_pairs), top_k,
                                        _np(weight.contiguous()), _np(prep.cold_expert),
                                        _np(prep.cold_begin), _np(prep.cold_count), out_rows, silu_chunk, rows)
        return torch.from_numpy(np.asarray(out))
    return reference.expert_gemv(x, weight, prep, in_pairs=in_pairs, top_k=top_k, out_rows=out_rows, silu_chunk=silu_chunk)


def _lists(prep: RoutePrep, side: str) -> tuple[int, ...]:
    """The list arguments of `_cuda.expert_gemv` / `_cuda.expert_mma` for one side: (list_expert, list_begin,
    list_count, offs, lists, rows), the compacted cold lists or the hot side's offs."""
    if side == "hot":
        return 0, 0, 0, prep.hot_offs.data_ptr(), int(prep.hot_offs.shape[0]), prep.num_pairs
    return (prep.cold_expert.data_ptr(), prep.cold_begin.data_ptr(), prep.cold_count.data_ptr(), 0, prep.max_cold,
            prep.num_pairs)


#: `expert_mma`'s pass widths in tiles of 8 tokens: 0 (the default kernels, 4 tiles above 16 tokens), 4 (the
#: same), 6, 8 and 16 (the wide kernel, for launches of more than 32 tokens per expert).
MMA_PASS_TILES = (0, 4, 6, 8, 16)


def check_pass_tiles(pass_tiles: int, name: str = "pass_tiles") -> None:
    """One clear line, naming the argument `name`, for a pass width `expert_mma` has no kernel for."""
    if isinstance(pass_tiles, bool) or pass_tiles not in MMA_PASS_TILES:
        raise ValueError(f"{name} must be one of {MMA_PASS_TILES} (0: the default), got {pass_tiles!r}")


def mma_supported(dtype: torch.dtype, *k_dims: int) -> bool:
    """Whether `expert_mma` runs for this dtype and these K dims (CUDA kernels built; bf16/fp16; K % 8 == 0)."""
    return HAS_CUDA_KERNELS and dtype in (torch.bfloat16, torch.float16) and all(k % 8 == 0 for k in k_dims)


def expert_mma(x: torch.Tensor, weight: torch.Tensor, prep: RoutePrep, *, in_pairs: torch.Tensor | None, top_k: int,
               out_rows: int, silu_chunk: bool, max_tokens: int, side: str = "cold",
               lists_ready: bool = False, k_splits: int = 1, pass_tiles: int = 0) -> torch.Tensor:
    """`expert_gemv` on the tensor cores (CUDA, bf16/fp16, K a multiple of 8): the same rows, the same
    roundings, fp32 sums in another order. `side="hot"` runs the hot side's rows instead (`prep.hot_offs`,
    read through `in_pairs=prep.hot_pairs`), where torch's grouped GEMM would otherwise go. `k_splits` as
    for `expert_gemv` (split-K). `pass_tiles` 6, 8 or 16: where `max_tokens` exceeds one default pass of 32
    tokens, the wide kernel reads each expert's weights once per 48 / 64 / 128 tokens (0 or 4: the default
    kernels; the sums per token are the same, so the rows are too: docs/gpu-wide-pass.md).
    Elsewhere (CPU, fp32, other K) it is `expert_gemv` for the cold side and the reference for the hot one."""
    if side not in ("cold", "hot"):
        raise ValueError(f"side must be 'cold' or 'hot', got {side!r}")
    check_pass_tiles(pass_tiles)
    rows = prep.num_pairs
    if _on_cuda_kernels(x) and weight.dtype == x.dtype and mma_supported(x.dtype, weight.shape[2]):
        x, weight = x.contiguous(), weight.contiguous()
        out = torch.empty(rows, out_rows, dtype=x.dtype, device=x.device)
        split = _split_args(k_splits, silu_chunk, rows, out_rows, x.device)
        _cuda.expert_mma(_DTYPE_CODE[x.dtype], x.data_ptr(), 0 if in_pairs is None else in_pairs.data_ptr(),
                         int(top_k), weight.data_ptr(), *_lists(prep, side), int(out_rows), int(weight.shape[2]),
                         bool(silu_chunk), int(max_tokens), bool(lists_ready), out.data_ptr(), _stream(), *split,
                         pass_tiles=int(pass_tiles))
        return out
    if side == "hot":
        _check_k_splits(k_splits, silu_chunk)  # the same argument checks everywhere
        return reference.expert_hot_rows(x, weight, prep, in_pairs=in_pairs, top_k=top_k, out_rows=out_rows,
                                         silu_chunk=silu_chunk)
    return expert_gemv(x, weight, prep, in_pairs=in_pairs, top_k=top_k, out_rows=out_rows, silu_chunk=silu_chunk,
                       max_tokens=max_tokens, lists_ready=lists_ready, k_splits=k_splits)


def unpermute(y_hot: torch.Tensor, y_cold: torch.Tensor, pair_row: torch.Tensor, weights: torch.Tensor, *,
              round_products: bool) -> torch.Tensor:
    """[T, d] out[t] = sum over slots s, in order, of weights[t, s] * (row pair_row[t k + s] of [y_hot; y_cold]).

    Accumulates in fp32; with round_products each product is first rounded to y's dtype (torch's bf16 * bf16).
    """
    tokens, top_k = weights.shape
    if _on_cuda_kernels(y_hot) and y_hot.dtype in _DTYPE_CODE and weights.dtype in _DTYPE_CODE:
        y_hot, y_cold, weights = y_hot.contiguous(), y_cold.contiguous(), weights.contiguous()
        out = torch.empty(tokens, y_hot.shape[1], dtype=y_hot.dtype, device=y_hot.device)
        _cuda.unpermute(_DTYPE_CODE[y_hot.dtype], _DTYPE_CODE[weights.dtype], y_hot.data_ptr(), y_cold.data_ptr(),
                        pair_row.data_ptr(), weights.data_ptr(), tokens, top_k, y_hot.shape[1], bool(round_products),
                        out.data_ptr(), _stream())
        return out
    if _on_cpu_kernels(y_hot, y_cold, weights):
        out = cpu_kernels().unpermute(_np(y_hot), _np(y_cold), _np(pair_row), _np(weights.reshape(-1)),
                                      tokens, top_k)
        return torch.from_numpy(np.asarray(out))
    return reference.unpermute(y_hot, y_cold, pair_row, weights, round_products=round_products)
