"""Per-sub-batch, per-GPU work of one layer in the physical step model (durations from `cost/` formulas).

Requests are data-parallel: GPU g holds a contiguous block of the batch (`dense.local_requests`); with S
sub-batches each GPU splits its block into S contiguous parts. Colocated prefill requests (paper §7.3) are
dealt round-robin over the GPUs and then over the sub-batches. For each sub-batch and GPU:

- projections (SMs): full-attention layers Q (x2 with an output gate), K, V and O; Gated DeltaNet layers
  the fused q/k/v, z, a and b projections and the output projection (transformers' `Qwen3NextGatedDeltaNet`
  shapes); the router with the output projection;
- the attention core: decode attention on PIM through the bank-level model (`pim_attention_s`), prefill
  attention on the SMs (causal, compute-bound); a Gated DeltaNet layer reads and writes each request's
  recurrent and convolution state on the SMs;
- shared experts (SMs) over the sub-batch's local tokens.
Every dense kernel pays the GPU's launch overhead when `dense_launch` is set.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from heteromoe.cost.pim_bank import BankPimTiming
from heteromoe.sim.dense import local_requests
from heteromoe.sim.pim_truth import busy_s
from heteromoe.sim.shapes import attention_shape, linear_attention_shape
from heteromoe.spec.hardware import SystemSpec
from heteromoe.spec.model import MoEModelSpec

__all__ = ["SubBatches", "SubBatchWork", "dense_pim_s", "pim_attention_s", "split_requests", "sub_batch_work"]


@dataclass(frozen=True, eq=False)
class SubBatches:
    """Which routing rows and requests each (sub-batch, GPU) holds.

    Attributes:
        rows: per sub-batch, the routing rows (tokens) of its requests, all GPUs together.
        decode: [S, G] decode requests (one token each).
        prefill_tokens: [S, G] prompt tokens of the prefill requests there.
        prefill_requests: [S, G] prefill requests there.
        context: [S, G] KV tokens the decode requests hold (summed).
        token_origin: per sub-batch, [rows] GPU of each routing row.
    """

    rows: list[np.ndarray]
    decode: np.ndarray
    prefill_tokens: np.ndarray
    prefill_requests: np.ndarray
    context: np.ndarray
    token_origin: list[np.ndarray]

    @property
    def tokens(self) -> np.ndarray:
        """[S, G] tokens through the projections and experts."""
        return self.decode + self.prefill_tokens


def split_requests(decode: int, gpus: int, subs: int, context, prefill: tuple[int, int] = (0, 0)) -> SubBatches:
    """Split `decode` decode requests and `prefill` = (requests, tokens each) over GPUs and sub-batches.

    Routing rows: the decode requests first (one row each), then each prefill request's tokens."""
    ctx = np.broadcast_to(np.asarray(context, dtype=np.float64), (decode,))
    blocks = np.concatenate([[0], np.cumsum(local_requests(decode, gpus))])
    p_req, p_tok = prefill
    rows, origin = [[] for _ in range(subs)], [[] for _ in range(subs)]
    dec = np.zeros((subs, gpus), dtype=np.int64)
    cx = np.zeros((subs, gpus))
    for g in range(gpus):
        parts = np.array_split(np.arange(blocks[g], blocks[g + 1]), subs)
        for s, part in enumerate(parts):
            rows[s].append(part)
            origin[s].append(np.full(part.size, g))
            dec[s, g] = part.size
            cx[s, g] = ctx[part].sum()
    ptok = np.zeros((subs, gpus), dtype=np.int64)
    preq = np.zeros((subs, gpus), dtype=np.int64)
    for j in range(p_req):
        g, s = j % gpus, (j // gpus) % subs
        first = decode + j * p_tok
        rows[s].append(np.arange(first, first + p_tok))
        origin[s].append(np.full(p_tok, g))
        ptok[s, g] += p_tok
        preq[s, g] += 1
    return SubBatches(rows=[np.concatenate(r).astype(np.int64) for r in rows], decode=dec, prefill_tokens=ptok,
                      prefill_requests=preq, context=cx,
                      token_origin=[np.concatenate(o).astype(np.int64) for o in origin])


@lru_cache(maxsize=4096)
def _attn_pair_s(timing: BankPimTiming, head_dim: int, context: int, vectors: int, share: float,
                 bytes_kv: float, separate_paths: bool) -> tuple[float, float]:
    """(busy, closed-form) seconds of the score GEMV (K: head_dim -> context) and the value GEMV
    (V: context -> head_dim) for `vectors` query vectors in a row, on `share` of the channels."""
    busy = total = 0.0
    for d_in, d_out in ((head_dim, context), (context, head_dim)):
        t = timing.gemv(d_in, d_out, vectors, bytes_kv, bytes_kv, share)
        total += float(t.total_s)
        busy += float(busy_s(t, separate_paths))
    return busy, total


def pim_attention_s(timing: BankPimTiming, model: MoEModelSpec, requests: np.ndarray,
                    context: np.ndarray, separate_paths: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """([G] busy seconds without refresh, [G] closed-form seconds) of decode attention on the PIM stacks.

    The KV cache is distributed over the channels by (request, KV head) as NeuPIMs does: with M such
    matrices and C channels there are min(M, C) channel groups of C / groups channels, each running
    ceil(M / groups) matrices. With GQA the g query heads of one KV head are g GEMV input vectors over the
    same rows; bank-level PIM computes one column's dot product per column command against one vector, so
    each vector is its own sweep of the rows (no row reuse, the bank model's `tokens`). Context: the mean
    of the group's requests, rounded up."""
    shape = attention_shape(model)
    hd, kv_heads, g = shape.head_dim, shape.kv_heads, shape.group
    busy, total = np.zeros(requests.shape), np.zeros(requests.shape)
    for i, (r, c) in enumerate(zip(requests.tolist(), context.tolist())):
        if r == 0 or c <= 0:
            continue
        mats = r * kv_heads
        groups = min(mats, timing.channels)
        per_group = -(-mats // groups)
        b, t = _attn_pair_s(timing, hd, int(np.ceil(c / r)), g * per_group, 1.0 / groups, model.bytes_per_activation,
                            separate_paths)
        busy[i], total[i] = b, t
    return busy, total


@dataclass(frozen=True, eq=False)
class SubBatchWork:
    """[G] seconds of one sub-batch's dense work in one layer; `attn_pim_*` is PIM, the rest the SMs."""

    proj_s: np.ndarray       # QKV (or Gated DeltaNet input projections)
    core_gpu_s: np.ndarray   # attention core on the SMs (prefill, Gated DeltaNet state, gpu-only decode)
    attn_pim_busy_s: np.ndarray
    attn_pim_closed_s: np.ndarray
    out_router_s: np.ndarray
    shared_s: np.ndarray
    #: decode attention of every decode request on the SMs (KV read at HBM bandwidth + launch), for a
    #: step plan that moves some requests' attention off PIM
    attn_gpu_s: np.ndarray | None = None
    #: (busy, closed-form) [G] seconds of the dense GEMVs on PIM (Sieve's all-channel layout, one vector per
    #: token), for a step plan that runs them there; None where the system has no bank-level timings
    proj_pim: tuple[np.ndarray, np.ndarray] | None = None
    out_router_pim: tuple[np.ndarray, np.ndarray] | None = None
    shared_pim: tuple[np.ndarray, np.ndarray] | None = None


def _roofline(system: SystemSpec, weight_bytes: float, flops: np.ndarray, launch: float) -> np.ndarray:
    gpu = system.require_gpu()
    read = weight_bytes / (gpu.eta_bw * gpu.ext_bw_bytes_per_s)
    return np.where(flops > 0, np.maximum(read, flops / (gpu.eta_fl * gpu.peak_flops_per_s)) + launch, 0.0)


def sub_batch_work(model: MoEModelSpec, system: SystemSpec, timing: BankPimTiming | None, sub: SubBatches, s: int,
                   full_attention: bool, attention_on_pim: bool, *, linear_attention: bool, dense_launch: bool,
                   pim_attention: str, separate_paths: bool = False) -> SubBatchWork:
    """Dense work of sub-batch `s` in one layer (see the module docstring)."""
    gpu = system.require_gpu()
    launch = gpu.launch_overhead_s if dense_launch else 0.0
    bw_s = 1.0 / (gpu.eta_bw * gpu.ext_bw_bytes_per_s)
    fl_s = 1.0 / (gpu.eta_fl * gpu.peak_flops_per_s)
    d, bw, ba = model.hidden_size, model.bytes_per_weight, model.bytes_per_activation
    tokens = sub.tokens[s].astype(np.float64)
    dec, ctx = sub.decode[s].astype(np.float64), sub.context[s]
    ptok, preq = sub.prefill_tokens[s].astype(np.float64), sub.prefill_requests[s].astype(np.float64)
    zeros = np.zeros_like(tokens)
    linear = linear_attention and model.has_linear_attention and not full_attention
    attn_shape = attention_shape(model)
    q_width, kv_width = attn_shape.q_width, attn_shape.kv_width
    core = zeros.copy()
    attn_busy, attn_closed = zeros.copy(), zeros.copy()
    attn_gpu = zeros.copy()
    proj_shapes: list[tuple[int, int]] = []
    out_shapes: list[tuple[int, int]] = []
    if linear:
        lin = linear_attention_shape(model)
        proj_shapes, out_shapes = [lin.in_shape], [lin.out_shape]
        proj, out = lin.in_shape[0] * lin.in_shape[1], lin.out_shape[0] * lin.out_shape[1]
        state = lin.state_elements() * ba
        # decode: read and write each request's state; prefill: the chunked delta rule, ~6 FLOP per state
        # element per token (state update, output, intra-chunk terms)
        flops = 6.0 * ptok * lin.value_heads * lin.key_head_dim * lin.value_head_dim
        core = np.where(dec + preq > 0, np.maximum(2 * (dec + preq) * state * bw_s, flops * fl_s) + launch, 0.0)
    else:
        # the output gate is part of the hybrid models' own shapes (the linear_attention switch)
        proj_shapes = [attn_shape.qkv_shape(attn_shape.output_gate and linear_attention)]
        out_shapes = [attn_shape.out_shape]
        proj, out = proj_shapes[0][0] * proj_shapes[0][1], q_width * d
        if not full_attention:
            pass  # a sliding / linear layer without given shapes: projections only, as the serialized model
        else:
            # prefill: causal attention on the SMs, 2 T^2 q_width FLOP (scores and values, half the square)
            pf = 2.0 * ptok * np.maximum(ptok / np.maximum(preq, 1), 1) * q_width
            kv = ctx * 2 * kv_width * ba
            attn_gpu = np.where(kv > 0, kv * bw_s + launch, 0.0)
            if attention_on_pim:
                if pim_attention == "bank":
                    attn_busy, attn_closed = pim_attention_s(timing, model, sub.decode[s], ctx, separate_paths)
                else:
                    attn_busy = attn_closed = kv / system.pim.internal_bw_bytes_per_s
                core = np.where(pf > 0, pf * fl_s + launch, 0.0)
            else:
                core = np.where(kv + pf > 0, np.maximum(kv * bw_s, pf * fl_s) + launch, 0.0)
    out_router = out + d * model.num_experts
    shared = 3 * d * model.moe_intermediate_size * model.num_shared_experts
    out_shapes = out_shapes + [(d, model.num_experts)]
    shared_shapes = ([(d, 2 * model.moe_intermediate_size * model.num_shared_experts),
                      (model.moe_intermediate_size * model.num_shared_experts, d)] if shared else [])
    on_pim = {}
    if timing is not None:
        for name, shapes in (("proj", proj_shapes), ("out", out_shapes), ("shared", shared_shapes)):
            on_pim[name] = dense_pim_s(timing, shapes, sub.tokens[s], bw, ba, separate_paths) if shapes else None
    return SubBatchWork(
        proj_s=_roofline(system, proj * bw, 2 * tokens * proj, launch),
        core_gpu_s=core,
        attn_pim_busy_s=attn_busy,
        attn_pim_closed_s=attn_closed,
        out_router_s=_roofline(system, out_router * bw, 2 * tokens * out_router, launch),
        shared_s=_roofline(system, shared * bw, 2 * tokens * shared, launch) if shared else zeros,
        attn_gpu_s=attn_gpu,
        proj_pim=on_pim.get("proj"),
        out_router_pim=on_pim.get("out"),
        shared_pim=on_pim.get("shared"),
    )


@lru_cache(maxsize=4096)
def _gemv_pair(timing: BankPimTiming, d_in: int, d_out: int, bytes_w: float, bytes_a: float,
               separate_paths: bool) -> tuple[float, float]:
    """(busy, closed-form) seconds of one token's GEMV over all channels."""
    t = timing.gemv(d_in, d_out, 1, bytes_w, bytes_a, 1.0)
    busy = float(busy_s(t, separate_paths))
    return busy, (busy * timing.refresh_factor if separate_paths else float(t.total_s))


def dense_pim_s(timing: BankPimTiming, shapes: list[tuple[int, int]], tokens: np.ndarray, bytes_w: float,
                bytes_a: float, separate_paths: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """([G] busy, [G] closed-form) seconds of dense GEMVs `shapes` (d_in, d_out) on PIM for `tokens` [G]
    tokens per GPU: the weights sharded over all of the GPU's channels (Sieve's layout for experts), each
    token its own sweep of the rows (one input vector per column command), so the time is linear in tokens.
    The closed form is the busy time with the expected refresh factor (with a separate PIM command path no
    mode switch is paid, as `sim.pim_truth.busy_s` counts)."""
    busy = closed = 0.0
    for d_in, d_out in shapes:
        b, c = _gemv_pair(timing, int(d_in), int(d_out), float(bytes_w), float(bytes_a), separate_paths)
        busy, closed = busy + b, closed + c
    n = np.asarray(tokens, dtype=np.float64)
    return n * busy, n * closed
