"""Per-GPU costs of a decode step's non-expert work in one layer (durations come from `cost/` formulas).

Attention is data-parallel: GPU g holds its share of the batch's requests and their KV cache. Per layer:
QKV projections, the attention core (reads each local request's KV cache: on PIM for the PIM policies,
on the GPU for `gpu-only`), output projection + router, shared experts (GPU, local tokens), and the
AllGather of routing counts. Simplifications (documented in the README): only full-attention layers read
a KV cache (linear-attention layers' small recurrent state is ignored), every layer's projections have
the attention shape of the preset, and embeddings, LM head and dense FFN layers are not simulated.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from heteromoe.spec.hardware import SystemSpec
from heteromoe.spec.model import MoEModelSpec

__all__ = ["DenseWork", "context_per_gpu", "dense_work", "local_requests"]


def local_requests(batch: int, gpus: int) -> np.ndarray:
    """[G] requests per GPU: the batch split as evenly as possible (data-parallel attention)."""
    return np.full(gpus, batch // gpus) + (np.arange(gpus) < batch % gpus)


@dataclass(frozen=True, eq=False)
class DenseWork:
    """[G] seconds per GPU of one layer's non-expert work, and the KV bytes its attention reads."""

    qkv_s: np.ndarray
    attn_gpu_s: np.ndarray
    attn_pim_s: np.ndarray
    out_router_s: np.ndarray
    shared_s: np.ndarray
    allgather_s: float
    kv_bytes: np.ndarray


def _gpu_time(system: SystemSpec, weight_bytes: float, flops: np.ndarray) -> np.ndarray:
    gpu = system.require_gpu()
    read = weight_bytes / (gpu.eta_bw * gpu.ext_bw_bytes_per_s)
    return np.where(flops > 0, np.maximum(read, flops / (gpu.eta_fl * gpu.peak_flops_per_s)), 0.0)


def context_per_gpu(context, batch: int, gpus: int) -> np.ndarray:
    """[G] KV-cache tokens each GPU holds: `context` is one length for every request, or [batch] lengths
    (requests assigned to GPUs in contiguous blocks, as `local_requests` counts them)."""
    ctx = np.asarray(context, dtype=np.float64)
    if ctx.ndim == 0:
        return local_requests(batch, gpus) * float(ctx)
    if ctx.shape != (batch,) or (ctx < 0).any():
        raise ValueError(f"context must be one length or {batch} non-negative lengths (one per request), "
                         f"got shape {ctx.shape}")
    ends = np.cumsum(local_requests(batch, gpus))
    return np.add.reduceat(np.append(ctx, 0.0), np.concatenate([[0], ends[:-1]]))[:gpus] * (local_requests(batch, gpus) > 0)


def dense_work(model: MoEModelSpec, system: SystemSpec, gpus: int, batch: int, context,
               full_attention: bool) -> DenseWork:
    """Non-expert work of one layer for `batch` decode tokens; `context` is the KV length of every request,
    or [batch] lengths, one per request."""
    d, bw, ba = model.hidden_size, model.bytes_per_weight, model.bytes_per_activation
    hd = model.head_dim or 128
    q_width = (model.num_attention_heads or max(d // hd, 1)) * hd
    kv_width = (model.num_kv_heads or max(q_width // (8 * hd), 1)) * hd
    tokens = local_requests(batch, gpus).astype(np.float64)  # one new token per request
    qkv_params = d * (q_width + 2 * kv_width)
    out_params = q_width * d + d * model.num_experts  # O projection + router
    kv = context_per_gpu(context, batch, gpus) * 2 * kv_width * ba if full_attention else np.zeros(gpus)
    gpu = system.require_gpu()
    shared_params = 3 * d * model.moe_intermediate_size * model.num_shared_experts
    return DenseWork(
        qkv_s=_gpu_time(system, qkv_params * bw, 2 * tokens * qkv_params),
        attn_gpu_s=kv / (gpu.eta_bw * gpu.ext_bw_bytes_per_s),
        attn_pim_s=kv / system.pim.internal_bw_bytes_per_s,
        out_router_s=_gpu_time(system, out_params * bw, 2 * tokens * out_params),
        shared_s=(_gpu_time(system, shared_params * bw, 2 * tokens * shared_params) if shared_params
                  else np.zeros(gpus)),
        allgather_s=0.0 if gpus == 1 else system.link.latency_s + model.num_experts * 4 * gpus / system.link.bw_bytes_per_s_per_dir,
        kv_bytes=kv,
    )
