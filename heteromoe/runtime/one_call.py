"""The decode case in one host call: what one layer's one-call launches need (`_cuda.gemv_layer`,
`_cuda.plan_layer`) and the launches themselves, as `FusedLayerPath` runs them (a mixin of it).

Each microsecond of host time shows on a decode layer call: the facts that stay the same from call to call
are cached per layer, dtype pair and device, and no torch call is made that is not needed.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from heteromoe import kernels
from heteromoe.runtime.layer import ExpertLayer

if TYPE_CHECKING:
    from heteromoe.runtime.fused import FusedLayerPath

__all__ = ["OneCallLaunches"]


def _rounds_products(hidden: torch.Tensor, top_k_weights: torch.Tensor) -> bool:
    """Whether the combine rounds each weighted output to the promoted dtype before summing (what torch's
    `y * w` does unless that dtype is float32)."""
    return torch.promote_types(hidden.dtype, top_k_weights.dtype) != torch.float32


class _OneCallArgs(NamedTuple):
    """One call's arguments for `_cuda.gemv_layer` / `_cuda.plan_layer` (see FusedLayerPath._one_call_args)."""

    up: torch.Tensor
    down: torch.Tensor
    hidden: torch.Tensor
    ids: torch.Tensor
    weights: torch.Tensor
    tokens: int
    top_k: int
    stream: int
    workspace: torch.Tensor
    out: torch.Tensor


class _OneCall:
    """What one layer's one-call launches need that stays the same from call to call (per dtype pair and
    device): dtype codes, the combine's rounding, its error word, the workspace size and the tensor-core
    choice per batch shape, and where the module keeps its two weights (read on every call, so a weight
    the module replaces is seen; its parameter dict is read directly, skipping nn.Module's attribute hook)."""

    __slots__ = ("dtype", "weights_dtype", "round_products", "layer", "device", "err_word", "_mma", "_ws_bytes",
                 "_params", "_up_name", "_splits")

    def __init__(self, dtype: int, weights_dtype: int, round_products: bool, layer: ExpertLayer,
                 device: torch.device, err_word: torch.Tensor | None) -> None:
        self.dtype, self.weights_dtype, self.round_products = dtype, weights_dtype, round_products
        self.layer, self.device, self.err_word = layer, device, err_word
        self._mma: dict[tuple[int, int], bool] = {}
        self._splits: dict[tuple[int, int], int] = {}
        self._ws_bytes: dict[tuple[int, int, bool, int], int] = {}
        self._up_name = "gate_up_proj" if layer.has_gate else "up_proj"
        params = layer.module._parameters
        self._params = params if self._up_name in params and "down_proj" in params else None

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's (up, down) weights as the module holds them now."""
        if self._params is not None:
            return self._params[self._up_name], self._params["down_proj"]
        return self.layer.up_weight, self.layer.down_weight

    def mma_ok(self, path: FusedLayerPath, num_tokens: int, num_pairs: int) -> bool:
        """path.mma_ok, cached per shape (FusedLayerPath clears it where the answer changes: a Triton failure)."""
        ok = self._mma.get((num_tokens, num_pairs))
        if ok is None:
            ok = self._mma[(num_tokens, num_pairs)] = path.mma_ok(self.layer, num_tokens, num_pairs, self.device)
        return ok

    def down_k_splits(self, path: FusedLayerPath, num_tokens: int, num_pairs: int) -> int:
        """`_cuda.gemv_layer`'s down_k_splits for a call of this shape (path.down_k_splits, cached)."""
        splits = self._splits.get((num_tokens, num_pairs))
        if splits is None:
            layer = self.layer
            mma = num_tokens > path.tuning.gemv_batch_tokens and kernels.mma_supported(
                layer.dtype, layer.hidden_size, layer.intermediate_size)
            kernel = "mma" if mma else "gemv"  # as gemv_layer picks
            splits = self._splits[(num_tokens, num_pairs)] = path.down_k_splits(self.layer, num_tokens, num_pairs,
                                                                                 self.device, kernel)
        return splits

    def workspace_bytes(self, num_pairs: int, elem_bytes: int, planned: bool = False, down_k_splits: int = 1) -> int:
        """Bytes of `_cuda.gemv_layer`'s workspace (`_cuda.plan_layer`'s with `planned`), with room for the down
        projection's split-K partial sums where down_k_splits > 1."""
        key = (num_pairs, elem_bytes, planned, down_k_splits)
        nbytes = self._ws_bytes.get(key)
        if nbytes is None:
            layer = self.layer
            dims = (num_pairs, layer.num_experts, layer.hidden_size, layer.intermediate_size, elem_bytes)
            size = kernels._cuda.plan_layer_workspace if planned else kernels._cuda.gemv_layer_workspace
            nbytes = size(*dims, down_k_splits) if down_k_splits > 1 else size(*dims)
            self._ws_bytes[key] = nbytes
        return nbytes


class OneCallLaunches:
    """The one-call launches of FusedLayerPath (its `_silu_fused`, `_err_word`, `_side_stream`, `tuning`,
    `_calls` and `_ws` are read here)."""

    def _mma_pass(self, num_pairs: int, num_experts: int) -> dict[str, int]:
        """The tensor-core pass as the one-call entry points take it (no argument for the default kernels)."""
        tiles = self.tuning.pass_tiles(num_pairs, num_experts)
        return {"mma_pass_tiles": tiles} if tiles else {}

    # -- the decode case in one host call ----------------------------------------------------------------
    def _one_call(self, layer: ExpertLayer, hidden: torch.Tensor, top_k_weights: torch.Tensor) -> _OneCall | None:
        """The layer's one-call facts for these dtypes on this device, or None where the one call cannot run
        (cached: this runs on every decode layer call, where each microsecond of host time shows)."""
        key = (id(layer.module), hidden.dtype, top_k_weights.dtype, hidden.get_device())
        call = self._calls.get(key, False)
        if call is False:
            ok = (hidden.is_cuda and kernels.HAS_CUDA_KERNELS and self._silu_fused(layer) and hidden.dtype == layer.dtype
                  and hidden.dtype in kernels._DTYPE_CODE and top_k_weights.dtype in kernels._DTYPE_CODE)
            call = None
            if ok:  # it holds the layer, so the module stays alive and its id names it
                call = _OneCall(dtype=kernels._DTYPE_CODE[hidden.dtype],
                                weights_dtype=kernels._DTYPE_CODE[top_k_weights.dtype],
                                round_products=_rounds_products(hidden, top_k_weights), layer=layer,
                                device=hidden.device, err_word=self._err_word(layer, hidden.device))
            self._calls[key] = call
        return call


    def _gemv_layer(self, layer: ExpertLayer, hidden: torch.Tensor, top_k_index: torch.Tensor,
                    top_k_weights: torch.Tensor, mma: bool, call: _OneCall) -> torch.Tensor:
        """Every expert on the list side: route_prep, up (+ SiLU gate), down, unpermute, launched by one C++
        call (`_cuda.gemv_layer`) so the host's share of a layer is one call. The projections run on the
        GEMV up to `gemv_batch_tokens` tokens, above on the tensor-core kernel when `mma` (gpu-only: the
        experts are GPU work) and the GEMV otherwise (a plan's PIM set, whose stand-in is the GEMV).
        One token with `mma` runs without route_prep (`direct`: the GEMVs read the routing itself), so that
        call leaves no counts behind (plan-ahead, which reads them, never takes it)."""
        tokens, top_k = top_k_index.shape
        splits = call.down_k_splits(self, tokens, tokens * top_k) if mma and self.tuning.split_k.splits_ever else 1
        a = self._one_call_args(layer, hidden, top_k_index, top_k_weights, call, planned=False, down_k_splits=splits)
        direct = mma and a.tokens == 1
        extra = (splits,) if splits > 1 else ()
        kernels._cuda.gemv_layer(call.dtype, call.weights_dtype, a.hidden.data_ptr(), a.ids.data_ptr(), a.tokens,
                                 a.top_k, layer.num_experts, a.up.data_ptr(), a.down.data_ptr(), layer.hidden_size,
                                 layer.intermediate_size, a.weights.data_ptr(), call.round_products,
                                 self.tuning.gemv_batch_tokens + 1 if mma else 0, direct, a.workspace.data_ptr(),
                                 a.out.data_ptr(), call.err_word.data_ptr(), a.stream, *extra,
                                 **self._mma_pass(tokens * top_k, layer.num_experts))
        if direct:
            self.last_counts = None
        else:
            self._last_ws = (a.workspace, layer.num_experts)  # the workspace opens with the counts (see last_counts)
        return a.out

    def _plan_layer(self, layer: ExpertLayer, hidden: torch.Tensor, top_k_index: torch.Tensor,
                    top_k_weights: torch.Tensor, call: _OneCall, plan: kernels.DevicePlan,
                    plan_out: torch.Tensor, hot_mma: bool) -> torch.Tensor:
        """A plan policy's call planned on the device, in one C++ call (`_cuda.plan_layer`): route_prep with the
        planner, the GPU set on `expert_mma` beside the PIM set on the GEMV (second stream), unpermute; without
        `hot_mma` (a decode-sized batch, both sets on the GEMV) one GEMV launch per projection runs both sets,
        on this stream; one token, whose rows no plan changes, runs gpu-only's one-token tail after route_prep
        has planned (three kernels). The general path below does the same in some twenty torch calls, most of a
        layer's host time."""
        plan_args = plan.kernel_args
        tokens, top_k = top_k_index.shape
        splits = call.down_k_splits(self, tokens, tokens * top_k) if hot_mma and self.tuning.split_k.splits_ever else 1
        a = self._one_call_args(layer, hidden, top_k_index, top_k_weights, call, planned=True, down_k_splits=splits)
        kernels._cuda.plan_layer(call.dtype, call.weights_dtype, a.hidden.data_ptr(), a.ids.data_ptr(), a.tokens,
                                 a.top_k, layer.num_experts, a.up.data_ptr(), a.down.data_ptr(), layer.hidden_size,
                                 layer.intermediate_size, a.weights.data_ptr(), call.round_products, *plan_args,
                                 plan_out.data_ptr(), hot_mma, a.workspace.data_ptr(), a.out.data_ptr(),
                                 call.err_word.data_ptr(), a.stream,
                                 self._side_stream(call.device).cuda_stream if hot_mma else 0,  # fork only with hot_mma
                                 *((splits,) if splits > 1 else ()),
                                 **self._mma_pass(tokens * top_k, layer.num_experts))
        self._last_ws = (a.workspace, layer.num_experts)
        return a.out

    def _one_call_args(self, layer: ExpertLayer, hidden: torch.Tensor, top_k_index: torch.Tensor,
                       top_k_weights: torch.Tensor, call: _OneCall, planned: bool,
                       down_k_splits: int = 1) -> _OneCallArgs:
        """The tensors both one-call entry points take, checked and laid out as the kernels read them, the
        workspace and the output. The host's share of every decode layer: no torch call that is not needed
        (each costs microseconds)."""
        up, down = call.weights()
        if down.dtype != hidden.dtype or up.dtype != hidden.dtype:  # the module was converted since: its dtype
            raise RuntimeError(f"layer {layer.name}: weights are {down.dtype}, hidden states {hidden.dtype}")
        tokens, top_k = top_k_index.shape
        ids = top_k_index if top_k_index.dtype is torch.int64 else top_k_index.to(torch.int64)
        ids = ids if ids.is_contiguous() else ids.contiguous()
        weights = top_k_weights if top_k_weights.is_contiguous() else top_k_weights.contiguous()
        hidden = hidden if hidden.is_contiguous() else hidden.contiguous()
        stream = kernels._stream(call.device)
        ws = self._workspace(call.device, stream, call.workspace_bytes(tokens * top_k, hidden.element_size(), planned,
                                                                       down_k_splits))
        out = torch.empty(tokens, layer.hidden_size, dtype=hidden.dtype, device=call.device)
        return _OneCallArgs(up, down, hidden, ids, weights, tokens, top_k, stream, ws, out)

    def _workspace(self, device: torch.device, stream: int, nbytes: int) -> torch.Tensor:
        """A workspace reused by the calls on one stream (they are ordered on it), grown as needed; a fresh
        one while a CUDA graph is being captured (the graph keeps its own)."""
        if torch.cuda.is_current_stream_capturing():
            return torch.empty(nbytes, dtype=torch.uint8, device=device)
        ws = self._ws.get(stream)  # a stream handle names one stream of one device
        if ws is None or ws.numel() < nbytes:
            ws = self._ws[stream] = torch.empty(max(nbytes, 1 << 20), dtype=torch.uint8, device=device)
        return ws
