"""Worker processes for the expert-parallel tests (spawned by torch.multiprocessing)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

import heteromoe
from tests.helpers import failing_pim_backend, tiny_model


def prompts(batch: int, length: int = 5) -> torch.Tensor:
    return torch.randint(1, 128, (batch, length), generator=torch.Generator().manual_seed(1))


def run_rank(rank: int, world: int, init_file: str, out_dir: str, family: str, policy: str, broken_rank: int,
             new_tokens: int, replicas: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = tiny_model(family, num_experts=8)
        ids = prompts(2 * world).chunk(world)[rank]  # this rank's share of the batch (data parallel)
        kw = {"pim_backend": failing_pim_backend("PIM stack 2 stopped answering")} if rank == broken_rank else {}
        runtime = heteromoe.wrap(model, policy=policy, process_group=dist.group.WORLD, replicas_per_gpu=replicas,
                                 replan_every=3, **kw)
        with torch.no_grad():
            logits = model(ids).logits
            tokens = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                    pad_token_id=0)
        torch.save({"logits": logits, "tokens": tokens, "report": runtime.report()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        runtime.unwrap()
        # both ranks past their last collective before either tears gloo down: a rank that destroys its group
        # while the other still talks to it can abort the other ("terminate called without an active
        # exception", seen about once in ten runs of the suite on the 2-core CI machine)
        dist.barrier()
    finally:
        dist.destroy_process_group()
