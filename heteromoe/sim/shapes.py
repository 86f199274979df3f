"""The attention and Gated DeltaNet shapes of a model, in one place for the step's work and the memory check.

Full attention: `heads` query heads and `kv_heads` KV heads of `head_dim` (a model that gives none: 128-wide
heads over the hidden size, one KV head per 8 query heads); with an output gate (Qwen3-Next, Qwen3.5) the
query projection is twice as wide. Gated DeltaNet (transformers `Qwen3NextGatedDeltaNet` /
`Qwen3_5MoeGatedDeltaNet`): fused q/k/v, z, a and b input projections, the output projection, and per request
a recurrent state [value heads, key dim, value dim] plus a causal-convolution state.
"""
from __future__ import annotations

from dataclasses import dataclass

from heteromoe.spec.model import MoEModelSpec

__all__ = ["AttentionShape", "LinearAttentionShape", "attention_shape", "linear_attention_shape"]


@dataclass(frozen=True)
class AttentionShape:
    """A full-attention layer's widths."""

    hidden: int
    head_dim: int
    heads: int
    kv_heads: int
    output_gate: bool

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def group(self) -> int:
        """Query heads per KV head (GQA): the GEMV vectors over one KV head's rows."""
        return max(self.heads // self.kv_heads, 1)

    def qkv_shape(self, gate: bool | None = None) -> tuple[int, int]:
        """(d_in, d_out) of the fused Q (x2 with the output gate), K and V projection."""
        g = self.output_gate if gate is None else gate
        return self.hidden, self.q_width * (2 if g else 1) + 2 * self.kv_width

    @property
    def out_shape(self) -> tuple[int, int]:
        return self.q_width, self.hidden


@dataclass(frozen=True)
class LinearAttentionShape:
    """A Gated DeltaNet layer's widths."""

    hidden: int
    key_heads: int
    key_head_dim: int
    value_heads: int
    value_head_dim: int
    conv_kernel: int

    @property
    def key_dim(self) -> int:
        return self.key_heads * self.key_head_dim

    @property
    def value_dim(self) -> int:
        return self.value_heads * self.value_head_dim

    @property
    def in_shape(self) -> tuple[int, int]:
        """(d_in, d_out) of the fused q/k/v, z, a and b projections."""
        return self.hidden, 2 * self.key_dim + 2 * self.value_dim + 2 * self.value_heads

    @property
    def out_shape(self) -> tuple[int, int]:
        return self.value_dim, self.hidden

    def state_elements(self) -> int:
        """Recurrent state [value heads, key head dim, value head dim] plus the convolution state."""
        return (self.value_heads * self.key_head_dim * self.value_head_dim
                + (2 * self.key_dim + self.value_dim) * max(self.conv_kernel - 1, 0))


def attention_shape(model: MoEModelSpec) -> AttentionShape:
    hd = model.head_dim or 128
    heads = model.num_attention_heads or max(model.hidden_size // hd, 1)
    return AttentionShape(hidden=model.hidden_size, head_dim=hd, heads=heads,
                          kv_heads=model.num_kv_heads or max(heads // 8, 1), output_gate=model.attn_output_gate)


def linear_attention_shape(model: MoEModelSpec) -> LinearAttentionShape:
    return LinearAttentionShape(hidden=model.hidden_size, key_heads=model.linear_num_key_heads,
                                key_head_dim=model.linear_key_head_dim, value_heads=model.linear_num_value_heads,
                                value_head_dim=model.linear_value_head_dim, conv_kernel=model.linear_conv_kernel_dim)
