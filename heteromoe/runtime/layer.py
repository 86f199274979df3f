"""ExpertLayer: one HF experts module's weights and layout facts, as data.

transformers 5.x stores experts as fused 3D tensors and records the layout as flags set by
`@use_experts_implementation` (`has_gate`, `has_bias`, `is_transposed`, `is_concatenated`) plus the
module's own `_apply_gate`. Backends read these instead of subclassing per model family.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ExpertLayer", "expert_forward"]


@dataclass(eq=False)
class ExpertLayer:
    """A view of one experts module.

    Attributes:
        name: qualified module name in the model (e.g. `model.layers.3.mlp.experts`).
        module: the experts module itself (weights stay there; nothing is copied).
        num_experts: E.
        hidden_size: d.
        intermediate_size: f (per expert, after gating).
        is_transposed: weights are [E, in, out] (GPT-OSS) rather than [E, out, in].
        has_gate: fused gate_up projection followed by `_apply_gate`; else up_proj + act_fn.
        has_bias: projections carry biases.
    """

    name: str
    module: torch.nn.Module
    num_experts: int
    hidden_size: int
    intermediate_size: int
    is_transposed: bool
    has_gate: bool
    has_bias: bool
    has_post_expert_norm: bool = False

    @classmethod
    def from_module(cls, name: str, module: torch.nn.Module) -> ExpertLayer:
        has_gate = bool(getattr(module, "has_gate", True))
        up = module.gate_up_proj if has_gate else module.up_proj
        down = module.down_proj
        transposed = bool(getattr(module, "is_transposed", False))
        if up.dim() != 3 or down.dim() != 3:
            raise ValueError(f"layer {name}: expected 3-D fused expert weights, got {tuple(up.shape)} and {tuple(down.shape)}")
        num_experts = int(up.shape[0])
        hidden = int(down.shape[2] if transposed else down.shape[1])
        inter = int(down.shape[1] if transposed else down.shape[2])
        return cls(name=name, module=module, num_experts=num_experts, hidden_size=hidden, intermediate_size=inter,
                   is_transposed=transposed, has_gate=has_gate, has_bias=bool(getattr(module, "has_bias", False)),
                   has_post_expert_norm=bool(getattr(module, "has_post_expert_norm", False)))

    # -- weights ---------------------------------------------------------------------------------
    @property
    def up_weight(self) -> torch.Tensor:
        """[E, 2f or f, d] ([E, d, 2f or f] if transposed)."""
        return self.module.gate_up_proj if self.has_gate else self.module.up_proj

    @property
    def up_bias(self) -> torch.Tensor | None:
        if not self.has_bias:
            return None
        return self.module.gate_up_proj_bias if self.has_gate else self.module.up_proj_bias

    @property
    def down_weight(self) -> torch.Tensor:
        """[E, d, f] ([E, f, d] if transposed)."""
        return self.module.down_proj

    @property
    def down_bias(self) -> torch.Tensor | None:
        return self.module.down_proj_bias if self.has_bias else None

    @property
    def dtype(self) -> torch.dtype:
        return self.down_weight.dtype

    @property
    def device(self) -> torch.device:
        return self.down_weight.device

    # -- the pieces every backend shares -----------------------------------------------------------
    def activate(self, up_out: torch.Tensor) -> torch.Tensor:
        """[n, 2f] -> [n, f] through the module's own gate (GPT-OSS clamps and adds 1), or act_fn."""
        if self.has_gate:
            return self.module._apply_gate(up_out)
        return self.module.act_fn(up_out)

    def post_norm(self, out: torch.Tensor) -> torch.Tensor:
        return self.module.post_expert_norm(out) if self.has_post_expert_norm else out


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, transposed: bool) -> torch.Tensor:
    out = x @ weight if transposed else torch.nn.functional.linear(x, weight)
    return out + bias if bias is not None else out


def expert_forward(layer: ExpertLayer, expert: int, x: torch.Tensor) -> torch.Tensor:
    """The plain reference: expert `expert` applied to `x [n, d]` -> `[n, d]` (unweighted).

    Computes in the weights' dtype, as transformers' own implementations do.
    """
    x = x.to(layer.dtype)
    ub = layer.up_bias[expert] if layer.up_bias is not None else None
    db = layer.down_bias[expert] if layer.down_bias is not None else None
    h = layer.activate(_linear(x, layer.up_weight[expert], ub, layer.is_transposed))  # (n, f)
    return layer.post_norm(_linear(h, layer.down_weight[expert], db, layer.is_transposed))  # (n, d)
