"""`heteromoe.schedule` and `heteromoe.Scheduler`: same plans as `Policy.plan`, caches that are never stale."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

import heteromoe
from heteromoe.cost import CostModel
from heteromoe.errors import UserError
from heteromoe.routing import BimodalRouting
from heteromoe.sched import get_policy
from heteromoe.sched import api
from heteromoe.sched.placement import Placement, contiguous_placement

SYSTEM = "b200-hbm3e-pim"
MODEL = "qwen3-30b-a3b"


def _counts(model=MODEL, batch=64, seed=0):
    return BimodalRouting.for_model(heteromoe.models.get(model), seed=seed).counts(batch, 1)[0]


def _same(a, b):
    assert a.predicted_time_s == b.predicted_time_s
    assert np.array_equal(a.gpu_tokens, b.gpu_tokens) and np.array_equal(a.pim_tokens, b.pim_tokens)


@pytest.mark.parametrize("policy", ["gpu-only", "duplex", "pimoe", "sieve", "heteromoe"])
@pytest.mark.parametrize("model,gpus", [(MODEL, 1), ("qwen3.5-397b-a17b", 8)])
def test_schedule_and_scheduler_equal_policy_plan(policy, model, gpus):
    spec = heteromoe.models.get(model)
    counts = _counts(model)
    kv = 1e6
    cost = CostModel(heteromoe.systems.get(SYSTEM), spec, attn_kv_bytes=kv)
    homes = Placement.from_homes(contiguous_placement(spec.num_experts, gpus), gpus)
    reference = get_policy(policy).plan(counts, homes, gpus, cost)
    scheduler = heteromoe.Scheduler(model=model, system=SYSTEM, gpus=gpus, policy=policy, attn_kv_bytes=kv)
    for _ in range(2):  # the second call runs on the caches
        _same(heteromoe.schedule(counts, model=model, system=SYSTEM, gpus=gpus, policy=policy, attn_kv_bytes=kv),
              reference)
        _same(scheduler.plan(counts), reference)
    assert scheduler.policy.name == policy and scheduler.cost.model is spec


def test_scheduler_passes_token_origins():
    counts = np.array([3, 1, 0, 2] * 32)
    origin = np.zeros((2, counts.size), dtype=np.int64)
    origin[0] = counts  # every token on GPU 0: GPU 1's experts pay the whole all-to-all
    kw = dict(model=MODEL, system=SYSTEM, gpus=2, policy="sieve")
    with_origin = heteromoe.Scheduler(**kw).plan(counts, token_origin=origin)
    _same(with_origin, heteromoe.schedule(counts, token_origin=origin, **kw))
    assert with_origin.t_comm_s != heteromoe.schedule(counts, **kw).t_comm_s


def test_cost_models_are_reused_per_spec_object_and_extra_times():
    api.clear_caches()
    heteromoe.schedule(_counts(), model=MODEL, system=SYSTEM)
    heteromoe.schedule(_counts(seed=1), model=MODEL, system=SYSTEM)
    assert len(api._costs) == 1
    heteromoe.schedule(_counts(), model=MODEL, system=SYSTEM, attn_kv_bytes=1e6)
    assert len(api._costs) == 2


def test_a_new_spec_object_is_never_served_a_stale_cost_model():
    counts = _counts()
    base = heteromoe.systems.get(SYSTEM)
    before = heteromoe.schedule(counts, model=MODEL, system=base, policy="gpu-only")
    half_bw = dataclasses.replace(base.gpu, ext_bw_bytes_per_s=base.gpu.ext_bw_bytes_per_s / 2)
    slower = dataclasses.replace(base, gpu=half_bw)
    after = heteromoe.schedule(counts, model=MODEL, system=slower, policy="gpu-only")
    assert after.t_gpu_s > before.t_gpu_s * 1.5


def test_an_edited_toml_file_is_read_again(tmp_path):
    text = heteromoe.spec.presets.resources.files("heteromoe.spec").joinpath(f"presets/models/{MODEL}.toml").read_text()
    path = tmp_path / "mine.toml"
    path.write_text(text)
    counts = _counts()
    first = heteromoe.schedule(counts, model=str(path), system=SYSTEM, policy="gpu-only")
    assert heteromoe.models.get(str(path)) is heteromoe.models.get(str(path))  # parsed once while unchanged
    path.write_text(text.replace("moe_intermediate_size = 768", "moe_intermediate_size = 1536"))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    second = heteromoe.schedule(counts, model=str(path), system=SYSTEM, policy="gpu-only")
    assert heteromoe.models.get(str(path)).moe_intermediate_size == 1536
    assert second.t_gpu_s > first.t_gpu_s * 1.5


def test_cached_placement_is_read_only_and_plans_stay_valid():
    plan = heteromoe.schedule(_counts("qwen3.5-397b-a17b"), model="qwen3.5-397b-a17b", system=SYSTEM, gpus=8)
    with pytest.raises(ValueError):
        plan.slot_gpu[0] = 3
    plan.validate(_counts("qwen3.5-397b-a17b"))


@pytest.mark.parametrize("kind", ["model", "system"])
def test_missing_toml_path_is_a_user_error_naming_it(tmp_path, kind):
    missing = str(tmp_path / "nope.toml")
    kw = {"model": MODEL, "system": SYSTEM, kind: missing}
    with pytest.raises(UserError, match=f"{kind} spec file .*nope.toml' does not exist"):
        heteromoe.schedule([1] * 128, **kw)
    with pytest.raises(FileNotFoundError):
        heteromoe.Scheduler(**kw)


def test_scheduler_checks_its_inputs_once_at_construction():
    with pytest.raises(ValueError, match="unknown policy 'siev'"):
        heteromoe.Scheduler(model=MODEL, system=SYSTEM, policy="siev")
    with pytest.raises(ValueError, match="max_gpus"):
        heteromoe.Scheduler(model=MODEL, system="h100-hbm3-pim", gpus=99)
    s = heteromoe.Scheduler(model=MODEL, system=SYSTEM)
    with pytest.raises(ValueError, match="128 experts"):
        s.plan([1, 2, 3])
    assert "qwen3-30b-a3b" in repr(s)


def test_the_cost_cache_stays_bounded():
    api.clear_caches()
    base = heteromoe.models.get(MODEL)
    counts = _counts()
    for i in range(api.COST_CACHE_SIZE + 6):
        heteromoe.schedule(counts, model=dataclasses.replace(base, name=f"m{i}"), system=SYSTEM)
    assert len(api._costs) == api.COST_CACHE_SIZE
