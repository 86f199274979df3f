"""The fused layer path (runtime.fused) end to end: a wrapped model on CPU (float32, C++/numba kernels) and,
on a GPU, bf16 with the CUDA kernels, a second stream and CUDA-graph capture."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import heteromoe
from heteromoe import kernels
from heteromoe.kernels.splitk import SplitKRule
from heteromoe.runtime.fused import FusedLayerPath
from heteromoe.runtime.layer import ExpertLayer
from tests.helpers import device_plan_setup, greedy_differences_off_ties, tiny_model

GEN = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)


@pytest.mark.parametrize("policy", ["gpu-only", "sieve", "heteromoe"])
@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral", "deepseek_v3"])
def test_fused_cpu_matches_unwrapped(family, policy):
    model = tiny_model(family)
    ids = torch.randint(1, 128, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref_logits, ref_tokens = model(ids).logits, model.generate(ids, **GEN)
        runtime = heteromoe.wrap(model, policy=policy, fused=True, gemv_max_tokens=3)
        logits, tokens = model(ids).logits, model.generate(ids, **GEN)
    runtime.unwrap()
    assert runtime.executor.generic_reasons == {}, runtime.executor.generic_reasons
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)
    assert torch.equal(tokens, ref_tokens)
    report = runtime.report()["layers"]
    assert sum(layer["calls"] for layer in report) > 0
    if policy != "gpu-only":
        assert sum(layer["pim_tokens"] for layer in report) > 0  # the plan's PIM set ran on the cold side


def test_fused_is_off_on_cpu_unless_asked():
    model = tiny_model("qwen3_moe")
    runtime = heteromoe.wrap(model, policy="gpu-only")
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))
    assert all("only when asked" in why for why in runtime.executor.generic_reasons.values())
    runtime.unwrap()


def test_layers_the_kernels_do_not_cover_take_the_generic_path():
    model = tiny_model("gpt_oss")  # transposed weights with biases
    ids = torch.randint(1, 128, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits
        runtime = heteromoe.wrap(model, policy="sieve", fused=True)
        out = model(ids).logits
    runtime.unwrap()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    assert all("transposed" in why for why in runtime.executor.generic_reasons.values())


def test_bad_expert_id_names_it():
    model = tiny_model("qwen3_moe")
    layer = ExpertLayer.from_module("layer0", model.model.layers[0].mlp.experts)
    path = FusedLayerPath()
    hidden = torch.randn(2, layer.hidden_size)
    with pytest.raises(ValueError, match=r"expert id 99 at pair 2"):
        path.run(layer, hidden, torch.tensor([[0, 1], [99, 2]]), torch.ones(2, 2))


def test_failing_kernel_falls_back_without_losing_a_token(monkeypatch, caplog):
    model = tiny_model("qwen3_moe")
    ids = torch.randint(1, 128, (2, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(ids).logits
        runtime = heteromoe.wrap(model, policy="heteromoe", fused=True)

        def broken(*args, **kwargs):
            raise RuntimeError("GEMV kernel lost the device")

        monkeypatch.setattr(kernels, "expert_gemv", broken)
        out = model(ids).logits
    runtime.unwrap()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    assert "fused path failed" in caplog.text
    assert sum(layer["fallbacks"] for layer in runtime.report()["layers"]) > 0


def test_mma_options_are_checked_and_the_kernel_stays_off_the_cpu():
    with pytest.raises(ValueError, match="-1"):
        FusedLayerPath(mma_max_tokens=-1)
    with pytest.raises(ValueError, match="-2"):
        FusedLayerPath(mma_min_warps_per_sm=-2)
    layer = ExpertLayer.from_module("layer0", tiny_model("qwen3_moe").model.layers[0].mlp.experts)
    assert not FusedLayerPath(mma_min_warps_per_sm=0).mma_ok(layer, 16, 32, torch.device("cpu"))


def test_gemv_threshold_must_be_positive():
    with pytest.raises(ValueError, match="gemv_max_tokens must be >= 1, got 0"):
        FusedLayerPath(gemv_max_tokens=0)


class _RenamedSiLU(torch.nn.SiLU):
    """torch's SiLU under another class name."""


class _GeluCalledSiLU(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x)


_GeluCalledSiLU.__name__ = "SiLU"  # named like an activation the fused gate computes; computes GELU


@pytest.mark.parametrize("act, fused", [(_RenamedSiLU(), True), (_GeluCalledSiLU(), False)], ids=["silu", "gelu"])
def test_the_fused_gate_knows_silu_by_class_not_by_name(act, fused):
    from heteromoe.runtime.fused_checks import gate_is_silu_chunk

    experts = tiny_model("qwen3_moe").model.layers[0].mlp.experts
    experts.act_fn = act
    layer = ExpertLayer.from_module("layer0", experts)
    assert gate_is_silu_chunk(layer) is fused
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(5, layer.hidden_size, generator=gen)
    ids = torch.stack([torch.randperm(layer.num_experts, generator=gen)[:2] for _ in range(5)])
    weights = torch.rand(5, 2, generator=gen)
    with torch.no_grad():
        ref = experts(hidden, ids, weights)
        out = FusedLayerPath().run(layer, hidden, ids, weights)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)  # GELU stays GELU: the module's own act_fn ran


# -- GPU -------------------------------------------------------------------------------------------------
needs_cuda_kernels = pytest.mark.skipif(not (torch.cuda.is_available() and kernels.HAS_CUDA_KERNELS),
                                        reason="needs a CUDA GPU and heteromoe._cuda (run `pytest -m gpu` on one)")


@pytest.mark.gpu
@needs_cuda_kernels
@pytest.mark.parametrize("policy", ["gpu-only", "heteromoe", "heteromoe-host", "heteromoe-ahead", "sieve"])
@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_fused_cuda_bf16_matches_unwrapped(family, policy):
    model = tiny_model(family, dtype=torch.bfloat16).to("cuda")
    ids = torch.randint(1, 128, (4, 12), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits.float()
        ref_run = model.generate(ids, **GEN, output_logits=True, return_dict_in_generate=True)
        runtime = heteromoe.wrap(model, policy=policy.split("-")[0] if policy != "gpu-only" else policy,
                                 gemv_max_tokens=4, plan_ahead=policy.endswith("-ahead"),
                                 plan_on_device=policy in ("heteromoe", "sieve"))
        out = model(ids).logits.float()
        tokens = model.generate(ids, **GEN)
    runtime.unwrap()
    assert runtime.executor.generic_reasons == {}, runtime.executor.generic_reasons
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())
    # bf16: identical greedy tokens except where the reference's top two logits tie exactly
    assert greedy_differences_off_ties(ref_run.logits, ids.shape[1], tokens, ref_run.sequences) == []
    if policy != "gpu-only":
        assert sum(layer["pim_tokens"] for layer in runtime.report()["layers"]) > 0


@pytest.mark.gpu
@needs_cuda_kernels
def test_fused_fp32_cuda_tokens_identical():
    """In fp32 the kernels' different summation orders stay far below the logit gaps: same greedy tokens."""
    model = tiny_model("qwen3_moe").to("cuda")
    ids = torch.randint(1, 128, (3, 10), device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    with torch.no_grad():
        ref_logits, ref_tokens = model(ids).logits, model.generate(ids, **GEN)
        for policy, ahead, on_device in (("gpu-only", False, False), ("heteromoe", False, False),
                                         ("heteromoe", True, False), ("heteromoe", False, True), ("sieve", False, True)):
            runtime = heteromoe.wrap(model, policy=policy, plan_ahead=ahead, plan_on_device=on_device)
            logits, tokens = model(ids).logits, model.generate(ids, **GEN)
            runtime.unwrap()
            assert runtime.executor.generic_reasons == {}, runtime.executor.generic_reasons
            torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-4)
            assert torch.equal(tokens, ref_tokens), (policy, ahead, on_device)


@pytest.mark.gpu
@needs_cuda_kernels
@pytest.mark.parametrize("hot", ["mma", "grouped_mm", "triton"])
@pytest.mark.parametrize("batch", [1, 5, 40])
def test_fused_layer_captures_in_a_cuda_graph(batch, hot):
    """Every hot-side kernel captures: the tensor cores, torch's grouped_mm and the Triton grouped GEMM."""
    from heteromoe.kernels import grouped_triton

    if hot == "triton" and not grouped_triton.available():
        pytest.skip(grouped_triton.unavailable_reason())
    model = tiny_model("qwen3_moe", dtype=torch.bfloat16).to("cuda")
    layer = ExpertLayer.from_module("layer0", model.model.layers[0].mlp.experts)
    # the tiny layer is far below the warps-per-SM bar: 0 lets the tensor-core kernel take it
    path = FusedLayerPath(gemv_max_tokens=4, mma_min_warps_per_sm=0, mma_max_tokens=256 if hot == "mma" else 0,
                          grouped_gemm="grouped_mm" if hot == "grouped_mm" else "auto")
    gen = torch.Generator("cuda").manual_seed(batch)
    hidden = torch.randn(batch, layer.hidden_size, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = model.config.num_experts_per_tok
    ids = torch.stack([torch.randperm(layer.num_experts, device="cuda", generator=gen)[:k] for _ in range(batch)])
    weights = torch.rand(batch, k, device="cuda", generator=gen).to(torch.bfloat16)
    with torch.no_grad():
        eager = path.run(layer, hidden, ids, weights)
        ref = layer.module(hidden, ids, weights)  # the module's own (eager) experts
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            path.run(layer, hidden, ids, weights)  # warm-up outside capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = path.run(layer, hidden, ids, weights)
        graph.replay()
        torch.cuda.synchronize()
    assert torch.equal(captured, eager)
    torch.testing.assert_close(eager.float(), ref.float(), rtol=2e-2, atol=2e-2 * ref.abs().max().item())
    assert np.isfinite(eager.float().cpu().numpy()).all()
    assert path.triton_fallbacks == 0


@pytest.mark.gpu
@needs_cuda_kernels
@pytest.mark.parametrize("case", ["torch-calls", "one-call", "one-call-gemv"])
@pytest.mark.parametrize("policy", ["heteromoe", "sieve"])
def test_device_plan_captures_in_a_cuda_graph_and_settles_stats(policy, case):
    """Planning in the routing kernel: nothing waits on the host, so the heteromoe-policy layer captures
    in a CUDA graph; eager calls settle their plans lazily into the statistics. With the GPU set on
    expert_mma (one-call: the tiny layer let past the warps-per-SM bar) the whole call is one C++ call
    (`_cuda.plan_layer`), else the general path's torch calls (the grouped GEMM for the GPU set). A decode-sized
    batch (one-call-gemv: 3 tokens, one expert with all three, which the B200 system's plan gives the GPU)
    is one C++ call too, its GPU set on the GEMV."""
    from heteromoe.sched import get_policy

    system = "b200-hbm3e-pim" if case == "one-call-gemv" else "h100-hbm3-pim"
    layer, cost, executor, placement, k = device_plan_setup(
        policy, FusedLayerPath(mma_min_warps_per_sm=8 if case == "torch-calls" else 0), system)
    gen = torch.Generator("cuda").manual_seed(7)
    if case == "one-call-gemv":
        ids = torch.tensor([[0, 1], [0, 2], [0, 3]], device="cuda")
    else:
        ids = torch.stack([torch.randperm(layer.num_experts, device="cuda", generator=gen)[:k] for _ in range(24)])
    batch = ids.shape[0]
    hidden = torch.randn(batch, layer.hidden_size, device="cuda", dtype=torch.bfloat16, generator=gen)
    weights = torch.rand(batch, k, device="cuda", generator=gen).to(torch.bfloat16)
    with torch.no_grad():
        eager = executor.run(layer, cost, placement, hidden, ids, weights)
        one_call = case != "torch-calls"
        assert (executor.fused._last_ws is not None) == one_call  # the one call leaves its workspace
        executor.flush()
        plan = executor.last_plans["layer0"]
        assert plan.gpu_tokens.any() and plan.pim_tokens.any()  # both sides ran
        host_plan = get_policy(policy).plan(np.bincount(ids.cpu().numpy().reshape(-1), minlength=layer.num_experts),
                                           placement, 1, cost)
        np.testing.assert_array_equal(plan.gpu_tokens, host_plan.gpu_tokens)  # the same plan, made on the device
        assert executor.stats["layer0"].calls == 1
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            executor.run(layer, cost, placement, hidden, ids, weights)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = executor.run(layer, cost, placement, hidden, ids, weights)
        graph.replay()
        torch.cuda.synchronize()
        ref = layer.module(hidden, ids, weights)
    assert torch.equal(captured, eager)
    torch.testing.assert_close(eager.float(), ref.float(), rtol=2e-2, atol=2e-2 * ref.abs().max().item())


@pytest.mark.gpu
@needs_cuda_kernels
@pytest.mark.parametrize("batch, bad, first", [(1, {1: 99}, (1, 99)), (1, {0: 98, 1: 99}, (0, 98)),
                                               (2, {2: 99, 3: 77}, (2, 99)), (40, {2: 99, 79: 77}, (2, 99))],
                         ids=["one-token", "one-token-two-bad", "2-tokens", "40-tokens"])
def test_bad_expert_id_on_cuda_is_reported_without_a_sync(batch, bad, first):
    """On CUDA the routing kernel (one token: the GEMV, which reads the routing itself) writes the first bad
    id to pinned host memory; check_errors (or the layer's next call) raises naming it, while the call itself
    never waits for the device. A bad pair adds nothing to its token's output."""
    model = tiny_model("qwen3_moe", dtype=torch.bfloat16).to("cuda")
    layer = ExpertLayer.from_module("layer0", model.model.layers[0].mlp.experts)
    path = FusedLayerPath()
    ids = torch.zeros(batch, 2, dtype=torch.long, device="cuda")
    ids[:, 1] = 1
    weights = torch.ones(batch, 2, device="cuda", dtype=torch.bfloat16)
    good_ids, zeroed = ids.clone(), weights.clone()
    for pair, value in bad.items():
        ids.view(-1)[pair] = value
        zeroed.view(-1)[pair] = 0
    hidden = torch.randn(batch, layer.hidden_size, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        out = path.run(layer, hidden, ids, weights)
        pair, value = first
        with pytest.raises(ValueError, match=rf"expert id {value} at pair {pair} is outside \[0, 8\)"):
            path.check_errors(layer)
        path.check_errors(layer)  # reported once
        assert torch.equal(out, path.run(layer, hidden, good_ids, zeroed))


@pytest.mark.gpu
@needs_cuda_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("experts, top_k, d, f", [(8, 2, 256, 96), (128, 8, 256, 96), (24, 18, 256, 96),
                                                  (8, 2, 64, 4352)])
def test_one_token_path_equals_the_kernels_one_by_one(experts, top_k, d, f, dtype):
    """gpu-only at one token skips route_prep and (top_k <= 16, f <= 4096) combines in the down projection's
    kernel: bit for bit the route_prep -> GEMV up -> GEMV down -> unpermute chain (above 16 slots or for
    longer rows: GEMV down + unpermute in pair order)."""
    from heteromoe.calibrate import expert_layer

    layer = ExpertLayer.from_module("layer0", expert_layer(experts, top_k, d, f, dtype=dtype))
    gen = torch.Generator("cuda").manual_seed(experts)
    hidden = torch.randn(1, layer.hidden_size, device="cuda", dtype=dtype, generator=gen)
    ids = torch.randperm(experts, device="cuda", generator=gen)[:top_k][None, :]
    for weights_dtype in (dtype, torch.float32):
        weights = torch.rand(1, top_k, device="cuda", generator=gen).to(weights_dtype)
        with torch.no_grad():
            # unsplit, as the chain below (split-K changes the order of the fp32 sums: tests/kernels/test_splitk.py)
            out = FusedLayerPath(split_k=SplitKRule()).run(layer, hidden, ids, weights)
            prep = kernels.route_prep(ids, experts, threshold=1)  # every pair on the list side
            f = layer.intermediate_size
            h = kernels.expert_gemv(hidden, layer.up_weight, prep, in_pairs=prep.cold_pairs, top_k=top_k, out_rows=f,
                                    silu_chunk=True, max_tokens=1)
            y = kernels.expert_gemv(h, layer.down_weight, prep, in_pairs=None, top_k=top_k,
                                    out_rows=layer.hidden_size, silu_chunk=False, max_tokens=1, lists_ready=True)
            out_dtype = torch.promote_types(dtype, weights_dtype)
            ref = kernels.unpermute(y, y, prep.pair_row, weights.to(out_dtype),
                                    round_products=out_dtype != torch.float32).to(dtype)
            module = layer.module(hidden, ids, weights)
        assert torch.equal(out, ref), (experts, top_k, weights_dtype)
        torch.testing.assert_close(out.float(), module.float(), rtol=2e-2, atol=2e-2 * module.abs().max().item())


@pytest.mark.gpu
@needs_cuda_kernels
@pytest.mark.parametrize("policy", ["heteromoe", "sieve"])
def test_device_planned_token_runs_the_one_token_tail(policy):
    """One token planned on the device: route_prep plans (into the layer's ring, as every device plan), then
    the same one-token tail as gpu-only (the plan cannot change a row): the output is gpu-only's bit for bit,
    the plan is the host's, the call captures in a CUDA graph, and a bad id is reported by route_prep."""
    from heteromoe.sched import get_policy

    layer, cost, executor, placement, _ = device_plan_setup(policy, FusedLayerPath())
    gen = torch.Generator("cuda").manual_seed(11)
    ids = torch.tensor([[3, 5]], device="cuda")
    hidden = torch.randn(1, layer.hidden_size, device="cuda", dtype=torch.bfloat16, generator=gen)
    weights = torch.rand(1, 2, device="cuda", generator=gen).to(torch.bfloat16)
    with torch.no_grad():
        out = executor.run(layer, cost, placement, hidden, ids, weights)
        assert executor.fused._last_ws is not None  # the one C++ call (plan_layer) ran it
        assert torch.equal(out, FusedLayerPath().run(layer, hidden, ids, weights))
        executor.flush()
        counts = np.bincount(ids.cpu().numpy().reshape(-1), minlength=layer.num_experts)
        np.testing.assert_array_equal(executor.last_plans["layer0"].gpu_tokens,
                                      get_policy(policy).plan(counts, placement, 1, cost).gpu_tokens)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = executor.run(layer, cost, placement, hidden, ids, weights)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(captured, out)
        bad = ids.clone()
        bad[0, 1] = 99
        zeroed = weights.clone()
        zeroed[0, 1] = 0
        out_bad = executor.run(layer, cost, placement, hidden, bad, weights)
        with pytest.raises(ValueError, match=r"expert id 99 at pair 1 is outside \[0, 8\)"):
            executor.fused.check_errors(layer)
        assert torch.equal(out_bad, FusedLayerPath().run(layer, hidden, ids, zeroed))


@pytest.mark.gpu
@needs_cuda_kernels
@pytest.mark.parametrize("batch", [5, 40, 300])
def test_mma_paths_match_the_module(batch):
    """gpu-only with every expert on the tensor-core kernel, and a plan's GPU share on it, against the
    module's own experts; 300 tokens (above mma_max_tokens) takes the grouped GEMM (Triton's where it runs)."""
    model = tiny_model("qwen3_moe", dtype=torch.bfloat16).to("cuda")
    layer = ExpertLayer.from_module("layer0", model.model.layers[0].mlp.experts)
    path = FusedLayerPath(mma_min_warps_per_sm=0)
    assert path.mma_ok(layer, batch, batch * 2, torch.device("cuda")) == (batch <= 256)
    gen = torch.Generator("cuda").manual_seed(batch)
    k = model.config.num_experts_per_tok
    hidden = torch.randn(batch, layer.hidden_size, device="cuda", dtype=torch.bfloat16, generator=gen)
    ids = torch.stack([torch.randperm(layer.num_experts, device="cuda", generator=gen)[:k] for _ in range(batch)])
    weights = torch.rand(batch, k, device="cuda", generator=gen).to(torch.bfloat16)
    counts = np.bincount(ids.cpu().numpy().reshape(-1), minlength=layer.num_experts)
    with torch.no_grad():
        ref = layer.module(hidden, ids, weights)
        outs = {"gpu-only": path.run(layer, hidden, ids, weights),
                "plan": path.run(layer, hidden, ids, weights, gpu_set=(counts + 1) // 2,
                                 pim_set_max_tokens=int((counts // 2).max()))}
    for name, out in outs.items():
        torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2 * ref.abs().max().item(), msg=name)


def test_one_call_record_reads_the_modules_current_weights():
    """The per-layer record of the one-call path reads the weights from the module's parameter dict on every
    call (a weight the module replaces is seen), and through the layer view where they are not parameters."""
    from heteromoe.runtime.fused import _OneCall

    model = tiny_model("qwen3_moe")
    module = model.model.layers[0].mlp.experts
    layer = ExpertLayer.from_module("layer0", module)
    call = _OneCall(dtype=0, weights_dtype=0, round_products=False, layer=layer, device=torch.device("cpu"),
                    err_word=None)
    up, down = call.weights()
    assert up is module.gate_up_proj and down is module.down_proj
    module.gate_up_proj = torch.nn.Parameter(module.gate_up_proj.detach().clone())
    assert call.weights()[0] is module.gate_up_proj
    # weights kept as plain tensors (not parameters): the record falls back to the layer view
    plain = ExpertLayer.from_module("layer1", model.model.layers[1].mlp.experts)
    experts = plain.module
    gate_up, down_w = experts.gate_up_proj.detach(), experts.down_proj.detach()
    del experts.gate_up_proj, experts.down_proj
    experts.gate_up_proj, experts.down_proj = gate_up, down_w
    record = _OneCall(dtype=0, weights_dtype=0, round_products=False, layer=plain, device=torch.device("cpu"),
                      err_word=None)
    assert record.weights()[0] is gate_up and record.weights()[1] is down_w


@pytest.mark.gpu
@needs_cuda_kernels
@pytest.mark.parametrize("batch", [1, 16])
def test_one_call_path_sees_replaced_weights_and_converted_modules(batch):
    """The decode path caches per-layer facts; a weight replaced between calls is used by the next call, and
    a module converted to another dtype than the hidden states is refused by name (the executor then runs
    the call on the generic path)."""
    model = tiny_model("qwen3_moe", dtype=torch.bfloat16).to("cuda")
    module = model.model.layers[0].mlp.experts
    layer = ExpertLayer.from_module("layer0", module)
    path = FusedLayerPath(mma_min_warps_per_sm=0)
    gen = torch.Generator("cuda").manual_seed(batch)
    k = model.config.num_experts_per_tok
    hidden = torch.randn(batch, layer.hidden_size, device="cuda", dtype=torch.bfloat16, generator=gen)
    ids = torch.stack([torch.randperm(layer.num_experts, device="cuda", generator=gen)[:k] for _ in range(batch)])
    weights = torch.rand(batch, k, device="cuda", generator=gen).to(torch.bfloat16)
    with torch.no_grad():
        first = path.run(layer, hidden, ids, weights)
        module.gate_up_proj = torch.nn.Parameter(module.gate_up_proj.detach() * 2)
        second = path.run(layer, hidden, ids, weights)
        ref = module(hidden, ids, weights)
        torch.testing.assert_close(second.float(), ref.float(), rtol=2e-2, atol=2e-2 * ref.abs().max().item())
        assert not torch.allclose(first.float(), second.float())
        module.down_proj.data = module.down_proj.data.half()
        with pytest.raises(RuntimeError, match="layer0.*torch.float16"):
            path.run(layer, hidden, ids, weights)
