"""The fused layer path: one MoE layer call as a few device kernels, without a host round trip.

    route_prep (1 block: counts, hot/cold split, stable permutation)
      hot  side (main stream):   expert_mma(gate_up, SiLU gate fused) -> expert_mma(down)   (tensor cores)
                                 or, above `mma_max_tokens` or where its down projection has too few warps,
                                 Triton up with the SiLU gate -> Triton down (`grouped_gemm`: by default where
                                 Triton runs), else gather_rows -> grouped_mm -> gate -> grouped_mm
                                 or, up to `gemv_batch_tokens` tokens, the GEMV as on the cold side
      cold side (second stream): expert_gemv(gate_up, SiLU gate fused) -> expert_gemv(down)
    unpermute (weighted sum over each token's k slots; waits on both sides)

Policy `gpu-only` (no plan): batches of at most `gemv_batch_tokens` tokens run every expert on the GEMV,
batches up to `mma_max_tokens` every expert on the tensor-core kernel where its down projection has enough
warps (both read each weight once per pass of up to 8 / 32 tokens; `KernelTuning.pass_tiles` widens the
tensor cores' pass to 48 from 16 pairs per expert on), all in one C++ call (one token: without route_prep, the
GEMVs read the routing); other batches split by a kernel choice made on the device (experts with at most
`gemv_max_tokens` tokens take the GEMV, the rest the grouped GEMM: Triton's where it runs, else torch's
grouped_mm; `KernelTuning.grouped_gemm`). Other policies: the cold experts are the plan's PIM set
(`gpu_set`: the GPU's share of each expert; the cold rows are the PIM backend's, whose functional stand-in
is the same GEMV kernel); planned on the device, a call is one C++ call too, its GPU set on the GEMV or the
tensor-core kernel by the same batch rule. Nothing waits on the host: the path can be captured in a CUDA
graph. On CPU (float32) the same path runs the C++ / numba twins.

Names: "hot" and "cold" are the kernels' two sides (tensor cores or grouped GEMM; the GEMV); "GPU set" and
"PIM set" are a plan's halves. Under a plan the cold side runs the PIM set; under `gpu-only` it runs the
experts of at most `gemv_max_tokens` tokens, all of them GPU work.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from heteromoe import kernels
from heteromoe.kernels import grouped_triton
from heteromoe.kernels.grouped_triton import GroupedTile
from heteromoe.kernels.splitk import SplitKRule, expected_experts, launched_splits
from heteromoe.runtime.fused_checks import gate_is_silu_chunk, unsupported_reason
from heteromoe.runtime.layer import ExpertLayer
from heteromoe.runtime.options import DEFAULT_TUNING, KernelTuning
from heteromoe.runtime.one_call import OneCallLaunches, _OneCall, _rounds_products  # noqa: F401 - _OneCall: tests

logger = logging.getLogger(__name__)

__all__ = ["FusedLayerPath", "unsupported_reason"]

class FusedLayerPath(OneCallLaunches):
    """Runs layer calls through `heteromoe.kernels` (one instance per wrapped model).

    Args:
        tuning: the kernel choices (`runtime.options.KernelTuning`; default: `DEFAULT_TUNING`, today's
            measured choices).
        gemv_max_tokens / streams / gemv_batch_tokens / mma_max_tokens / mma_min_warps_per_sm / split_k /
            mma_pass_tiles / grouped_gemm / grouped_tile: each replaces that field of `tuning` where given (not
            None).
    """

    def __init__(self, gemv_max_tokens: int | None = None, streams: bool | None = None,
                 gemv_batch_tokens: int | None = None, mma_max_tokens: int | None = None,
                 mma_min_warps_per_sm: int | None = None, split_k: SplitKRule | None = None,
                 tuning: KernelTuning | None = None, mma_pass_tiles: int | None = None,
                 grouped_gemm: str | None = None, grouped_tile: GroupedTile | None = None) -> None:
        given = dict(gemv_max_tokens=gemv_max_tokens, streams=streams, gemv_batch_tokens=gemv_batch_tokens,
                     mma_max_tokens=mma_max_tokens, mma_min_warps_per_sm=mma_min_warps_per_sm, split_k=split_k,
                     mma_pass_tiles=mma_pass_tiles, grouped_gemm=grouped_gemm, grouped_tile=grouped_tile)
        self.tuning = dataclasses.replace(tuning or DEFAULT_TUNING, **{k: v for k, v in given.items() if v is not None})
        self._sms: dict[torch.device, int] = {}
        self._side: dict[torch.device, torch.cuda.Stream] = {}
        self._gate_fused: dict[int, bool] = {}
        self._grouped_ok: dict[tuple, bool] = {}
        self._triton_ok: dict[tuple, bool] = {}  # per _triton_key: whether the hot side runs on Triton
        self._triton_failed: set[tuple] = set()  # keys whose calls fall back to grouped_mm, warned about once
        #: hot-side calls where grouped_mm ran for the Triton kernel: it failed (any choice but grouped_mm), or
        #: `grouped_gemm="triton"` and it cannot run here (no Triton, no GPU)
        self.triton_fallbacks = 0
        self._err_host: dict[str, torch.Tensor] = {}
        self._err_view: dict[str, np.ndarray] = {}  # numpy views of _err_host (read on every call)
        self._last_prep_counts: torch.Tensor | None = None
        self._last_ws: tuple | None = None
        self._ws: dict[int, torch.Tensor] = {}
        self._calls: dict[tuple, _OneCall | None] = {}

    # -- public ------------------------------------------------------------------------------------
    def run(self, layer: ExpertLayer, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
            gpu_set: np.ndarray | torch.Tensor | None = None, pim_set_max_tokens: int | None = None,
            gpu_set_nonempty: bool = True, device_plan: kernels.DevicePlan | None = None,
            plan_out: torch.Tensor | None = None) -> torch.Tensor:
        """[T, d] the layer's combined expert output in hidden's dtype.

        Args:
            gpu_set: [E] the plan's GPU tokens per expert (the GPU set; the rest of each expert's pairs is the
                PIM set, run on the GEMV side), host array or int32 device tensor (None: every expert on the GPU,
                kernel choice by token count).
            pim_set_max_tokens: the most tokens any expert of the PIM set has, when the caller knows it (picks
                the GEMV tile).
            gpu_set_nonempty: with a device `gpu_set`, False says it is all zeros (the host knows; skips the
                GPU side).
            device_plan: plan on the device from this call's counts (policy sieve/heteromoe, one GPU); the
                plan's GPU tokens per expert land in row 0 of `plan_out` ([2, E] int32), the counts in row 1.
        """
        num_tokens, top_k = top_k_index.shape
        num_pairs = num_tokens * top_k
        tuning = self.tuning
        self._raise_deferred_error(layer)
        if gpu_set is None and device_plan is None:
            call = self._one_call(layer, hidden, top_k_weights)
            if call is not None and (num_tokens <= tuning.gemv_batch_tokens
                                     or call.mma_ok(self, num_tokens, num_pairs)):
                return self._gemv_layer(layer, hidden, top_k_index, top_k_weights, mma=True, call=call)
        if device_plan is not None and plan_out is not None and tuning.streams:
            call = self._one_call(layer, hidden, top_k_weights)
            if call is not None:
                # the GPU set as gpu-only runs: on the GEMV up to gemv_batch_tokens tokens, else on expert_mma
                hot_mma = num_tokens > tuning.gemv_batch_tokens
                if not hot_mma or call.mma_ok(self, num_tokens, num_pairs):
                    return self._plan_layer(layer, hidden, top_k_index, top_k_weights, call, device_plan, plan_out,
                                            hot_mma)
        if device_plan is not None:
            threshold, may_have_hot, may_have_cold, max_tokens = 0, True, True, num_tokens
        elif gpu_set is None:
            # small batches: every expert on the GEMV (it reads each weight once for up to gemv_batch_tokens
            # tokens); larger ones: the experts above gemv_max_tokens on the grouped GEMM
            small = num_tokens <= tuning.gemv_batch_tokens
            threshold = tuning.gemv_batch_tokens if small else tuning.gemv_max_tokens
            may_have_hot = num_tokens > threshold  # an expert has at most T tokens (top-k ids are distinct)
            may_have_cold = True
            max_tokens = min(num_tokens, threshold)
        else:
            if not isinstance(gpu_set, torch.Tensor):
                gpu_set = np.asarray(gpu_set, dtype=np.int32)
            threshold = 0
            may_have_hot = bool(gpu_set.any()) if not isinstance(gpu_set, torch.Tensor) else gpu_set_nonempty
            may_have_cold = pim_set_max_tokens is None or pim_set_max_tokens > 0
            max_tokens = num_tokens if pim_set_max_tokens is None else max(int(pim_set_max_tokens), 1)
        if not may_have_hot and device_plan is None and (call := self._one_call(layer, hidden, top_k_weights)):
            return self._gemv_layer(layer, hidden, top_k_index, top_k_weights, mma=False, call=call)  # all cold
        if device_plan is not None:
            prep = kernels.route_prep_plan(top_k_index, layer.num_experts, device_plan, plan_out=plan_out,
                                           err_out=self._err_word(layer, top_k_index.device))
        else:
            prep = kernels.route_prep(top_k_index, layer.num_experts, take_hot=gpu_set, threshold=threshold,
                                      err_out=self._err_word(layer, top_k_index.device))
        self._check_ids(layer, prep, top_k_index)
        self.last_counts = prep.counts  # [E] on the device: plan-ahead copies them to the host

        hidden = hidden.contiguous()
        use_side = hidden.is_cuda and tuning.streams and may_have_hot and may_have_cold
        y_cold = y_hot = None
        main = torch.cuda.current_stream(hidden.device) if use_side else None
        try:
            if may_have_cold:
                if use_side:
                    side = self._side_stream(hidden.device)
                    side.wait_stream(main)
                    with torch.cuda.stream(side):
                        y_cold = self._cold(layer, hidden, prep, top_k, max_tokens)
                else:
                    y_cold = self._cold(layer, hidden, prep, top_k, max_tokens)
            y_hot = self._hot(layer, hidden, prep, top_k) if may_have_hot else None
        finally:  # joined even when a side fails: a CUDA graph capture must not end with the fork open
            if use_side:
                main.wait_stream(self._side_stream(hidden.device))
        y_hot = y_hot if y_hot is not None else y_cold
        y_cold = y_cold if y_cold is not None else y_hot
        out_dtype = torch.promote_types(hidden.dtype, top_k_weights.dtype)
        assert y_hot.shape[0] == num_pairs
        return kernels.unpermute(y_hot, y_cold, prep.pair_row, top_k_weights.to(out_dtype),
                                 round_products=_rounds_products(hidden, top_k_weights)).to(hidden.dtype)

    def mma_ok(self, layer: ExpertLayer, num_tokens: int, num_pairs: int, device: torch.device) -> bool:
        """Whether a call of `num_tokens` tokens (`num_pairs` routed pairs) on `device` runs its GPU experts on
        `expert_mma` (the options above; `heteromoe calibrate` asks it which regime to measure)."""
        return self._mma_down_k_splits(layer, num_tokens, num_pairs, device) > 0

    def _mma_down_k_splits(self, layer: ExpertLayer, num_tokens: int, num_pairs: int, device: torch.device) -> int:
        """The down projection's K splits on `expert_mma` for such a call, or 0 where the call does not run
        its GPU experts on `expert_mma` (`mma_ok`): the split count decides both, so it is computed once."""
        tuning = self.tuning
        if device.type != "cuda" or num_tokens > tuning.mma_max_tokens or not kernels.mma_supported(
                layer.dtype, layer.hidden_size, layer.intermediate_size):
            return 0
        splits = self.down_k_splits(layer, num_tokens, num_pairs, device, "mma")  # 1 without split-K
        warps = min(layer.num_experts, num_pairs) * (layer.hidden_size // 32)
        if not self.hot_on_triton(layer, device):
            warps *= splits  # without Triton, split-K's warps count (the tensor cores beat grouped_mm there)
        return splits if warps >= tuning.mma_min_warps_per_sm * self._sm_count(device) else 0

    def hot_on_triton(self, layer: ExpertLayer, device: torch.device) -> bool:
        """Whether the hot experts this path runs off the tensor cores run on the Triton grouped GEMM (else
        torch's grouped_mm): `grouped_gemm` is not "grouped_mm", Triton and a GPU are here (asked once per dtype,
        device type and expert shape: this runs on every one-call layer call), and it has not failed there."""
        if self.tuning.grouped_gemm == "grouped_mm":
            return False
        key = self._triton_key(layer, device)
        here = self._triton_ok.get(key)
        if here is None:
            on_device = device.type == "cuda" or grouped_triton.interpreting()
            here = self._triton_ok[key] = on_device and grouped_triton.unavailable_reason() is None
        return here

    def down_k_splits(self, layer: ExpertLayer, num_tokens: int, num_pairs: int, device: torch.device,
                      kernel: str) -> int:
        """K splits of the down projection of a call of `num_tokens` tokens on `kernel` ("gemv" or "mma"), by
        `split_k` from the launch's shape: rows of intermediate_size elements, hidden_size rows per expert, the
        experts such a call touches under uniform routing (`expected_experts`; the counts stay on the device),
        at most num_tokens tokens each (1 off CUDA: the CPU kernels do not split)."""
        if device.type != "cuda" or not self.tuning.split_k.splits_ever:
            return 1
        top_k = num_pairs // num_tokens if num_tokens else 0
        experts = expected_experts(layer.num_experts, top_k, num_tokens)
        return launched_splits(
            self.tuning.split_k.splits(kernel, k_dim=layer.intermediate_size, out_rows=layer.hidden_size,
                                       experts=experts, tokens=num_tokens, sms=self._sm_count(device),
                                       pairs=num_pairs),
            layer.intermediate_size)

    def _sm_count(self, device: torch.device) -> int:
        if device not in self._sms:
            self._sms[device] = torch.cuda.get_device_properties(device).multi_processor_count
        return self._sms[device]

    @property
    def last_counts(self) -> torch.Tensor | None:
        """[E] int32 on the device: the last call's tokens per expert (plan-ahead copies them to the host)."""
        if self._last_ws is not None:
            ws, experts = self._last_ws
            return ws[: 4 * experts].view(torch.int32)
        return self._last_prep_counts

    @last_counts.setter
    def last_counts(self, value: torch.Tensor | None) -> None:
        self._last_prep_counts = value
        self._last_ws = None

    # -- the two sides ---------------------------------------------------------------------------------
    def _cold(self, layer: ExpertLayer, hidden: torch.Tensor, prep: kernels.RoutePrep, top_k: int,
              max_tokens: int) -> torch.Tensor:
        return self._projections(kernels.expert_gemv, layer, hidden.to(layer.dtype), prep, top_k, max_tokens, "cold")

    def _hot(self, layer: ExpertLayer, hidden: torch.Tensor, prep: kernels.RoutePrep, top_k: int) -> torch.Tensor:
        num_tokens = prep.num_pairs // top_k if top_k else 0
        hidden = hidden.to(layer.dtype)
        if hidden.is_cuda and num_tokens <= self.tuning.gemv_batch_tokens and kernels.HAS_CUDA_KERNELS:
            return self._projections(kernels.expert_gemv, layer, hidden, prep, top_k, num_tokens, "hot")
        splits = self._mma_down_k_splits(layer, num_tokens, prep.num_pairs, hidden.device)
        if splits:
            return self._projections(kernels.expert_mma, layer, hidden, prep, top_k, num_tokens, "hot",
                                     down_k_splits=splits)
        if self.tuning.grouped_gemm != "grouped_mm":
            y = self._hot_triton(layer, hidden, prep, top_k, num_tokens)
            if y is not None:
                return y
        x = kernels.gather_rows(hidden, prep.hot_pairs, top_k)
        key = (layer.dtype, hidden.device.type)
        if self._grouped_ok.get(key, True):
            try:
                return self._hot_grouped(layer, x, prep)
            except RuntimeError as exc:  # no grouped_mm kernel for this dtype/device: per-expert GEMMs
                self._grouped_ok[key] = False
                logger.info("fused path: grouped_mm unavailable for %s on %s (%s); one matmul per expert",
                            layer.dtype, hidden.device.type, exc)
        return self._hot_per_expert(layer, x, prep)

    def _projections(self, kernel, layer: ExpertLayer, x: torch.Tensor, prep: kernels.RoutePrep, top_k: int,
                     max_tokens: int, side: str, down_k_splits: int = 1) -> torch.Tensor:
        """One side's rows through both projections on `kernel` (kernels.expert_gemv or expert_mma), reading the
        tokens through that side's pairs (no gather). The GEMV on the hot side is a decode-sized batch's GPU
        set, as gpu-only runs such a batch (an expert has a token or a few: the tensor cores and the grouped
        GEMM would read its weights for nothing)."""
        fused_gate = self._silu_fused(layer)
        up = layer.up_weight
        wide = {}
        if kernel is kernels.expert_mma:
            wide = {"pass_tiles": self.tuning.pass_tiles(prep.num_pairs, layer.num_experts)}
        h = kernel(x, up, prep, in_pairs=prep.hot_pairs if side == "hot" else prep.cold_pairs, top_k=top_k,
                   out_rows=layer.intermediate_size if fused_gate else up.shape[1], silu_chunk=fused_gate,
                   max_tokens=max_tokens, side=side, **wide)
        if not fused_gate:
            h = layer.activate(h)
        # with the gate fused, the up projection is the kernel just before the down one on this stream
        return kernel(h.contiguous(), layer.down_weight, prep, in_pairs=None, top_k=top_k, out_rows=layer.hidden_size,
                      silu_chunk=False, max_tokens=max_tokens, side=side, lists_ready=fused_gate,
                      k_splits=down_k_splits, **wide)

    @staticmethod
    def _triton_key(layer: ExpertLayer, device: torch.device) -> tuple:
        """What a Triton failure is remembered by: the dtype, the device type and the expert shape (a failure
        of one shape's tiles leaves the others on Triton)."""
        return layer.dtype, device.type, layer.hidden_size, layer.intermediate_size

    def _hot_triton(self, layer: ExpertLayer, x: torch.Tensor, prep: kernels.RoutePrep, top_k: int,
                    num_tokens: int) -> torch.Tensor | None:
        """The hot side on `kernels.grouped_triton` (None where it does not run: grouped_mm runs instead). A
        failure is logged once per dtype, device type and expert shape, and every later call of that kind is
        counted in `triton_fallbacks`; with `grouped_gemm="triton"` so is a call Triton cannot take (no Triton,
        no GPU). With "auto" and no Triton here nothing is logged or counted."""
        key = self._triton_key(layer, x.device)
        if self.hot_on_triton(layer, x.device):
            gated = self._silu_fused(layer)
            try:
                h = grouped_triton.grouped_up(x, layer.up_weight, prep.hot_pairs, top_k, prep.hot_offs, gated=gated,
                                              max_tokens=num_tokens, tile=self.tuning.grouped_tile)
                if not gated:
                    h = layer.activate(h)
                return grouped_triton.grouped_down(h.contiguous(), layer.down_weight, prep.hot_offs,
                                                   max_tokens=num_tokens, tile=self.tuning.grouped_tile)
            except Exception as exc:  # Triton raises its own types (compiler, resources): each falls back
                self._triton_ok[key] = False
                self._triton_failed.add(key)
                for call in self._calls.values():  # their cached kernel choices counted on Triton
                    if call is not None:
                        call._mma.clear()
                logger.warning("fused path: the Triton grouped GEMM failed for %s %dx%d on %s (%s: %s); grouped_mm runs",
                               layer.dtype, layer.hidden_size, layer.intermediate_size, x.device.type,
                               type(exc).__name__, (str(exc).splitlines() or [""])[0])
                self.triton_fallbacks += 1
                return None
        if self.tuning.grouped_gemm == "triton" or key in self._triton_failed:
            if key not in self._triton_failed:
                self._triton_failed.add(key)
                on_device = x.is_cuda or grouped_triton.interpreting()
                reason = grouped_triton.unavailable_reason() if on_device else f"tensors on {x.device}"
                logger.warning("fused path: the Triton grouped GEMM cannot run for %s %dx%d on %s (%s); grouped_mm runs",
                               layer.dtype, layer.hidden_size, layer.intermediate_size, x.device.type, reason)
            self.triton_fallbacks += 1
        return None

    @staticmethod
    def _hot_grouped(layer: ExpertLayer, x: torch.Tensor, prep: kernels.RoutePrep) -> torch.Tensor:
        offs = prep.hot_offs
        h = torch.nn.functional.grouped_mm(x, layer.up_weight.transpose(-2, -1), offs=offs)
        h = layer.activate(h)
        return torch.nn.functional.grouped_mm(h, layer.down_weight.transpose(-2, -1), offs=offs)

    @staticmethod
    def _hot_per_expert(layer: ExpertLayer, x: torch.Tensor, prep: kernels.RoutePrep) -> torch.Tensor:
        from heteromoe.runtime.layer import expert_forward

        y = torch.zeros_like(x)
        ends = prep.hot_offs.tolist()
        begin = 0
        for e, end in enumerate(ends):
            if end > begin:
                y[begin:end] = expert_forward(layer, e, x[begin:end])
            begin = end
        return y

    # -- helpers -----------------------------------------------------------------------------------------
    def _silu_fused(self, layer: ExpertLayer) -> bool:
        key = id(layer.module)
        if key not in self._gate_fused:
            self._gate_fused[key] = gate_is_silu_chunk(layer)
        return self._gate_fused[key]

    def _side_stream(self, device: torch.device) -> torch.cuda.Stream:
        if device not in self._side:
            self._side[device] = torch.cuda.Stream(device=device)
        return self._side[device]

    def _err_word(self, layer: ExpertLayer, device: torch.device) -> torch.Tensor | None:
        """Pinned [2] int64 the CUDA route_prep fills on a bad expert id (None on CPU, where it raises at once)."""
        if device.type != "cuda":
            return None
        host = self._err_host.get(layer.name)
        if host is None:
            host = self._err_host[layer.name] = torch.zeros(2, dtype=torch.int64, pin_memory=True)
            self._err_view[layer.name] = host.numpy()
        return host

    def _check_ids(self, layer: ExpertLayer, prep: kernels.RoutePrep, top_k_index: torch.Tensor) -> None:
        """Bad expert ids: raised at once on CPU; on CUDA the kernel writes them to pinned host memory and
        the layer's next call raises (checking now would stall the stream)."""
        if not prep.meta.is_cuda:
            bad = int(prep.meta[3])
            if bad:
                self._raise_bad(layer, bad - 1, int(top_k_index.reshape(-1)[bad - 1]))

    def check_errors(self, layer: ExpertLayer) -> None:
        """Raise now if a finished CUDA call of `layer` saw a bad expert id (synchronizes the device)."""
        if layer.name in self._err_host:
            torch.cuda.synchronize()
        self._raise_deferred_error(layer)

    def _raise_deferred_error(self, layer: ExpertLayer) -> None:
        word = self._err_view.get(layer.name)
        if word is not None and word[0]:
            bad, value = int(word[0]) - 1, int(word[1])
            word[:] = 0
            self._raise_bad(layer, bad, value)

    @staticmethod
    def _raise_bad(layer: ExpertLayer, pair: int, value: int) -> None:
        raise ValueError(f"layer {layer.name}: expert id {value} at pair {pair} is outside [0, {layer.num_experts})")
