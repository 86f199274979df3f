"""Expert-parallel generation with heteromoe on torch.distributed.

    torchrun --nproc-per-node 2 examples/ep_generate.py                    # CPU (gloo) or GPUs (NCCL)
    torchrun --nproc-per-node 2 examples/ep_generate.py --dtype bf16 --check --measure --json out.json

Every rank builds the same tiny random Qwen3-MoE model (no download), takes its share of the prompts
(data-parallel attention), and wraps the model with `process_group=WORLD`: each rank runs the experts the
placement gives it, tokens travel by all-to-all. `--check` compares the tokens and logits with the
single-process wrapped model on rank 0. `--measure` times decode steps and the dispatch all-to-all of a
Qwen3-30B-A3B-shaped model (real layer dimensions, few layers) at several batch sizes and compares them with
the step simulator's prediction for the same configuration.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist

import heteromoe


def tiny(seed: int, dtype, device, **shape):
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    cfg = dict(vocab_size=256, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=16, num_experts_per_tok=4,
               max_position_embeddings=4096, pad_token_id=0, eos_token_id=None, bos_token_id=None)
    cfg.update(shape)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(Qwen3MoeConfig(**cfg))
    with torch.no_grad():  # random init leaves experts tiny: give them weight so routing matters
        for name, p in model.named_parameters():
            if ".experts." in name:
                p.normal_(0.0, 0.05)
    return model.to(device=device, dtype=dtype).eval()


def check(args, device, dtype, rank, world) -> dict:
    prompts = torch.randint(1, 256, (2 * world, 6), generator=torch.Generator().manual_seed(1))
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
    model = tiny(0, dtype, device)
    runtime = heteromoe.wrap(model, system=args.system, policy=args.policy, process_group=dist.group.WORLD)
    mine = prompts.chunk(world)[rank].to(device)
    with torch.no_grad():
        logits = model(mine).logits.float()
        tokens = model.generate(mine, **gen)
    runtime.unwrap()
    all_tokens = [torch.empty_like(tokens) for _ in range(world)]
    all_logits = [torch.empty_like(logits) for _ in range(world)]
    dist.all_gather(all_tokens, tokens)
    dist.all_gather(all_logits, logits)
    result = {}
    if rank == 0:
        reference = tiny(0, dtype, device)
        single = heteromoe.wrap(reference, system=args.system, policy=args.policy, gpus=world)
        with torch.no_grad():
            ref_logits = reference(prompts.to(device)).logits.float()
            ref_tokens = reference.generate(prompts.to(device), **gen)
        single.unwrap()
        diff = (torch.cat(all_logits) - ref_logits).abs().max().item()
        same = bool(torch.equal(torch.cat(all_tokens), ref_tokens))
        result = {"tokens_identical": same, "max_abs_logit_diff": diff, "dtype": str(dtype),
                  "ref_logit_scale": ref_logits.abs().max().item()}
        print(f"check: greedy tokens identical to the single-process wrapped model: {same}; max |logit diff| {diff:.3g}")
    return result


def measure(args, device, dtype, rank, world) -> dict:
    from heteromoe.sim import StepSimulator
    from heteromoe.spec import MoEModelSpec

    layers = args.layers
    model = tiny(0, dtype, device, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                 num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                 num_experts=128, num_experts_per_tok=8, vocab_size=1024)
    runtime = heteromoe.wrap(model, system=args.system, policy=args.policy, process_group=dist.group.WORLD)
    spec = MoEModelSpec(name="qwen3-30b-shape", hidden_size=2048, moe_intermediate_size=768, num_experts=128, top_k=8,
                        num_layers=layers, num_attention_heads=32, num_kv_heads=4, head_dim=128)
    rows = []
    for batch in args.batches:
        local = batch // world
        ids = torch.randint(1, 1024, (local, args.context), device=device,
                            generator=torch.Generator(device=device).manual_seed(rank))
        with torch.no_grad():
            out = model(ids, use_cache=True)
            cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            times = []
            for _ in range(args.steps + 2):  # two warm-up steps
                torch.cuda.synchronize() if device.type == "cuda" else None
                dist.barrier()
                t0 = time.perf_counter()
                out = model(nxt, past_key_values=cache, use_cache=True)
                torch.cuda.synchronize() if device.type == "cuda" else None
                times.append(time.perf_counter() - t0)
                cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        step_s = sorted(times[2:])[len(times[2:]) // 2]
        # the dispatch all-to-all of one layer alone: local tokens x k rows of d bf16 values, half to each rank
        rows_per_peer = local * 8 // world
        send = torch.randn(rows_per_peer * world, 2048, device=device, dtype=dtype)
        recv = torch.empty_like(send)
        a2a = []
        for _ in range(args.steps + 2):
            torch.cuda.synchronize() if device.type == "cuda" else None
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_to_all_single(recv, send)
            torch.cuda.synchronize() if device.type == "cuda" else None
            a2a.append(time.perf_counter() - t0)
        a2a_s = sorted(a2a[2:])[len(a2a[2:]) // 2]
        steps = heteromoe.routing.BimodalRouting.for_model("qwen3-30b-a3b", seed=batch).decode(batch, 1, layers)[0]
        sim = StepSimulator(spec, args.system, world, args.policy, context=args.context).run(steps)
        predicted_comm = max(p.t_comm_s for p in sim.plans) / 2  # one way (dispatch)
        rows.append({"batch": batch, "measured_step_s": step_s, "simulated_step_s": sim.step_time_s,
                     "measured_dispatch_a2a_s": a2a_s, "simulated_dispatch_s": predicted_comm})
        if rank == 0:
            print(f"batch {batch:4d}: step measured {step_s * 1e3:8.2f} ms, simulated {sim.step_time_s * 1e3:7.3f} ms; "
                  f"dispatch all-to-all measured {a2a_s * 1e6:8.1f} us, simulated {predicted_comm * 1e6:7.1f} us")
    runtime.unwrap()
    return {"layers": layers, "context": args.context, "policy": args.policy, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", default="h200-hbm3e-pim")
    parser.add_argument("--policy", default="sieve")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--measure", action="store_true")
    parser.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=[16, 32, 64, 128, 256])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    result = {"world": world, "backend": dist.get_backend(), "device": torch.cuda.get_device_name(device) if cuda else "cpu"}
    if args.check or not args.measure:
        result["check"] = check(args, device, dtype, rank, world)
    if args.measure:
        result["measure"] = measure(args, device, dtype, rank, world)
    if rank == 0 and args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    dist.barrier()  # every rank past its last collective before the group is torn down
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
