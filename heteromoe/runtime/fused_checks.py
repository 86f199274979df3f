"""What the fused layer path can run: the layer shapes, dtypes and devices its kernels take, and whether a
module's gate is the SiLU gate the kernels compute themselves (`runtime.fused.FusedLayerPath` asks both)."""
from __future__ import annotations

import torch

from heteromoe import kernels
from heteromoe.runtime.layer import ExpertLayer

__all__ = ["gate_is_silu_chunk", "unsupported_reason"]

_CUDA_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _silu_classes() -> tuple[type, ...]:
    """The activation classes that compute SiLU: torch's and transformers' own (`ACT2FN["silu"]`), where
    the installed transformers has it."""
    from transformers import activations as hf_activations

    hf_silu = getattr(hf_activations, "SiLUActivation", None)
    return (torch.nn.SiLU,) + ((hf_silu,) if isinstance(hf_silu, type) else ())


def gate_is_silu_chunk(layer: ExpertLayer) -> bool:
    """True where the module gates as transformers' default: silu(gate) * up over [gate; up] halves.

    The activation is recognized by class (a subclass under another name is still SiLU), not by class name
    (a class merely named SiLU is not): the fused kernels compute SiLU themselves."""
    from transformers.integrations import moe as hf_moe

    module = layer.module
    default_gate = getattr(hf_moe, "_default_apply_gate", None)
    gate_fn = getattr(type(module), "_apply_gate", None)
    silu = isinstance(getattr(module, "act_fn", None), _silu_classes())
    return layer.has_gate and gate_fn is not None and gate_fn is default_gate and silu


def unsupported_reason(layer: ExpertLayer, hidden: torch.Tensor) -> str | None:
    """Why the fused path cannot run this layer call (None: it can)."""
    if layer.is_transposed or layer.has_bias or layer.has_post_expert_norm:
        return "transposed weights, biases or a post-expert norm (GPT-OSS-style layers) use the generic path"
    if hidden.device != layer.device:
        return f"hidden states on {hidden.device}, weights on {layer.device}"
    if hidden.is_cuda:
        if not kernels.HAS_CUDA_KERNELS:
            return f"heteromoe._cuda is not built ({kernels.cuda_load_error})"
        if layer.dtype not in _CUDA_DTYPES:
            return f"dtype {layer.dtype} has no CUDA kernel"
        if layer.hidden_size % 8 or layer.intermediate_size % 8:
            return "hidden and intermediate sizes must be multiples of 8"
        return None
    if hidden.device.type == "cpu":
        return None if layer.dtype == torch.float32 else f"CPU kernels are float32, the layer is {layer.dtype}"
    return f"no kernels for device {hidden.device}"
