"""A 4-layer model of real Qwen3-30B-A3B dimensions (random weights, bf16, on the GPU): greedy generate()
unwrapped (transformers' default experts implementation) and wrapped (fused path; gpu-only and heteromoe
policies), also with each decode step one CUDA graph (heteromoe.integrations.graphs.GraphedGreedyDecoder:
unwrapped, gpu-only, and heteromoe with the plan made on the device); are the tokens identical, and what is
the decode time per token? Also, teacher-forced over the
reference's own tokens (decoded one token per forward, as generate() does), how far each path's logits are
from the reference's and whether a differing argmax falls on a near-tie of the reference (transformers' eager experts loop measured the same way, for scale).

    python bench/gpu_generate.py --json bench/results/generate-4layer-<gpu>.json
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def build(num_layers: int, dtype=torch.bfloat16):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    config = Qwen3MoeConfig(hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_experts=128,
                            num_experts_per_tok=8, num_hidden_layers=num_layers, num_attention_heads=32,
                            num_key_value_heads=4, head_dim=128, vocab_size=151936, max_position_embeddings=4096,
                            norm_topk_prob=True)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3MoeForCausalLM(config).to(dtype).eval()
    return model


def per_token_s(generate, new_tokens: int) -> tuple[torch.Tensor, float]:
    """Tokens of `generate(n)` for n = new_tokens and the seconds per decoded token ((t(N) - t(1)) / (N - 1):
    the prefill and the first token cancel out)."""
    times = {}
    for n in (1, new_tokens):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = generate(n)
        torch.cuda.synchronize()
        times[n] = time.perf_counter() - t0
    return out, (times[new_tokens] - times[1]) / (new_tokens - 1)


def decode_time(model, ids, new_tokens: int) -> tuple[torch.Tensor, float]:
    """Tokens of a greedy generate and the seconds per decoded token."""
    gen = dict(do_sample=False, pad_token_id=0)
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, **gen)  # warm-up
        return per_token_s(lambda n: model.generate(ids, max_new_tokens=n, min_new_tokens=n, **gen), new_tokens)


def graphed_decode_time(model, ids, new_tokens: int) -> tuple[torch.Tensor, float]:
    """The same for heteromoe's GraphedGreedyDecoder (static cache, each decode step one CUDA graph replay);
    a first call captures the graph, the timed ones replay it."""
    from heteromoe.integrations.graphs import GraphedGreedyDecoder

    decoder = GraphedGreedyDecoder(model, max_cache_len=ids.shape[1] + new_tokens)
    decoder.generate(ids, 4)  # warm-up: the eager first step and the capture
    graph_replay_host_s = None
    step = decoder._steps[ids.shape[0]]
    if step.graph is not None:  # the host's share of a decode step: one replay (the copies around it are tiny)
        host = []
        # each replay advances the static cache by one position: stay within what the warm-up left free
        # (the next generate() resets the cache)
        for _ in range(max(1, min(20, new_tokens - 4))):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            step.graph.replay()
            host.append(time.perf_counter() - t0)
        graph_replay_host_s = float(sorted(host)[len(host) // 2])
    out, s = per_token_s(lambda n: decoder.generate(ids, n), new_tokens)
    return out, s, step.capture_error, graph_replay_host_s


def forced_logits(model, seq: torch.Tensor, prompt: int) -> torch.Tensor:
    """[B, N, V] float32 logits for each new token of `seq` (prompt + N new tokens), teacher-forced the way
    generate() decodes: the prompt in one forward, then one token per forward on the KV cache, each step fed
    the reference's token (so every step runs the decode-sized kernels, whatever the model would have
    generated)."""
    with torch.no_grad():
        out = model(seq[:, :prompt], use_cache=True)
        logits, past = [out.logits[:, -1].float()], out.past_key_values
        for j in range(prompt, seq.shape[1] - 1):
            out = model(seq[:, j:j + 1], past_key_values=past, use_cache=True)
            logits.append(out.logits[:, -1].float())
            past = out.past_key_values
    return torch.stack(logits, dim=1)


def logits_agreement(logits: torch.Tensor, ref_logits: torch.Tensor) -> dict:
    """How far `logits` are from the reference's, and whether a differing argmax is a near-tie of the
    reference (its top-1 minus top-2 logit there, against the largest logit difference)."""
    top2 = ref_logits.topk(2, dim=-1).values
    margin = top2[..., 0] - top2[..., 1]
    differ = logits.argmax(-1) != ref_logits.argmax(-1)
    return {"max_abs_logit_diff": float((logits - ref_logits).abs().max()),
            "argmax_agreement": float(1.0 - differ.float().mean()),
            "largest_ref_margin_where_argmax_differs": float(margin[differ].max()) if bool(differ.any()) else None,
            "median_ref_margin": float(margin.median())}


def main() -> None:
    import heteromoe

    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", default="1,16")
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = build(args.layers, dtype)
    default_impl = model.config._experts_implementation
    records = []
    for batch in (int(b) for b in args.batch.split(",")):
        ids = torch.randint(1, 151936, (batch, args.prompt), device="cuda", generator=torch.Generator("cuda").manual_seed(batch))
        ref, ref_s = decode_time(model, ids, args.new_tokens)
        rec = {"batch": batch, "default_impl": default_impl, "default_s_per_token": ref_s}
        ref_logits = forced_logits(model, ref, args.prompt)  # over the reference's own prompt + greedy tokens
        # how stable are greedy tokens to a different (exact in math, not in rounding) experts kernel?
        model.set_experts_implementation("eager")
        eager, eager_s = decode_time(model, ids, args.new_tokens)
        rec["transformers_eager"] = {"s_per_token": eager_s, "tokens_identical": bool(torch.equal(eager, ref)),
                                     **logits_agreement(forced_logits(model, ref, args.prompt), ref_logits)}
        model.set_experts_implementation(default_impl)
        out, s, capture_error, replay_host = graphed_decode_time(model, ids, args.new_tokens)
        same = bool(torch.equal(out, ref))
        rec["graphed unwrapped"] = {"s_per_token": s, "tokens_identical": same, "first_differing_new_token":
                                    None if same else int((out != ref).any(0).nonzero()[0, 0]) - args.prompt,
                                    "captured": capture_error is None, "capture_error": capture_error,
                                    "graph_replay_host_s": replay_host}
        for policy in ("gpu-only", "heteromoe", "graphed gpu-only", "graphed heteromoe device-plan"):
            graphed = policy.startswith("graphed")
            runtime = heteromoe.wrap(model, policy="gpu-only" if "gpu-only" in policy else "heteromoe",
                                     plan_on_device="device-plan" in policy)
            graph_info = {}
            if graphed:
                out, s, capture_error, replay_host = graphed_decode_time(model, ids, args.new_tokens)
                graph_info = {"captured": capture_error is None, "capture_error": capture_error,
                              "graph_replay_host_s": replay_host}
            else:
                out, s = decode_time(model, ids, args.new_tokens)
            agreement = logits_agreement(forced_logits(model, ref, args.prompt), ref_logits)
            runtime.unwrap()
            same = bool(torch.equal(out, ref))
            first_diff = None if same else int((out != ref).any(0).nonzero()[0, 0]) - args.prompt
            rec[policy] = {"s_per_token": s, "tokens_identical": same, "first_differing_new_token": first_diff,
                           **agreement, **graph_info, "fused_off": dict(runtime.executor.generic_reasons)}
        records.append(rec)
        print(json.dumps(rec))
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "dtype": args.dtype, "layers": args.layers,
              "prompt": args.prompt, "new_tokens": args.new_tokens, "records": records}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
