"""GraphedGreedyDecoder: greedy decoding on a static cache, each decode step one CUDA graph replay on a GPU
(the same loop run eagerly on CPU, against transformers' own generate())."""
from __future__ import annotations

import pytest
import torch

import heteromoe
from heteromoe.integrations.graphs import GraphedGreedyDecoder
from tests.helpers import tiny_model

GEN = dict(do_sample=False, pad_token_id=0)


def _prompt(batch: int, length: int, device: str = "cpu") -> torch.Tensor:
    return torch.randint(1, 128, (batch, length), generator=torch.Generator().manual_seed(batch)).to(device)


@pytest.mark.parametrize("wrapped", [False, True])
def test_static_cache_loop_matches_generate_on_cpu(wrapped):
    model = tiny_model("qwen3_moe")
    runtime = heteromoe.wrap(model, policy="gpu-only", fused=True) if wrapped else None
    decoder = GraphedGreedyDecoder(model, max_cache_len=24)
    assert not decoder.use_graph  # CPU: the eager loop
    ids = _prompt(3, 6)
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=10, min_new_tokens=10, **GEN)
        assert torch.equal(decoder.generate(ids, 10), ref)
        assert torch.equal(decoder.generate(ids[:, :4], 10)[:, :14],  # a second call reuses the cache
                           model.generate(ids[:, :4], max_new_tokens=10, min_new_tokens=10, **GEN))
    if runtime is not None:
        assert runtime.executor.generic_reasons == {}
        runtime.unwrap()


def test_stop_token_pads_like_generate():
    """With eos_token_id the sequences that met it are padded after it, as generate() pads them; generate()
    stops once all have, so its result may be shorter but agrees wherever both have tokens."""
    model = tiny_model("qwen3_moe")
    decoder = GraphedGreedyDecoder(model, max_cache_len=40)
    ids = _prompt(4, 6)
    with torch.no_grad():
        free = decoder.generate(ids, 24)
        eos = int(free[0, 6 + 3])  # a token the first sequence generates: it ends there
        ref = model.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=0, eos_token_id=eos)
        out = decoder.generate(ids, 24, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(out[:, :ref.shape[1]], ref)
    assert (out[0, 6 + 4:] == 0).all() and out[0, 6 + 3] == eos
    if ref.shape[1] < out.shape[1]:  # generate() stopped: every sequence had ended, so ours are padding there
        assert (out[:, ref.shape[1]:] == 0).all()


def test_decoder_refuses_bad_requests_by_value():
    model = tiny_model("qwen3_moe")
    with pytest.raises(ValueError, match="CUDA device; it is on cpu"):
        GraphedGreedyDecoder(model, max_cache_len=16, use_graph=True)
    decoder = GraphedGreedyDecoder(model, max_cache_len=16)
    with pytest.raises(ValueError, match="prompt 10 \\+ 8 new tokens exceed max_cache_len 16"):
        decoder.generate(_prompt(2, 10), 8)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1, got 0"):
        decoder.generate(_prompt(2, 4), 0)
    with pytest.raises(ValueError, match="input_ids must be \\[batch, length\\]"):
        decoder.generate(torch.ones(4, dtype=torch.long), 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run `pytest -m gpu` on one)")
@pytest.mark.parametrize("policy", ["unwrapped", "gpu-only", "heteromoe-device-plan"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_graphed_decode_on_gpu(policy, dtype, caplog):
    """bf16: each decode step is one graph replay (unwrapped and wrapped, the plan made on the device); the
    replays repeat themselves exactly and start where the eager loop does (the capture builds an explicit
    attention mask where the eager step lets sdpa skip it, so bf16 may round differently later). fp32: the
    tokens are generate()'s, graphed where the step captures (the wrapped decode batch, gpu-only or planned on
    the device: one C++ call on the GEMV, both sides of the plan) and eagerly, with a warning naming why,
    where it does not (torch's float32 grouped_mm copies to the host: the unwrapped model)."""
    model = tiny_model("qwen3_moe", dtype=dtype).to("cuda")
    runtime = None
    if policy == "gpu-only":
        runtime = heteromoe.wrap(model, policy="gpu-only")
    elif policy == "heteromoe-device-plan":
        runtime = heteromoe.wrap(model, policy="heteromoe", plan_on_device=True)
    ids = _prompt(4, 6, "cuda")
    graphed = GraphedGreedyDecoder(model, max_cache_len=32)
    eager = GraphedGreedyDecoder(model, max_cache_len=32, use_graph=False)
    with torch.no_grad():
        first = graphed.generate(ids, 16)  # eager first step, capture, replays
        again = graphed.generate(ids, 16)  # replays only
        third = graphed.generate(ids, 16)
        loop = eager.generate(ids, 16)
        ref = model.generate(ids, max_new_tokens=16, min_new_tokens=16, **GEN)
    step = graphed._steps[4]
    assert torch.equal(again, third)
    if dtype == torch.bfloat16:
        assert step.graph is not None, step.capture_error
        assert torch.equal(first[:, :8], loop[:, :8])  # prompt, prefill token, the eager warm-up step's token
    else:
        assert (step.graph is not None) == (policy != "unwrapped"), step.capture_error
        if step.graph is None:
            assert "not captured in a CUDA graph" in caplog.text
        assert torch.equal(first, ref) and torch.equal(again, ref) and torch.equal(loop, ref)
    if runtime is not None:
        assert runtime.executor.generic_reasons == {}  # a failed capture did not turn the fused path off
        runtime.unwrap()
