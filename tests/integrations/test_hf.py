"""heteromoe.wrap() on tiny random transformers models of every supported family."""
from __future__ import annotations

import json

import pytest
import torch

import heteromoe
from heteromoe.integrations.hf import UnsupportedModelError
from tests.helpers import COMMON, FAMILIES, assert_wrapped_bf16_close, tiny_model

REPORT_KEYS = {"name", "calls", "tokens", "gpu_experts", "pim_experts", "gpu_tokens", "pim_tokens", "t_comm_s",
               "t_gpu_s", "t_pim_s"}


def prompt(batch=2, length=5, seed=0):
    return torch.randint(1, COMMON["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))


def greedy(model, ids, n=16):
    return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_fp32_logits_and_greedy_tokens_match(family):
    model = tiny_model(family)
    ids = prompt()
    with torch.no_grad():
        ref_logits = model(ids).logits
        ref_tokens = greedy(model, ids)
        runtime = heteromoe.wrap(model, system="h100-hbm3-pim", policy="sieve")
        assert runtime.model is model
        logits = model(ids).logits
        tokens = greedy(model, ids)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)
    assert torch.equal(tokens, ref_tokens)
    report = runtime.report()
    json.dumps(report)
    layers = report["layers"]
    assert layers and all(REPORT_KEYS <= set(layer) for layer in layers)
    assert all(layer["calls"] == 1 + 16 for layer in layers)  # one forward + prefill and 15 decode steps
    assert sum(layer["pim_tokens"] for layer in layers) > 0, "sieve at small batch must use the emulated PIM path"
    for layer in layers:
        assert layer["gpu_tokens"] + layer["pim_tokens"] == layer["pairs"]
    runtime.unwrap()


@pytest.mark.parametrize("policy", ["gpu-only", "all-exp", "sieve"])
@pytest.mark.parametrize("gpus", [1, 4])
def test_every_policy_is_exact(policy, gpus):
    model = tiny_model("qwen2_moe")
    ids = prompt(batch=3, length=7, seed=1)
    with torch.no_grad():
        ref = model(ids).logits
        runtime = heteromoe.wrap(model, policy=policy, gpus=gpus)
        out = model(ids).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    report = runtime.report()
    if policy == "gpu-only":
        assert all(layer["pim_tokens"] == 0 and layer["t_pim_s"] == 0 for layer in report["layers"])
    if policy == "all-exp":
        assert all(layer["gpu_tokens"] == 0 and layer["t_gpu_s"] == 0 for layer in report["layers"])
    assert report["num_gpus"] == gpus
    if gpus > 1:
        assert all(layer["t_comm_s"] > 0 for layer in report["layers"])
    runtime.unwrap()


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_within_dtype_tolerance(family):
    assert_wrapped_bf16_close(tiny_model(family, dtype=torch.bfloat16), prompt(batch=2, length=6))


def test_unwrap_restores_previous_implementation():
    from transformers.integrations.moe import ExpertsInterface

    model = tiny_model("olmoe")
    before = model.config._experts_implementation
    runtime = heteromoe.wrap(model)
    name = model.config._experts_implementation
    assert name.startswith("heteromoe_") and name in ExpertsInterface._global_mapping
    runtime.unwrap()
    assert model.config._experts_implementation == before
    assert name not in ExpertsInterface._global_mapping
    ids = prompt()
    with torch.no_grad():
        model(ids)
    assert runtime.report()["layers"][0]["calls"] == 0  # nothing ran through heteromoe after unwrap


def test_two_wrapped_models_are_independent():
    a, b = tiny_model("qwen3_moe", seed=0), tiny_model("qwen3_moe", seed=1)
    ids = prompt()
    with torch.no_grad():
        ref_a, ref_b = a(ids).logits, b(ids).logits
        ra, rb = heteromoe.wrap(a, policy="gpu-only"), heteromoe.wrap(b, policy="all-exp")
        torch.testing.assert_close(a(ids).logits, ref_a, rtol=0, atol=1e-5)
        torch.testing.assert_close(b(ids).logits, ref_b, rtol=0, atol=1e-5)
    assert ra.report()["layers"][0]["pim_tokens"] == 0 and rb.report()["layers"][0]["gpu_tokens"] == 0
    ra.unwrap()
    rb.unwrap()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_inf_propagate_as_unwrapped(bad):
    model = tiny_model("mixtral")
    ids = prompt(batch=2, length=4)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        embeds[1, 2, 3] = bad
        ref = model(inputs_embeds=embeds).logits
        runtime = heteromoe.wrap(model, policy="sieve")
        out = model(inputs_embeds=embeds).logits
    assert not torch.isfinite(ref).all()  # the bad value did reach the output
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5, equal_nan=True)
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    runtime.unwrap()


def test_expert_id_out_of_range_names_layer_and_id():
    model = tiny_model("qwen3_moe")
    runtime = heteromoe.wrap(model)
    experts = runtime.layers[1].module
    hidden = torch.randn(3, 32)
    with pytest.raises(ValueError, match=r"layer model.layers.1.mlp.experts: expert id 8 "):
        experts(hidden, torch.tensor([[0, 1], [2, 8], [3, 4]]), torch.rand(3, 2))
    runtime.unwrap()


def test_preset_with_wrong_expert_count_is_refused():
    model = tiny_model("qwen3_moe")
    with pytest.raises(ValueError, match="preset 'qwen3-30b-a3b' has 128 experts but layer model.layers.0.mlp.experts"):
        heteromoe.wrap(model, model_spec="qwen3-30b-a3b")
    assert model.config._experts_implementation == "grouped_mm"  # left untouched


def test_matching_preset_times_with_real_shapes():
    from heteromoe.cost import default_pim_cost

    system = heteromoe.systems.get("h100-hbm3-pim")
    model = tiny_model("qwen3_moe", num_experts=128, top_k=8)
    runtime = heteromoe.wrap(model, system=system, policy="all-exp", model_spec="qwen3-30b-a3b")
    with torch.no_grad():
        model(prompt())
    layer = runtime.report()["layers"][0]
    pim = default_pim_cost(system, heteromoe.models.get("qwen3-30b-a3b"))  # the real 2048x768 experts
    per_token = float(pim.times_s([1])[0])
    assert layer["pim_tokens"] == 2 * 5 * 8
    assert layer["t_pim_s"] == pytest.approx(layer["pim_tokens"] * per_token)
    runtime.unwrap()


def test_bad_system_and_policy_and_backend_names():
    model = tiny_model("qwen3_moe")
    with pytest.raises(KeyError, match="known presets"):
        heteromoe.wrap(model, system="h100-hbm9")
    with pytest.raises(ValueError, match="has no GPU"):
        heteromoe.wrap(model, system="samsung-hbm2-pim")
    with pytest.raises(ValueError, match="unknown policy"):
        heteromoe.wrap(model, policy="fastest")
    with pytest.raises(KeyError, match="unknown backend"):
        heteromoe.wrap(model, pim_backend="real-pim")
    bf16 = tiny_model("qwen3_moe", dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="numba-cpu.*bfloat16"):
        heteromoe.wrap(bf16, gpu_backend="numba-cpu")
    assert model.config._experts_implementation == "grouped_mm"


@pytest.mark.parametrize("kw,message", [
    (dict(gpus=4, replicas_per_gpu=-1), r"replicas_per_gpu must be an integer >= 0, got -1 \(0: no replicas"),
    (dict(gpus=4, replicas_per_gpu=1.5), "replicas_per_gpu must be an integer >= 0, got 1.5"),
    (dict(gpus=4, replicas_per_gpu=1, replan_every=0), "replan_every must be an integer >= 1, got 0"),
])
def test_bad_replica_options_name_the_option(kw, message):
    model = tiny_model("qwen3_moe")
    with pytest.raises(heteromoe.UserError, match=message) as exc:
        heteromoe.wrap(model, **kw)
    assert "slots_per_gpu" not in str(exc.value)
    assert model.config._experts_implementation == "grouped_mm"


def test_numba_backend_wraps_fp32_model():
    model = tiny_model("gpt_oss")
    ids = prompt()
    with torch.no_grad():
        ref = model(ids).logits
        runtime = heteromoe.wrap(model, policy="gpu-only", gpu_backend="numba-cpu")
        out = model(ids).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    assert runtime.report()["backends"]["gpu"] == "numba-cpu"
    runtime.unwrap()


# -- families that bypass the interface, and models without MoE ---------------------------------------------

def test_dbrx_is_refused_naming_the_class():
    from transformers import AutoModelForCausalLM, DbrxConfig

    config = DbrxConfig(d_model=32, n_heads=4, n_layers=1, max_seq_len=64, vocab_size=128,
                        attn_config={"kv_n_heads": 2, "rope_theta": 10000.0}, ffn_config={"ffn_hidden_size": 24, "moe_num_experts": 4, "moe_top_k": 2},
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(UnsupportedModelError, match="DbrxExperts .*bypasses transformers' ExpertsInterface"):
        heteromoe.wrap(model)


def test_llama4_is_refused_naming_the_class():
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    config = Llama4TextConfig(vocab_size=128, hidden_size=32, intermediate_size=24, intermediate_size_mlp=48,
                              num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                              num_local_experts=4, num_experts_per_tok=1)
    model = Llama4ForCausalLM(config)
    with pytest.raises(UnsupportedModelError, match="Llama4TextExperts"):
        heteromoe.wrap(model)


def test_gpt_oss_native_mxfp4_is_refused():
    model = tiny_model("gpt_oss")

    class Mxfp4GptOssExperts(torch.nn.Module):  # what transformers swaps in for native MXFP4 weights
        def __init__(self):
            super().__init__()
            self.gate_up_proj = torch.nn.Parameter(torch.zeros(8, 48, 16, dtype=torch.uint8), requires_grad=False)

    model.model.layers[1].mlp.experts = Mxfp4GptOssExperts()
    with pytest.raises(UnsupportedModelError, match="Mxfp4GptOssExperts .*bypasses"):
        heteromoe.wrap(model)


def test_model_without_moe_is_refused():
    from transformers import AutoModelForCausalLM, LlamaConfig

    model = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=48,
                                                         num_hidden_layers=1, num_attention_heads=4))
    with pytest.raises(UnsupportedModelError, match="LlamaForCausalLM: it has no MoE layers"):
        heteromoe.wrap(model)
    with pytest.raises(UnsupportedModelError, match="Linear: not a transformers PreTrainedModel"):
        heteromoe.wrap(torch.nn.Linear(2, 2))
