"""Attention and Gated DeltaNet shapes: one source for the step's work and the memory check."""
from __future__ import annotations

import dataclasses

import heteromoe
from heteromoe.sim.shapes import attention_shape, linear_attention_shape


def test_gqa_widths_and_group():
    a = attention_shape(heteromoe.models.get("qwen3-30b-a3b"))  # 32 query heads, 4 KV heads of 128
    assert (a.q_width, a.kv_width, a.group) == (4096, 512, 8)
    assert a.qkv_shape() == (2048, 4096 + 2 * 512) and a.out_shape == (4096, 2048)


def test_output_gate_doubles_the_query_projection():
    a = attention_shape(heteromoe.models.get("qwen3.5-397b-a17b"))
    assert a.output_gate and a.group == 16
    assert a.qkv_shape()[1] == 2 * a.q_width + 2 * a.kv_width
    assert a.qkv_shape(gate=False)[1] == a.q_width + 2 * a.kv_width


def test_fallback_heads_when_a_model_gives_none():
    spec = dataclasses.replace(heteromoe.models.get("qwen3-30b-a3b"), num_attention_heads=0, num_kv_heads=0,
                               head_dim=0)
    a = attention_shape(spec)
    assert (a.head_dim, a.heads, a.kv_heads) == (128, spec.hidden_size // 128, spec.hidden_size // 128 // 8)


def test_gated_deltanet_shapes():
    lin = linear_attention_shape(heteromoe.models.get("qwen3.5-397b-a17b"))  # 16 key / 64 value heads of 128
    assert (lin.key_dim, lin.value_dim) == (2048, 8192)
    assert lin.in_shape == (lin.hidden, 2 * 2048 + 2 * 8192 + 2 * 64)
    assert lin.state_elements() == 64 * 128 * 128 + (2 * 2048 + 8192) * 3
