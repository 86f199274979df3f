"""The hot side's grouped GEMMs in Triton: each busy expert's rows through one projection, tiled over tokens
*and* weight rows, so an expert's weights are read once per `block_m` tokens (64 with the default tiles).

Why: the tensor-core kernel `expert_mma` keeps the weights in registers and streams tokens past them, one
reading of an expert's weights per 32-128 tokens with few loads in flight; with a few long experts and a
hundred tokens each (Mixtral-8x7B-shaped layers at 256 tokens) it reaches half the read bandwidth, and
torch's grouped_mm three quarters. A tiled GEMM (weights and tokens both staged in shared memory, Hopper's
warpgroup MMA where Triton picks it) streams the weights once per token tile with the pipeline Triton builds.

Rows are grouped as `RoutePrep` groups the hot side: expert e owns rows [hot_offs[e-1], hot_offs[e]) (the
offsets stay on the device; programs past an expert's rows return at once), and the up projection reads its
tokens through `hot_pairs` (no gather). The up projection of a SiLU-gated layer computes the gate and up
halves in one program and writes silu(gate) * up with torch's roundings (gate, up, silu(gate) and the product
each rounded to the output dtype, as `expert_gemv` / `expert_mma` with `silu_chunk`). Float32 tensors take
full-precision products (not Triton's default tf32).

Optional: needs Triton and a CUDA GPU (`available()`); the fused path falls back to grouped_mm without it.
Under `TRITON_INTERPRET=1` the same kernel runs on CPU tensors (how the CPU tests check its indexing).
"""
from __future__ import annotations

import functools
import importlib.util
import os
import re
from dataclasses import dataclass

import torch

__all__ = ["LARGE_TILE", "SMALL_TILE", "GroupedTile", "available", "grouped_down", "grouped_up", "tile_for"]

@dataclass(frozen=True)
class GroupedTile:
    """One program's tile: `block_m` token rows x `block_n` output rows, K in steps of `block_k`; `warps` per
    program, `stages` of the software pipeline; `tma`: the weights through a TMA tensor descriptor (Hopper
    and later) instead of plain loads. Spelled `MxNxK` + `wW` + `sS` (+ `t` for TMA), e.g. `128x64x64w8s4`."""

    block_m: int
    block_n: int
    block_k: int
    warps: int
    stages: int
    tma: bool = False

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "block_k"):
            v = getattr(self, name)
            if v < 16 or v & (v - 1):
                raise ValueError(f"GroupedTile.{name} must be a power of two >= 16, got {v!r}")
        if self.warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"GroupedTile.warps must be 1, 2, 4, 8 or 16, got {self.warps!r}")
        if not 1 <= self.stages <= 8:
            raise ValueError(f"GroupedTile.stages must be 1 to 8, got {self.stages!r}")

    @classmethod
    def parse(cls, text: str) -> GroupedTile:
        """`128x64x64w8s4` -> GroupedTile(128, 64, 64, 8, 4); one clear line for anything else."""
        m = re.fullmatch(r"(\d+)x(\d+)x(\d+)w(\d+)s(\d+)(t?)", text.strip())
        if not m:
            raise ValueError(f"grouped tile {text!r} is not MxNxKwWsS[t] (e.g. 128x64x64w8s4, 128x64x64w8s4t)")
        return cls(*(int(g) for g in m.groups()[:5]), tma=m.group(6) == "t")

    def __str__(self) -> str:
        return f"{self.block_m}x{self.block_n}x{self.block_k}w{self.warps}s{self.stages}" + ("t" if self.tma else "")


@functools.lru_cache(maxsize=None)
def _has_triton() -> bool:
    """Triton is installed (asked once: a failed lookup scans the whole import path)."""
    return importlib.util.find_spec("triton") is not None


def available() -> bool:
    """Whether the Triton kernels can run on CUDA tensors here (Triton is installed and a GPU is visible).
    Triton itself is imported at the first launch, not here."""
    return _has_triton() and torch.cuda.is_available()


def unavailable_reason() -> str | None:
    """Why `available()` is False (None when it is True)."""
    if not _has_triton():
        return "triton is not installed (it ships with torch's CUDA wheels)"
    if not torch.cuda.is_available() and not interpreting():
        return "no CUDA GPU"
    return None


#: The tiles `tile_for` picks, measured on an H100 (bench/results/gpu-grouped-h100.txt): launches of at most
#: 64 tokens per expert (Mixtral-8x7B-shaped layer at 16 and 64 tokens: 94.0 / 97.8 % of the read bandwidth)
#: and larger ones (Mixtral at 256 tokens, experts of up to 132: 83.6 %; Qwen3-30B-A3B at 256: 87.0 %).
SMALL_TILE = GroupedTile(64, 64, 128, 8, 3)
LARGE_TILE = GroupedTile(64, 64, 64, 4, 4)


def tile_for(max_tokens: int, base: GroupedTile | None = None) -> GroupedTile:
    """The tile of a launch of at most `max_tokens` tokens per expert: `base` (None: SMALL_TILE up to 64
    tokens, LARGE_TILE above) with `block_m` cut to the smallest power of two >= max_tokens (at least 16), so
    that a small launch computes no empty token rows. An expert of more than `block_m` tokens reads a weight
    tile once per token tile, the readings side by side in launch order (the second meets the first in L2)."""
    tile = base or (SMALL_TILE if max_tokens <= 64 else LARGE_TILE)
    block_m = max(16, min(tile.block_m, 1 << max(0, (max(1, max_tokens) - 1).bit_length())))
    return GroupedTile(block_m, tile.block_n, tile.block_k, tile.warps, tile.stages, tile.tma)


def _kernel():
    """The jitted kernel; its module imports Triton (about a second), so it is imported at the first launch."""
    from heteromoe.kernels._grouped_triton_kernel import grouped_gemm_kernel

    return grouped_gemm_kernel


def _launch(x: torch.Tensor, pairs: torch.Tensor | None, top_k: int, weight: torch.Tensor, offs: torch.Tensor,
            out: torch.Tensor, n_out: int, gate_rows: int, max_tokens: int, tile: GroupedTile) -> torch.Tensor:
    if not _has_triton():
        raise RuntimeError(f"the Triton grouped GEMM needs triton: {unavailable_reason()}")
    if weight.stride(2) != 1:
        raise ValueError("the Triton grouped GEMM needs K-contiguous weights [E, N, K]")
    experts, _, k_dim = weight.shape
    if x.shape[1] != k_dim:
        raise ValueError(f"tokens have {x.shape[1]} features, the weights' K is {k_dim}")
    m_tiles = max(1, -(-max(1, max_tokens) // tile.block_m))
    n_tiles = -(-n_out // tile.block_n)
    grid = (m_tiles * n_tiles, experts)
    rows_per_expert = weight.shape[1]
    desc = None
    if tile.tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        if not weight.is_contiguous():
            raise ValueError("a TMA tile needs contiguous weights [E, N, K]")
        desc = TensorDescriptor.from_tensor(weight.view(experts * rows_per_expert, k_dim), [tile.block_n, tile.block_k])
    _kernel()[grid](
        x, pairs if pairs is not None else offs, weight, desc, offs, out, int(top_k), int(n_out), int(k_dim),
        m_tiles, weight.stride(0), weight.stride(1), int(gate_rows), int(rows_per_expert),
        GATED=gate_rows > 0, PAIRS=pairs is not None, EVEN_K=k_dim % tile.block_k == 0, TMA=tile.tma,
        IEEE=x.dtype == torch.float32,
        BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, BLOCK_K=tile.block_k,
        num_warps=tile.warps, num_stages=tile.stages)
    return out


def grouped_up(x: torch.Tensor, weight: torch.Tensor, pairs: torch.Tensor, top_k: int, offs: torch.Tensor, *,
               gated: bool, max_tokens: int, tile: GroupedTile | None = None) -> torch.Tensor:
    """[P, f] (gated: silu(gate) * up) or [P, N]: row r = the token of pair `pairs[r]` through expert e's
    up weight ([E, N, K], N = 2f gated), for the rows r of expert e by `offs` (inclusive ends, int32).
    Rows past offs[-1] are left unwritten. `max_tokens`: a bound on any expert's rows (the launch's grid)."""
    experts, n_rows, _ = weight.shape
    if gated and n_rows % 2:
        raise ValueError(f"a gated up projection needs an even number of rows [gate; up], got {n_rows}")
    n_out = n_rows // 2 if gated else n_rows
    out = torch.empty(pairs.shape[0], n_out, dtype=x.dtype, device=x.device)
    use = tile_for(max_tokens, tile)
    return _launch(x.contiguous(), pairs, top_k, weight, offs, out, n_out, n_out if gated else 0, max_tokens, use)


def grouped_down(h: torch.Tensor, weight: torch.Tensor, offs: torch.Tensor, *, max_tokens: int,
                 tile: GroupedTile | None = None) -> torch.Tensor:
    """[P, d]: row r of `h` ([P, f], grouped by `offs` as `grouped_up` writes it) through expert e's down
    weight ([E, d, f])."""
    out = torch.empty(h.shape[0], weight.shape[1], dtype=h.dtype, device=h.device)
    use = tile_for(max_tokens, tile)
    return _launch(h.contiguous(), None, 1, weight, offs, out, weight.shape[1], 0, max_tokens, use)


def interpreting() -> bool:
    """Whether Triton runs its interpreter (TRITON_INTERPRET=1: CPU tensors, for tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
