"""The wrapped model on a CUDA GPU (torch + pim-emulator backends on the device that holds the weights)."""
from __future__ import annotations

import pytest
import torch

import heteromoe
from tests.helpers import assert_wrapped_bf16_close, tiny_model

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run `pytest -m gpu` on one)")]


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss", "mixtral", "deepseek_v3"])
def test_wrapped_model_matches_on_gpu_fp32(family):
    model = tiny_model(family).to("cuda")
    ids = torch.randint(1, 128, (4, 6), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    gen = dict(max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ref_logits, ref_tokens = model(ids).logits, model.generate(ids, **gen)
        runtime = heteromoe.wrap(model, policy="sieve")
        logits, tokens = model(ids).logits, model.generate(ids, **gen)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-4)
    assert torch.equal(tokens, ref_tokens)
    assert runtime.executor.gpu_backend.kind == "gpu"
    assert sum(layer["pim_tokens"] for layer in runtime.report()["layers"]) > 0
    runtime.unwrap()


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss"])
def test_wrapped_model_bf16_on_gpu(family):
    model = tiny_model(family, dtype=torch.bfloat16).to("cuda")
    ids = torch.randint(1, 128, (8, 6), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    assert_wrapped_bf16_close(model, ids)
