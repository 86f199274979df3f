"""Does a setup fit? Weights and KV / recurrent state per GPU against the PIM-capable HBM capacity.

Attention is data-parallel, so every GPU holds all dense weights (attention / Gated DeltaNet projections,
router, shared experts, embedding and LM head) and the KV cache or recurrent state of its own requests;
the routed experts are spread over the GPUs (expert parallelism). Capacity: the preset's
`capacity_per_stack_bytes` x stacks (Sieve Table 1: 96 GB per GPU, PIM costs half of the 192 GB).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from heteromoe.sim.dense import context_per_gpu, local_requests
from heteromoe.sim.shapes import attention_shape, linear_attention_shape
from heteromoe.spec.hardware import SystemSpec
from heteromoe.spec.model import MoEModelSpec

__all__ = ["MemoryCheck", "memory_check"]


@dataclass(frozen=True)
class MemoryCheck:
    """Bytes per GPU (the fullest GPU)."""

    expert_weights: float
    dense_weights: float
    kv_and_state: float
    capacity: float

    @property
    def need(self) -> float:
        return self.expert_weights + self.dense_weights + self.kv_and_state

    @property
    def fits(self) -> bool:
        return self.capacity <= 0 or self.need <= self.capacity

    def as_dict(self) -> dict:
        return {**asdict(self), "need": self.need, "fits": self.fits}

    def describe(self) -> str:
        gb = 1e9
        verdict = "fits" if self.fits else "does NOT fit"
        return (f"{verdict}: {self.need / gb:.1f} GB per GPU (experts {self.expert_weights / gb:.1f}, dense "
                f"{self.dense_weights / gb:.1f}, KV/state {self.kv_and_state / gb:.1f}) of {self.capacity / gb:.0f} GB")


def memory_check(model: MoEModelSpec, system: SystemSpec, gpus: int, batch: int, context) -> MemoryCheck:
    """Bytes on the fullest GPU for `batch` requests of `context` KV tokens (one length, or [batch])."""
    d, bw, ba = model.hidden_size, model.bytes_per_weight, model.bytes_per_activation
    a, lin = attention_shape(model), linear_attention_shape(model)
    kv_width = a.kv_width
    interval = max(model.full_attention_interval, 1)
    full_layers = model.num_layers // interval
    linear_layers = model.num_layers - full_layers if model.has_linear_attention else 0
    full_layers = model.num_layers - linear_layers
    attn = a.qkv_shape()[0] * a.qkv_shape()[1] + a.out_shape[0] * a.out_shape[1]
    lin_params = lin.in_shape[0] * lin.in_shape[1] + lin.out_shape[0] * lin.out_shape[1]
    shared = 3 * d * model.moe_intermediate_size * model.num_shared_experts
    dense = (full_layers * attn + linear_layers * lin_params
             + model.num_moe_layers * (d * model.num_experts + shared) + 2 * model.vocab_size * d) * bw
    experts = model.num_moe_layers * -(-model.num_experts // gpus) * model.expert_weight_bytes
    requests = int(local_requests(batch, gpus).max())
    tokens = float(context_per_gpu(context, batch, gpus).max()) if np.ndim(context) else requests * float(context)
    state = lin.state_elements() * ba
    kv = full_layers * tokens * 2 * kv_width * ba + requests * linear_layers * state
    cap = system.pim.capacity_per_stack_bytes * system.pim.stacks_per_gpu
    return MemoryCheck(expert_weights=experts, dense_weights=dense, kv_and_state=kv, capacity=cap)
