"""Expert parallelism on torch.distributed: 2 gloo processes match the single-process wrapped model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import heteromoe
from heteromoe.routing import loads_from_topk
from heteromoe.runtime.distributed import GPU_SIDE, route_pairs
from tests.distributed.worker import prompts, run_rank
from tests.helpers import tiny_model

WORLD = 2


def run_world(tmp_path, family, policy="sieve", broken_rank=-1, new_tokens=8, replicas=0):
    mp.spawn(run_rank, args=(WORLD, str(tmp_path / "init"), str(tmp_path), family, policy, broken_rank, new_tokens,
                             replicas), nprocs=WORLD, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def single_process(family, policy="sieve", new_tokens=8):
    torch.manual_seed(0)
    model = tiny_model(family, num_experts=8)
    ids = prompts(2 * WORLD)
    runtime = heteromoe.wrap(model, policy=policy, gpus=WORLD)
    with torch.no_grad():
        logits = model(ids).logits
        tokens = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                pad_token_id=0)
    runtime.unwrap()
    return logits, tokens


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral", "gpt_oss"])
def test_two_ranks_match_one_process(tmp_path, family):
    ranks = run_world(tmp_path, family)
    ref_logits, ref_tokens = single_process(family)
    torch.testing.assert_close(torch.cat([r["logits"] for r in ranks]), ref_logits, rtol=0, atol=1e-5)
    assert torch.equal(torch.cat([r["tokens"] for r in ranks]), ref_tokens)
    for r, result in enumerate(ranks):
        report = result["report"]
        assert report["rank"] == r and report["num_gpus"] == WORLD
        assert all(layer["calls"] == 1 + 8 for layer in report["layers"])


def test_a_rank_whose_backend_fails_mid_batch_loses_no_token(tmp_path):
    ranks = run_world(tmp_path, "qwen3_moe", policy="all-exp", broken_rank=1)
    ref_logits, ref_tokens = single_process("qwen3_moe", policy="all-exp")
    torch.testing.assert_close(torch.cat([r["logits"] for r in ranks]), ref_logits, rtol=0, atol=1e-5)
    assert torch.equal(torch.cat([r["tokens"] for r in ranks]), ref_tokens)
    assert sum(layer["fallbacks"] for layer in ranks[1]["report"]["layers"]) == 1
    assert sum(layer["fallbacks"] for layer in ranks[0]["report"]["layers"]) == 0


def test_replicas_across_ranks_stay_exact(tmp_path):
    ranks = run_world(tmp_path, "qwen3_moe", policy="heteromoe", replicas=1, new_tokens=6)
    ref_logits, ref_tokens = single_process("qwen3_moe", policy="heteromoe", new_tokens=6)
    torch.testing.assert_close(torch.cat([r["logits"] for r in ranks]), ref_logits, rtol=0, atol=1e-5)
    assert torch.equal(torch.cat([r["tokens"] for r in ranks]), ref_tokens)


def test_route_pairs_by_hand():
    # 2 ranks, 2 experts homed on rank 0 (expert 0) and rank 1 (expert 1). Expert 0 has 3 pairs on rank 0
    # and 2 on rank 1: its global order is r0:0,1,2 then r1:0,1. The plan runs its first 4 on the GPU.
    z = np.zeros(2)
    plan = heteromoe.Plan("t", np.array([0, 1]), np.array([4, 1]), np.array([1, 0]), z, z, z)
    per_rank = np.array([[3, 0], [2, 1]])
    local = loads_from_topk(np.array([[0], [1], [0]]), 2)  # rank 1's tokens: experts 0, 1, 0
    dest, side = route_pairs(plan, per_rank, 1, local.counts, local.offsets)
    assert dest.tolist() == [0, 0, 1]  # expert 0's pairs go to rank 0, expert 1's to rank 1
    assert side.tolist() == [GPU_SIDE, 1, GPU_SIDE]  # global positions 3 (GPU) and 4 (PIM) of expert 0


def test_process_group_needs_initialised_distributed():
    model = tiny_model("qwen3_moe")
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    with pytest.raises(RuntimeError, match="torch.distributed initialised"):
        heteromoe.wrap(model, process_group=object())
