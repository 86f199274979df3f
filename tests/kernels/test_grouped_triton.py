"""The hot side's Triton grouped GEMM (`kernels.grouped_triton`): the tile and tuning checks and the fallback
(CPU), the kernel's indexing under Triton's interpreter (CPU, where Triton is installed), and on a GPU the
kernel against a float64 reference and the fused layer path against the module, eager and in a CUDA graph."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from heteromoe import kernels
from heteromoe.kernels import grouped_triton, reference
from heteromoe.kernels.grouped_triton import GroupedTile, tile_for
from heteromoe.runtime.options import KernelTuning

gpu = pytest.mark.skipif(not (torch.cuda.is_available() and kernels.HAS_CUDA_KERNELS and grouped_triton.available()),
                         reason="needs a CUDA GPU, heteromoe._cuda and Triton (run `pytest -m gpu` on one)")


# -- the tile and the tuning (CPU) ------------------------------------------------------------------------------
def test_tile_spelling_round_trips():
    for text in ("128x64x64w8s4", "64x128x32w4s3t", "16x16x16w1s1"):
        assert str(GroupedTile.parse(text)) == text
    assert GroupedTile.parse("128x64x64w8s4t").tma and not GroupedTile.parse("128x64x64w8s4").tma


@pytest.mark.parametrize("text, message", [
    ("128x64", "is not MxNxKwWsS"),
    ("96x64x64w8s4", "block_m must be a power of two >= 16, got 96"),
    ("128x8x64w8s4", "block_n must be a power of two >= 16, got 8"),
    ("128x64x64w3s4", "warps must be 1, 2, 4, 8 or 16, got 3"),
    ("128x64x64w8s0", "stages must be 1 to 8, got 0"),
])
def test_bad_tiles_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        GroupedTile.parse(text)


def test_tile_for_cuts_the_token_tile_to_the_launch():
    from heteromoe.kernels.grouped_triton import LARGE_TILE, SMALL_TILE

    assert tile_for(256) == LARGE_TILE and tile_for(65) == LARGE_TILE
    assert tile_for(64) == SMALL_TILE
    assert tile_for(5).block_m == 16 and tile_for(33).block_m == 64 and tile_for(1).block_m == 16
    assert tile_for(16) == GroupedTile(16, *(getattr(SMALL_TILE, f) for f in ("block_n", "block_k", "warps", "stages")))
    wide = GroupedTile(128, 128, 64, 8, 4, tma=True)
    assert tile_for(256, base=wide) == wide  # an explicit tile keeps its shape...
    assert tile_for(40, base=wide) == GroupedTile(64, 128, 64, 8, 4, tma=True)  # ...its token tile cut to the launch


def test_tuning_checks_the_choice():
    with pytest.raises(ValueError, match=r"grouped_gemm must be one of \('auto', 'grouped_mm', 'triton'\), got 'cutlass'"):
        KernelTuning(grouped_gemm="cutlass")
    with pytest.raises(ValueError, match="grouped_tile must be a GroupedTile or None, got '128x64x64w8s4'"):
        KernelTuning(grouped_tile="128x64x64w8s4")
    assert KernelTuning().grouped_gemm == "auto"


def _cpu_layer(E=4, k=2, d=32, f=48, seed=0):
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

    from heteromoe.runtime.layer import ExpertLayer

    config = Qwen3MoeConfig(hidden_size=d, moe_intermediate_size=f, num_experts=E, num_experts_per_tok=k)
    torch.manual_seed(seed)
    module = Qwen3MoeExperts(config)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.2)
    return module, ExpertLayer.from_module("layer0", module)


def _cpu_call(seed: int, tokens: int = 12, experts: int = 4, top_k: int = 2, d: int = 32):
    """(hidden, top-k ids, routing weights) of one float32 call on CPU."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, d, generator=gen)
    ids = torch.stack([torch.randperm(experts, generator=gen)[:top_k] for _ in range(tokens)])
    return hidden, ids, torch.softmax(torch.randn(tokens, top_k, generator=gen), -1)


def test_without_triton_on_the_device_the_hot_side_falls_back_and_counts(caplog):
    """On CPU tensors (no interpreter) the Triton choice cannot run: grouped_mm's output, one warning, every
    such call counted."""
    if grouped_triton.interpreting():
        pytest.skip("under TRITON_INTERPRET=1 the Triton kernel runs on CPU tensors")
    from heteromoe.runtime.fused import FusedLayerPath

    layer, (hidden, ids, weights) = _cpu_layer()[1], _cpu_call(seed=3)
    plain = FusedLayerPath(mma_max_tokens=0)
    triton_path = FusedLayerPath(mma_max_tokens=0, grouped_gemm="triton")
    with torch.no_grad(), caplog.at_level("WARNING", logger="heteromoe.runtime.fused"):
        outs = [triton_path.run(layer, hidden, ids, weights) for _ in range(2)]
        ref = plain.run(layer, hidden, ids, weights)
    assert all(torch.equal(o, ref) for o in outs)
    assert triton_path.triton_fallbacks == 2
    assert sum("Triton grouped GEMM cannot run" in r.message for r in caplog.records) == 1


_INTERPRETED = r"""
import torch
from heteromoe.kernels import grouped_triton as gt
from heteromoe.kernels import reference
from heteromoe.runtime.fused import FusedLayerPath
from heteromoe.runtime.layer import ExpertLayer
from transformers import Qwen3MoeConfig
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

torch.manual_seed(0)
E, k, d, f, T = 5, 2, 40, 56, 37          # K tails (40, 56 against block_k 16 / 32), an unused expert
ids = torch.stack([torch.randperm(E - 1)[:k] for _ in range(T)])
x = torch.randn(T, d)
up, down = torch.randn(E, 2 * f, d) / d ** 0.5, torch.randn(E, d, f) / f ** 0.5
prep = reference.route_prep(ids, E, threshold=0)
want_h = reference.expert_hot_rows(x, up, prep, in_pairs=prep.hot_pairs, top_k=k, out_rows=f, silu_chunk=True)
want_y = reference.expert_hot_rows(want_h, down, prep, in_pairs=None, top_k=k, out_rows=d, silu_chunk=False)
rows = int(prep.meta[0])
for tile in (gt.GroupedTile(16, 16, 16, 4, 2), gt.GroupedTile(32, 32, 32, 4, 2, tma=True)):
    h = gt.grouped_up(x, up, prep.hot_pairs, k, prep.hot_offs, gated=True, max_tokens=T, tile=tile)
    y = gt.grouped_down(h, down, prep.hot_offs, max_tokens=T, tile=tile)
    torch.testing.assert_close(h[:rows], want_h[:rows], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y[:rows], want_y[:rows], rtol=1e-4, atol=1e-5)
    plain = gt.grouped_up(x, up, prep.hot_pairs, k, prep.hot_offs, gated=False, max_tokens=T, tile=tile)
    torch.testing.assert_close(plain[:rows], reference.expert_hot_rows(
        x, up, prep, in_pairs=prep.hot_pairs, top_k=k, out_rows=2 * f, silu_chunk=False)[:rows], rtol=1e-4, atol=1e-5)
# the fused path's hot side on it: the module's output
config = Qwen3MoeConfig(hidden_size=d, moe_intermediate_size=f, num_experts=E, num_experts_per_tok=k)
module = Qwen3MoeExperts(config)
with torch.no_grad():
    for p in module.parameters():
        p.normal_(0.0, 0.2)
    w = torch.softmax(torch.randn(T, k), -1)
    path = FusedLayerPath(mma_max_tokens=0, grouped_gemm="triton", grouped_tile=gt.GroupedTile(16, 16, 16, 4, 2))
    out = path.run(ExpertLayer.from_module("l", module), x, ids, w)
    torch.testing.assert_close(out, module(x, ids, w), rtol=1e-4, atol=1e-5)
    assert path.triton_fallbacks == 0
print("ok")
"""


def test_kernel_indexing_under_the_interpreter():
    """The kernel on CPU tensors through Triton's interpreter (both weight paths, gated and not, K tails, an
    expert with no rows) and through FusedLayerPath: the reference's rows and the module's output in float32.
    Runs in a subprocess (TRITON_INTERPRET must be set before Triton compiles anything)."""
    pytest.importorskip("triton")
    if tuple(int(v) for v in np.__version__.split(".")[:2]) >= (2, 4):
        pytest.skip("Triton 3.6's interpreter needs numpy < 2.4 (it converts 1-element arrays with int())")
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", _INTERPRETED], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


# -- CUDA ----------------------------------------------------------------------------------------------------
TILES = [None, GroupedTile(64, 64, 64, 4, 3), GroupedTile(128, 64, 64, 8, 4, tma=True)]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("tile", TILES, ids=[str(t) for t in TILES])
def test_kernel_matches_the_reference(tile, dtype):
    """Both projections, gated and not, against the float64 reference on the same inputs: experts of 150, 97
    and a few tokens, one empty, K with a tail (1032 against block_k 64), output rows not a multiple of block_n.
    float32 within 1e-5 (full-precision products, not tf32)."""
    rng = np.random.default_rng(7)
    T, k, E, d, f = 150, 3, 12, 72, 1032
    ids = np.stack([np.r_[0, rng.choice(np.arange(1, E - 1), k - 1, replace=False)] for _ in range(T)])
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(T, d, generator=gen).to(dtype)
    up = (torch.randn(E, 2 * f, d, generator=gen) / 8).to(dtype)
    down = (torch.randn(E, d, f, generator=gen) / 16).to(dtype)
    prep = kernels.route_prep(torch.from_numpy(ids).cuda(), E, threshold=0)
    rows = int(prep.meta[0])
    xc, upc, downc = x.cuda(), up.cuda(), down.cuda()
    h = grouped_triton.grouped_up(xc, upc, prep.hot_pairs, k, prep.hot_offs, gated=True, max_tokens=T, tile=tile)
    y = grouped_triton.grouped_down(h, downc, prep.hot_offs, max_tokens=T, tile=tile)
    plain = grouped_triton.grouped_up(xc, upc, prep.hot_pairs, k, prep.hot_offs, gated=False, max_tokens=T, tile=tile)
    cprep = reference.route_prep(torch.from_numpy(ids), E, threshold=0)
    x64, up64, down64 = x.double(), up.double(), down.double()
    want_plain = reference.expert_hot_rows(x64, up64, cprep, in_pairs=cprep.hot_pairs, top_k=k, out_rows=2 * f,
                                           silu_chunk=False)[:rows]
    want_h = reference.expert_hot_rows(x64, up64, cprep, in_pairs=cprep.hot_pairs, top_k=k, out_rows=f,
                                       silu_chunk=True)[:rows]
    want_y = reference.expert_hot_rows(h[:rows].cpu().double(), down64, cprep, in_pairs=None, top_k=k, out_rows=d,
                                       silu_chunk=False)[:rows]
    if dtype != torch.float32:  # torch's roundings (gate, up, silu, product each in dtype): the same bits but
        # where the fp32 sums, in another order, round the other way
        torch_h = reference.expert_hot_rows(x, up, cprep, in_pairs=cprep.hot_pairs, top_k=k, out_rows=f,
                                            silu_chunk=True)[:rows]
        same = (h[:rows].cpu() == torch_h).float().mean().item()
        assert same > 0.99, f"gated up: {same:.3f} of the values are torch's"
    for got, want, name in ((plain, want_plain, "up"), (h, want_h, "gated up"), (y, want_y, "down")):
        got = got[:rows].cpu().double()
        assert torch.isfinite(got).all(), name
        rel = (got - want).norm() / want.norm()
        assert rel < (1e-5 if dtype == torch.float32 else 1e-2), f"{name}: relative error {rel:.2e}"


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("tile", TILES, ids=[str(t) for t in TILES])
def test_fused_path_on_triton_matches_the_module(tile):
    """gpu-only with the hot side on Triton (the tensor-core kernel off): the module's output within bf16's
    tolerance, the same output replayed from a CUDA graph, no fallback; a GPU set's hot side too."""
    from heteromoe.calibrate import expert_layer
    from heteromoe.runtime.fused import FusedLayerPath
    from heteromoe.runtime.layer import ExpertLayer

    E, k, d, f, T = 8, 2, 256, 1064, 160
    module = expert_layer(E, k, d, f, seed=3)
    layer = ExpertLayer.from_module("layer0", module)
    gen = torch.Generator("cuda").manual_seed(3)
    hidden = torch.randn(T, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    ids = torch.stack([torch.randperm(E, device="cuda", generator=gen)[:k] for _ in range(T)])
    weights = torch.softmax(torch.randn(T, k, device="cuda", generator=gen), -1).to(torch.bfloat16)
    path = FusedLayerPath(mma_max_tokens=0, grouped_gemm="triton", grouped_tile=tile)
    with torch.no_grad():
        ref = module(hidden, ids, weights)
        out = path.run(layer, hidden, ids, weights)
        torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2 * ref.abs().max().item())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = path.run(layer, hidden, ids, weights)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(captured, out)
        counts = np.bincount(ids.cpu().numpy().reshape(-1), minlength=E).astype(np.int32)
        counts[::2] //= 2  # half of every other expert's pairs on the cold side
        split = path.run(layer, hidden, ids, weights, gpu_set=counts)
        torch.testing.assert_close(split.float(), ref.float(), rtol=2e-2, atol=2e-2 * ref.abs().max().item())
    assert path.triton_fallbacks == 0


def test_auto_without_triton_on_the_device_is_grouped_mm_silently(caplog):
    """The default ("auto") off a GPU: grouped_mm's output, no warning, nothing counted."""
    if grouped_triton.interpreting():
        pytest.skip("under TRITON_INTERPRET=1 the Triton kernel runs on CPU tensors")
    from heteromoe.runtime.fused import FusedLayerPath

    layer, (hidden, ids, weights) = _cpu_layer()[1], _cpu_call(seed=4)
    auto = FusedLayerPath(mma_max_tokens=0)
    with torch.no_grad(), caplog.at_level("WARNING", logger="heteromoe.runtime.fused"):
        out = auto.run(layer, hidden, ids, weights)
        ref = FusedLayerPath(mma_max_tokens=0, grouped_gemm="grouped_mm").run(layer, hidden, ids, weights)
    assert torch.equal(out, ref) and auto.triton_fallbacks == 0 and not caplog.records


@pytest.mark.parametrize("triton_here", [True, False])
def test_split_k_warps_count_only_without_triton(monkeypatch, triton_here):
    """The tensor-core kernel's warp bound: with the hot side on Triton, only unsplit warps count (a
    Mixtral-shaped call at 64 tokens, 8 experts x 128 warps < 8 per SM on 132 SMs, goes to Triton); without
    Triton, split-K's warps count too (the same call runs split on the tensor cores)."""
    from heteromoe.runtime import fused as fused_mod

    class Shape:  # the Mixtral-8x7B-shaped layer's facts the rule reads
        num_experts, hidden_size, intermediate_size, dtype = 8, 4096, 14336, torch.bfloat16

    layer = Shape()
    monkeypatch.setattr(fused_mod.FusedLayerPath, "_sm_count", lambda self, device: 132)
    monkeypatch.setattr(fused_mod.kernels, "mma_supported", lambda *a: True)
    monkeypatch.setattr(fused_mod.grouped_triton, "unavailable_reason", lambda: None if triton_here else "no triton")
    path = fused_mod.FusedLayerPath()
    cuda = torch.device("cuda")
    splits = path.down_k_splits(layer, 64, 128, cuda, "mma")
    assert splits > 1  # H100_SPLIT_K cuts this down projection
    assert path.hot_on_triton(layer, cuda) is triton_here
    assert path.mma_ok(layer, 64, 128, cuda) is (not triton_here)
    qwen = type("Qwen", (), dict(num_experts=128, hidden_size=2048, intermediate_size=768, dtype=torch.bfloat16))()
    assert path.mma_ok(qwen, 64, 512, cuda)  # many experts: the tensor cores either way


def test_a_failing_triton_kernel_falls_back_logged_once_and_counted(monkeypatch, caplog):
    """A Triton launch that raises mid-run (here: a stand-in that fails): the same output as grouped_mm, one
    warning naming the error, every call of that shape counted, Triton not tried again for it, and the one-call
    records' cached kernel choices (made counting on Triton) forgotten."""
    from heteromoe.runtime import fused as fused_mod

    monkeypatch.setattr(fused_mod.grouped_triton, "interpreting", lambda: True)  # let CPU tensors through
    monkeypatch.setattr(fused_mod.grouped_triton, "unavailable_reason", lambda: None)
    tries = []

    def broken(*args, **kwargs):
        tries.append(1)
        raise RuntimeError("out of resources: shared memory\nmore detail")

    monkeypatch.setattr(fused_mod.grouped_triton, "grouped_up", broken)
    layer, (hidden, ids, weights) = _cpu_layer()[1], _cpu_call(seed=5)
    auto = fused_mod.FusedLayerPath(mma_max_tokens=0)
    record = fused_mod._OneCall(dtype=0, weights_dtype=0, round_products=False, layer=layer,
                                device=torch.device("cpu"), err_word=None)
    record._mma[(64, 128)] = False  # a choice made while Triton took the hot side
    auto._calls[("a layer",)] = record
    with torch.no_grad(), caplog.at_level("WARNING", logger="heteromoe.runtime.fused"):
        outs = [auto.run(layer, hidden, ids, weights) for _ in range(3)]
        ref = fused_mod.FusedLayerPath(mma_max_tokens=0, grouped_gemm="grouped_mm").run(layer, hidden, ids, weights)
    assert all(torch.equal(o, ref) for o in outs)
    assert len(tries) == 1 and auto.triton_fallbacks == 3 and not auto.hot_on_triton(layer, hidden.device)
    assert record._mma == {}
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "RuntimeError: out of resources: shared memory)" in messages[0], messages
