"""`numba-cpu`: expert projections in numba-compiled loops on the CPU (float32 / float64).

The projections (x W^T + b, or x W for transposed layouts) run in numba; the gate (`_apply_gate` /
`act_fn`) stays the module's own torch function, so every family's activation is honoured as data.
"""
from __future__ import annotations

import importlib.util
import logging

import numpy as np
import torch

from heteromoe.device import Backend, BackendUnavailable
from heteromoe.runtime.layer import ExpertLayer
from heteromoe.runtime.work import WorkSlice

logger = logging.getLogger(__name__)

_kernels = None


def probe() -> str | None:
    """Entry point: available where numba imports."""
    if importlib.util.find_spec("numba") is None:
        logger.info("numba-cpu: numba is not installed; remedy: pip install numba")
        return None
    return "heteromoe_backends.numba_cpu.NumbaCpuBackend"


def _get_kernels():
    global _kernels
    if _kernels is None:
        import numba

        @numba.njit(parallel=True, cache=True)
        def linear(x, w, b, transposed, has_bias):
            # x (n, in); w (out, in) or (in, out) when transposed; b (out,)
            n = x.shape[0]
            out_dim = w.shape[1] if transposed else w.shape[0]
            in_dim = x.shape[1]
            y = np.empty((n, out_dim), dtype=x.dtype)
            for i in numba.prange(n):
                for o in range(out_dim):
                    acc = b[o] if has_bias else x.dtype.type(0)
                    if transposed:
                        for j in range(in_dim):
                            acc += x[i, j] * w[j, o]
                    else:
                        for j in range(in_dim):
                            acc += x[i, j] * w[o, j]
                    y[i, o] = acc
            return y

        _kernels = linear
    return _kernels


class NumbaCpuBackend(Backend):
    name = "numba-cpu"
    kind = "cpu"
    dtypes = (torch.float32, torch.float64)

    @classmethod
    def is_available(cls, raise_error: bool = False) -> bool:
        ok = importlib.util.find_spec("numba") is not None
        if not ok and raise_error:
            raise BackendUnavailable("numba is not installed; remedy: pip install numba")
        return ok

    def supports(self, layer: ExpertLayer) -> tuple[bool, str]:
        ok, reason = super().supports(layer)
        if ok and layer.device.type != "cpu":
            return False, f"numba-cpu runs on the CPU, layer {layer.name} is on {layer.device}"
        return ok, reason

    def _linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, transposed: bool) -> torch.Tensor:
        xn = x.detach().contiguous().numpy()
        wn = w.detach().contiguous().numpy()
        bn = b.detach().contiguous().numpy() if b is not None else np.zeros(1, dtype=xn.dtype)
        return torch.from_numpy(_get_kernels()(xn, wn, bn, transposed, b is not None))

    def _expert(self, layer: ExpertLayer, e: int, x: torch.Tensor) -> torch.Tensor:
        ok, reason = self.supports(layer)
        if not ok:
            raise BackendUnavailable(reason)
        x = x.to(layer.dtype)
        ub = layer.up_bias[e] if layer.up_bias is not None else None
        db = layer.down_bias[e] if layer.down_bias is not None else None
        h = layer.activate(self._linear(x, layer.up_weight[e], ub, layer.is_transposed))  # (n, f)
        return layer.post_norm(self._linear(h, layer.down_weight[e], db, layer.is_transposed))  # (n, d)

    def run_experts(self, layer: ExpertLayer, hidden: torch.Tensor, top_k_weights: torch.Tensor,
                    work: WorkSlice) -> torch.Tensor:
        return self._run_per_expert(layer, hidden, top_k_weights, work, lambda e, x: self._expert(layer, e, x))
