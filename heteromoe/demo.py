"""The demo job: a tiny random Qwen3-MoE model, wrapped, generating; prints the per-layer split.

It checks numerical truth as it goes: the wrapped model's greedy tokens must equal the unwrapped ones.
"""
from __future__ import annotations

import torch

__all__ = ["run_demo", "tiny_qwen3_moe"]


def tiny_qwen3_moe(seed: int = 0, num_experts: int = 32, top_k: int = 4, layers: int = 2):
    """A randomly initialised Qwen3-MoE causal LM small enough for any CPU (built from a config, no hub)."""
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    config = Qwen3MoeConfig(vocab_size=256, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                            num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                            num_experts=num_experts, num_experts_per_tok=top_k, max_position_embeddings=256,
                            pad_token_id=0, eos_token_id=None, bos_token_id=None)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def run_demo(system: str = "h100-hbm3-pim", policy: str = "sieve", batch: int = 4, new_tokens: int = 8,
             seed: int = 0, out=print) -> dict:
    import heteromoe

    if batch < 1 or new_tokens < 1:
        raise ValueError(f"batch and new_tokens must be >= 1, got batch={batch}, new_tokens={new_tokens}")
    model = tiny_qwen3_moe(seed)
    prompt = torch.randint(1, model.config.vocab_size, (batch, 6), generator=torch.Generator().manual_seed(seed))
    gen = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        reference = model.generate(prompt, **gen)
        runtime = heteromoe.wrap(model, system=system, policy=policy)
        generated = model.generate(prompt, **gen)
    same = torch.equal(reference, generated)
    report = runtime.report()
    runtime.unwrap()
    out(f"heteromoe demo: tiny Qwen3-MoE ({model.config.num_experts} experts, top-{model.config.num_experts_per_tok}), "
        f"batch {batch}, {new_tokens} new tokens, policy {report['policy']} on {report['system']}")
    out(f"greedy tokens identical to the unwrapped model: {same}")
    out(f"{'layer':<28} {'calls':>5} {'tokens':>6} {'gpu exp':>7} {'pim exp':>7} {'gpu tok':>7} {'pim tok':>7} "
        f"{'t_gpu us':>9} {'t_pim us':>9}")
    for layer in report["layers"]:
        out(f"{layer['name']:<28} {layer['calls']:>5} {layer['tokens']:>6} {layer['gpu_experts']:>7} "
            f"{layer['pim_experts']:>7} {layer['gpu_tokens']:>7} {layer['pim_tokens']:>7} "
            f"{layer['t_gpu_s'] * 1e6:>9.2f} {layer['t_pim_s'] * 1e6:>9.2f}")
    if not same:
        raise RuntimeError("wrapped model generated different tokens from the unwrapped model")
    report["tokens_identical"] = same
    return report
