"""MoE model specs: the expert shapes and routing fan-out the cost models need."""
from __future__ import annotations

from dataclasses import dataclass

from heteromoe.spec._build import build_dataclass, load_toml, require_positive

__all__ = ["MoEModelSpec"]


@dataclass(frozen=True)
class MoEModelSpec:
    """One MoE model: SwiGLU experts of hidden `hidden_size` (d) and intermediate `moe_intermediate_size` (f).

    `bytes_per_weight` is 2 for bf16, 4.25/8 for MXFP4. `num_moe_layers` counts the layers that route
    (DeepSeek-V3's first dense layers do not).

    Hybrid models (Qwen3-Next, Qwen3.5) have one full-attention layer in `full_attention_interval`; the
    others are Gated DeltaNet linear-attention layers with `linear_num_key_heads` x `linear_key_head_dim`
    query/key and `linear_num_value_heads` x `linear_value_head_dim` value widths, a causal convolution of
    `linear_conv_kernel_dim` taps and a recurrent state of [value heads, key dim, value dim] per request
    (transformers' `Qwen3NextGatedDeltaNet` / `Qwen3_5MoeGatedDeltaNet`). `attn_output_gate`: the
    full-attention query projection also produces a sigmoid gate of the same width (Qwen3-Next, Qwen3.5).
    `vocab_size` sizes the embedding and LM head for the memory check (0: not counted).
    """

    name: str
    hidden_size: int
    moe_intermediate_size: int
    num_experts: int
    top_k: int
    num_layers: int
    num_moe_layers: int = 0
    num_shared_experts: int = 0
    bytes_per_weight: float = 2.0
    bytes_per_activation: float = 2.0
    num_attention_heads: int = 0
    num_kv_heads: int = 0
    head_dim: int = 0
    full_attention_interval: int = 1
    attn_output_gate: bool = False
    linear_num_key_heads: int = 0
    linear_num_value_heads: int = 0
    linear_key_head_dim: int = 0
    linear_value_head_dim: int = 0
    linear_conv_kernel_dim: int = 0
    vocab_size: int = 0
    hf_model_type: str = ""
    description: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        require_positive(self, "hidden_size", "moe_intermediate_size", "num_experts", "top_k", "num_layers",
                         "bytes_per_weight", "bytes_per_activation")
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} exceeds num_experts={self.num_experts} in model {self.name!r}")
        if self.num_moe_layers == 0:
            object.__setattr__(self, "num_moe_layers", self.num_layers)
        if not 0 < self.num_moe_layers <= self.num_layers:
            raise ValueError(f"num_moe_layers={self.num_moe_layers} must be in [1, num_layers={self.num_layers}]")

    @property
    def has_linear_attention(self) -> bool:
        """Layers that are not full attention are Gated DeltaNet layers (their shapes are given)."""
        return self.full_attention_interval > 1 and self.linear_num_value_heads > 0

    @property
    def expert_weight_bytes(self) -> float:
        """W_e = 3 d f bytes_per_weight: gate, up and down projections of one expert."""
        return 3.0 * self.hidden_size * self.moe_intermediate_size * self.bytes_per_weight

    @property
    def expert_flops_per_token(self) -> float:
        """6 d f: two FLOP per multiply-add over the three projections."""
        return 6.0 * self.hidden_size * self.moe_intermediate_size

    @classmethod
    def from_dict(cls, data: dict) -> MoEModelSpec:
        return build_dataclass(cls, dict(data), "model")

    @classmethod
    def from_toml(cls, path) -> MoEModelSpec:
        return cls.from_dict(load_toml(path))
