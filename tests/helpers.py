"""Tiny random MoE models and experts modules for tests (built from configs: no hub access)."""
from __future__ import annotations

import torch

COMMON = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=128, pad_token_id=0, eos_token_id=None, bos_token_id=None)


def tiny_config(family: str, num_experts: int = 8, top_k: int = 2):
    import transformers as tf

    e, k = num_experts, top_k
    if family == "mixtral":
        return tf.MixtralConfig(**COMMON, intermediate_size=48, num_local_experts=e, num_experts_per_tok=k)
    if family == "qwen2_moe":
        return tf.Qwen2MoeConfig(**COMMON, intermediate_size=48, moe_intermediate_size=24,
                                 shared_expert_intermediate_size=32, num_experts=e, num_experts_per_tok=k)
    if family == "qwen3_moe":
        return tf.Qwen3MoeConfig(**COMMON, intermediate_size=48, moe_intermediate_size=24, num_experts=e,
                                 num_experts_per_tok=k, head_dim=8)
    if family == "olmoe":
        return tf.OlmoeConfig(**COMMON, intermediate_size=24, num_experts=e, num_experts_per_tok=k)
    if family == "gpt_oss":
        return tf.GptOssConfig(**COMMON, intermediate_size=24, num_local_experts=e, num_experts_per_tok=k, head_dim=8,
                               sliding_window=16, layer_types=["sliding_attention", "full_attention"])
    if family == "deepseek_v3":
        return tf.DeepseekV3Config(**{**COMMON, "num_key_value_heads": 4}, intermediate_size=48,
                                   moe_intermediate_size=24, n_routed_experts=e, num_experts_per_tok=k,
                                   n_shared_experts=1, first_k_dense_replace=1, n_group=2, topk_group=1,
                                   kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
                                   v_head_dim=8, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    if family == "glm4_moe":
        return tf.Glm4MoeConfig(**COMMON, intermediate_size=48, moe_intermediate_size=24, n_routed_experts=e,
                                num_experts_per_tok=k, n_shared_experts=1, first_k_dense_replace=1, n_group=1,
                                topk_group=1, head_dim=8)
    raise ValueError(family)


FAMILIES = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss", "deepseek_v3", "glm4_moe"]


def tiny_model(family: str, seed: int = 0, dtype=torch.float32, **kw):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **kw))
    _randomize_experts(model, seed)
    return model.to(dtype).eval()


def _randomize_experts(model, seed: int) -> None:
    """Random init leaves some expert tensors (biases) at zero; give them values so every term is tested."""
    g = torch.Generator().manual_seed(seed + 1)
    for name, p in model.named_parameters():
        if ".experts." in name or name.endswith("router.bias") or "e_score_correction_bias" in name:
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * 0.2)


def experts_module(family: str, num_experts: int = 8, seed: int = 0, dtype=torch.float32):
    """The experts module of a tiny model of `family` (a standalone module with random weights)."""
    model = tiny_model(family, seed=seed, dtype=dtype, num_experts=num_experts)
    return next(m for _, m in model.named_modules() if hasattr(m, "has_gate") and hasattr(m, "down_proj"))


def assert_wrapped_bf16_close(model, ids, policy: str = "sieve") -> None:
    """Wrapped vs unwrapped logits of a bf16 model: with 8 bits of mantissa, grouped GEMMs over subsets of
    the rows round differently from the unwrapped model's kernel, so compare at a bf16 tolerance."""
    import heteromoe

    with torch.no_grad():
        ref = model(ids).logits.float()
        runtime = heteromoe.wrap(model, policy=policy)
        out = model(ids).logits.float()
    runtime.unwrap()
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())


def failing_pim_backend(message: str, fail_on_call: int = 2):
    """A PIM backend with exact outputs that raises `message` on its `fail_on_call`-th call (mid-batch)."""
    from heteromoe.device import Backend, registry

    class FailsMidBatch(Backend):
        name = "fails-mid-batch"
        kind = "pim"

        def __init__(self):
            self.calls = 0

        def run_experts(self, layer, hidden, top_k_weights, work):
            self.calls += 1
            if self.calls == fail_on_call:
                raise RuntimeError(message)
            return registry.get("pim-emulator").run_experts(layer, hidden, top_k_weights, work)

    return FailsMidBatch()


def device_plan_setup(policy: str, fused, system: str = "h100-hbm3-pim"):
    """A tiny bf16 Qwen3-MoE layer on the GPU and an executor that plans on the device with `policy`:
    (layer, cost, executor, placement, top_k). The cost model has Qwen3-30B-A3B's expert shape with this
    model's expert count and top-k; the backends are the built-in torch / pim-emulator ones."""
    import dataclasses

    import numpy as np

    import heteromoe
    from heteromoe.cost.model import CostModel
    from heteromoe.device import registry
    from heteromoe.runtime.executor import MoEExecutor
    from heteromoe.runtime.layer import ExpertLayer
    from heteromoe.sched import get_policy
    from heteromoe.sched.placement import Placement

    model = tiny_model("qwen3_moe", dtype=torch.bfloat16).to("cuda")
    layer = ExpertLayer.from_module("layer0", model.model.layers[0].mlp.experts)
    top_k = model.config.num_experts_per_tok
    spec = dataclasses.replace(heteromoe.models.get("qwen3-30b-a3b"), num_experts=layer.num_experts, top_k=top_k)
    cost = CostModel(heteromoe.systems.get(system), spec)
    torch_backend = registry.get("torch")
    executor = MoEExecutor(get_policy(policy), torch_backend, registry.get("pim-emulator"), torch_backend,
                           fused=fused, plan_on_device=True)
    placement = Placement.from_homes(np.zeros(layer.num_experts, dtype=np.int64), 1)
    return layer, cost, executor, placement, top_k


def greedy_differences_off_ties(ref_step_logits, prompt_len: int, tokens: torch.Tensor,
                                ref_tokens: torch.Tensor) -> list[str]:
    """Where greedy `tokens` leave the reference's `ref_tokens` other than at an exact tie of the reference.

    `ref_step_logits` are the reference's logits at each generated step (`generate(..., output_logits=True,
    return_dict_in_generate=True).logits`: one [batch, vocab] tensor per new token). A row may differ from its
    first differing new token on only if, at that step, the reference's two largest logits are exactly equal
    and both tokens hold that value: in bf16 another summation order may then pick the other one. The
    continuations after such a tie are different texts and are not compared. Every other difference is
    returned as a line naming the row, step and the reference's margin; an empty list means "identical except
    at exact ties".
    """
    problems = []
    for row in range(ref_tokens.shape[0]):
        differ = (tokens[row, prompt_len:] != ref_tokens[row, prompt_len:]).nonzero()
        if differ.numel() == 0:
            continue
        step = int(differ[0, 0])
        logits = ref_step_logits[step][row].float()
        best = logits.max()
        ours, theirs = int(tokens[row, prompt_len + step]), int(ref_tokens[row, prompt_len + step])
        tied = int((logits == best).sum()) >= 2 and logits[ours] == best and logits[theirs] == best
        if not tied:
            second = logits.topk(2).values[1]
            problems.append(f"row {row}, new token {step}: {ours} instead of {theirs}, reference margin "
                            f"{float(best - second):.6g} (logit of ours {float(logits[ours]):.6g}, best {float(best):.6g})")
    return problems
