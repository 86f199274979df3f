"""routing -> loads."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from heteromoe.routing import loads_from_topk


def test_loads_from_torch_tensor():
    top_k_index = torch.tensor([[0, 3], [3, 1], [0, 3]])
    loads = loads_from_topk(top_k_index, 4)
    assert loads.counts.tolist() == [2, 1, 0, 3]
    assert loads.num_tokens == 3 and loads.top_k == 2
    assert loads.pairs_of(3).tolist() == [1, 2, 5]  # flat pair index t*k+slot, token order
    assert loads.pairs_of(2).tolist() == []


def test_out_of_range_names_layer_and_id():
    with pytest.raises(ValueError, match=r"layer model.layers.1.mlp.experts: expert id 8 .* 8 experts"):
        loads_from_topk(np.array([[1, 8]]), 8, where="model.layers.1.mlp.experts")


def test_bad_shapes_and_dtypes():
    with pytest.raises(ValueError, match="2-D"):
        loads_from_topk(np.array([1, 2]), 4)
    with pytest.raises(ValueError, match="integers"):
        loads_from_topk(np.array([[0.5, 1.0]]), 4)
