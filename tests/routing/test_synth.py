"""The synthetic generator reproduces the published bimodal skew."""
from __future__ import annotations

import numpy as np
import pytest

from heteromoe.routing.synth import (
    PUBLISHED_ONE_TOKEN_SHARE,
    BimodalRouting,
    one_token_share,
)


@pytest.mark.parametrize("model", sorted(PUBLISHED_ONE_TOKEN_SHARE))
@pytest.mark.parametrize("batch_index,batch", [(0, 64), (1, 256)])
def test_one_token_share_within_3_points_of_published(model, batch_index, batch):
    gen = BimodalRouting.for_model(model, seed=11)
    ids = gen.decode(batch, steps=4, layers=48)  # (steps, layers, batch, k): a model's worth of layers
    counts = np.stack([np.bincount(s.reshape(-1), minlength=gen.num_experts) for s in ids.reshape(-1, batch, gen.top_k)])
    measured = 100 * one_token_share(counts)
    assert measured == pytest.approx(PUBLISHED_ONE_TOKEN_SHARE[model][batch_index], abs=3.0)


def test_uniform_routing_has_almost_no_single_token_experts_at_batch_256():
    gen = BimodalRouting(num_experts=128, top_k=8, hot_share=0.0, ratio=1.0, seed=0)
    assert 100 * one_token_share(gen.counts(256, 20)) < 1.0


def test_temporal_correlation_and_layer_variation():
    gen = BimodalRouting.for_model("qwen3-30b-a3b", seed=0)
    ids = gen.decode(64, steps=20, layers=2)
    counts = np.stack([[np.bincount(ids[s, layer].reshape(-1), minlength=128) for layer in range(2)] for s in range(20)])
    corr = lambda a, b: float(np.corrcoef(a, b)[0, 1])
    next_step = np.mean([corr(counts[s, 0], counts[s + 1, 0]) for s in range(19)])
    other_layer = np.mean([corr(counts[s, 0], counts[s, 1]) for s in range(20)])
    # consecutive steps of one layer share their hot experts; two layers have different hot sets
    assert next_step > 0.5 and next_step > other_layer + 0.3
    for row in ids.reshape(-1, 8):
        assert len(set(row.tolist())) == 8  # k distinct experts per token


def test_bad_generator_arguments():
    with pytest.raises(ValueError, match="top_k=9 must be in"):
        BimodalRouting(num_experts=8, top_k=9)
    with pytest.raises(ValueError, match="batch, steps and layers must be >= 1"):
        BimodalRouting(num_experts=8, top_k=2).decode(0, 1)
