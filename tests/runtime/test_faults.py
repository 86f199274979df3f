"""Fault injection through `wrap()` and `generate()`: a backend whose output is wrong in form or value is
caught, its slice re-runs on the fallback backend, the layer counts it, and the text is the unwrapped
model's."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import heteromoe
from heteromoe.device import Backend, registry
from heteromoe.runtime.executor import BackendOutputError, check_backend_output
from heteromoe.runtime.work import WorkSlice
from tests.helpers import COMMON, tiny_model

NEW_TOKENS = 6


def _nan(out):
    out = out.clone()
    out[0, 0] = float("nan")
    return out


def _inf(out):
    out = out.clone()
    out[-1, -1] = float("-inf")
    return out


#: name -> (what the faulty backend returns instead of the right output, fail on every call?)
FAULTS = {
    "raises-once": None,
    "raises-always": None,
    "nan": _nan,
    "inf": _inf,
    "short": lambda out: out[:-1],
    "transposed": lambda out: out.t(),
    "wrong-dtype": lambda out: out.to(torch.float16),
    "wrong-device": lambda out: torch.empty(out.shape, dtype=out.dtype, device="meta"),
    "not-a-tensor": lambda out: out.tolist(),
}


class FaultyPim(Backend):
    """The pim-emulator's exact outputs, corrupted (or replaced by an exception) on chosen calls."""

    name = "faulty-pim"
    kind = "pim"

    def __init__(self, fault: str) -> None:
        self.fault = fault
        self.calls = 0
        self.faults = 0

    def run_experts(self, layer, hidden, top_k_weights, work):
        self.calls += 1
        out = registry.get("pim-emulator").run_experts(layer, hidden, top_k_weights, work)
        if self.fault == "raises-once":
            if self.calls == 1:
                self.faults += 1
                raise RuntimeError("PIM channel 5 stopped answering")
            return out
        if self.fault == "raises-always":
            self.faults += 1
            raise RuntimeError("PIM device lost")
        if self.fault == "transposed" and work.num_pairs == hidden.shape[-1]:
            return out  # a square slice transposed has the right form: no check on form can see it
        self.faults += 1
        return FAULTS[self.fault](out)


def _generate(model, ids):
    return model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_faulty_backend_falls_back_and_generates_the_unwrapped_tokens(fault, caplog):
    model = tiny_model("mixtral")
    ids = torch.randint(1, COMMON["vocab_size"], (2, 5), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = _generate(model, ids)
        backend = FaultyPim(fault)
        runtime = heteromoe.wrap(model, policy="all-exp", pim_backend=backend)  # every pair on the PIM side
        with caplog.at_level(logging.WARNING, logger="heteromoe.runtime.executor"):
            out = _generate(model, ids)
    runtime.unwrap()
    assert torch.equal(out, ref)
    layers = runtime.report()["layers"]
    assert backend.calls == sum(layer["calls"] for layer in layers) == 2 * NEW_TOKENS  # two layers
    assert backend.faults >= 1
    assert sum(layer["fallbacks"] for layer in layers) == backend.faults  # each fault counted once
    assert "backend 'faulty-pim'" in caplog.text and "layer model.layers." in caplog.text
    assert caplog.text.count("re-running them on 'torch'") == backend.faults


def test_non_finite_inputs_propagate_without_fallbacks():
    """NaN in the layer's inputs makes NaN in the honest backend's output: that is no fault."""
    model = tiny_model("mixtral")
    ids = torch.randint(1, COMMON["vocab_size"], (2, 4), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        embeds[1, 2, 3] = float("nan")
        ref = model(inputs_embeds=embeds).logits
        runtime = heteromoe.wrap(model, policy="all-exp")
        out = model(inputs_embeds=embeds).logits
    runtime.unwrap()
    assert torch.isnan(ref).any()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5, equal_nan=True)
    assert all(layer["fallbacks"] == 0 for layer in runtime.report()["layers"])


def _slice(pairs: int, top_k: int = 1) -> WorkSlice:
    return WorkSlice(experts=np.array([0]), offsets=np.array([0, pairs]), pair_index=np.arange(pairs), top_k=top_k)


def test_check_backend_output_names_each_defect():
    hidden, weights = torch.randn(3, 4), torch.rand(3, 1)
    work = _slice(3)
    good = torch.randn(3, 4)
    assert check_backend_output(good, work, hidden, weights, torch.float32) is None
    assert "shape (2, 4), expected (3, 4)" in check_backend_output(good[:2], work, hidden, weights, torch.float32)
    assert "dtype torch.float64" in check_backend_output(good.double(), work, hidden, weights, torch.float32)
    assert "not a torch.Tensor" in check_backend_output(good.numpy(), work, hidden, weights, torch.float32)
    bad = good.clone()
    bad[1, 2] = float("inf")
    assert "non-finite values in 1 of 3 rows" in check_backend_output(bad, work, hidden, weights, torch.float32)
    assert check_backend_output(bad, work, hidden, weights, torch.float32, finite=False) is None
    hidden[1, 0] = float("nan")  # the row's own input is NaN: its non-finite output is explained
    assert check_backend_output(bad, work, hidden, weights, torch.float32) is None


def test_a_fallback_backend_with_a_wrong_form_raises_naming_it():
    model = tiny_model("qwen3_moe")
    runtime = heteromoe.wrap(model, policy="all-exp", pim_backend=FaultyPim("short"),
                             fallback_backend=FaultyPim("wrong-dtype"))
    ids = torch.randint(1, COMMON["vocab_size"], (1, 3))
    with torch.no_grad(), pytest.raises(BackendOutputError, match="fallback backend 'faulty-pim' returned dtype"):
        model(ids)
    runtime.unwrap()


def test_non_finite_weights_fall_back_and_keep_the_unwrapped_output():
    """Experts whose weights hold NaN make NaN from finite inputs: flagged and re-run, and the fallback's
    output (NaN as well) is what the unwrapped model gives."""
    model = tiny_model("mixtral")
    with torch.no_grad():
        model.model.layers[1].mlp.experts.down_proj[:, 0, 0] = float("nan")  # every expert of the last layer
        ids = torch.randint(1, COMMON["vocab_size"], (3, 6), generator=torch.Generator().manual_seed(2))
        ref = model(ids).logits
        runtime = heteromoe.wrap(model, policy="all-exp")
        out = model(ids).logits
    runtime.unwrap()
    assert torch.isnan(ref).any()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5, equal_nan=True)
    layers = runtime.report()["layers"]
    assert layers[0]["fallbacks"] == 0 and layers[1]["fallbacks"] == 1
