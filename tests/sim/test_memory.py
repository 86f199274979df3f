"""The memory check: what fits in the PIM-capable HBM of a GPU."""
from __future__ import annotations

import pytest

import heteromoe
from heteromoe.sim import memory_check


def test_the_issues_examples_do_not_fit():
    b200 = heteromoe.systems.get("b200-hbm3e-pim")
    qwen3 = memory_check(heteromoe.models.get("qwen3-30b-a3b"), b200, 1, 256, 2048)
    assert not qwen3.fits and qwen3.capacity == pytest.approx(96e9)
    # 48 layers x 4 KV heads x 128 x 2 (K, V) x 2 B x 2048 tokens x 256 requests
    assert qwen3.kv_and_state == pytest.approx(48 * 4 * 128 * 2 * 2 * 2048 * 256)
    assert 55e9 < qwen3.expert_weights + qwen3.dense_weights < 65e9  # ~30.5 B parameters in bf16
    qwen35 = memory_check(heteromoe.models.get("qwen3.5-397b-a17b"), b200, 8, 256, 2048)
    assert not qwen35.fits
    assert 8 * qwen35.expert_weights + qwen35.dense_weights > 768e9  # ~397 B parameters in bf16 > 8 x 96 GB
    assert memory_check(heteromoe.models.get("qwen3-30b-a3b"), b200, 1, 16, 2048).fits
    assert "does NOT fit" in qwen3.describe()
