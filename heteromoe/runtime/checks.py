"""Checks of what enters and leaves a layer call: the caller's tensors, and each backend's output."""
from __future__ import annotations

import torch

from heteromoe.runtime.layer import ExpertLayer
from heteromoe.runtime.work import WorkSlice

__all__ = ["BackendOutputError", "check_backend_output", "check_inputs"]


class BackendOutputError(RuntimeError):
    """The fallback backend itself returned an output of the wrong form: nothing trusted is left to run on."""


def check_inputs(layer: ExpertLayer, hidden: torch.Tensor, top_k_index: torch.Tensor,
                 top_k_weights: torch.Tensor) -> None:
    """ValueError naming the layer unless hidden is [T, d] and top_k_index / top_k_weights are both [T, k]."""
    if hidden.dim() != 2 or hidden.shape[-1] != layer.hidden_size:
        raise ValueError(f"layer {layer.name}: hidden states must be [tokens, {layer.hidden_size}], got {tuple(hidden.shape)}")
    if top_k_index.shape != top_k_weights.shape or top_k_index.shape[0] != hidden.shape[0]:
        raise ValueError(f"layer {layer.name}: top_k_index {tuple(top_k_index.shape)} and top_k_weights "
                         f"{tuple(top_k_weights.shape)} must both be [{hidden.shape[0]}, k]")


def check_backend_output(out, work: WorkSlice, hidden: torch.Tensor, top_k_weights: torch.Tensor,
                         out_dtype: torch.dtype, finite: bool = True) -> str | None:
    """What is wrong with a backend's output for `work`, in words, or None when it is sound.

    Sound: a tensor of shape [P, d] in `out_dtype` on the hidden states' device and, with `finite`, no
    non-finite value in a row whose inputs (the token's hidden state and the pair's routing weight) are
    finite: such a row's NaN / Inf comes from the layer's inputs and is the unwrapped model's too.

    Cost: the form checks read metadata only; the finiteness check is one sum over the output (NaN or Inf
    anywhere makes it non-finite) and one host read of the result; only when that sum is not finite (a
    non-finite value, or a sum that overflows) are the rows and their inputs looked at.
    """
    if not isinstance(out, torch.Tensor):
        return f"a {type(out).__name__}, not a torch.Tensor"
    expected = (work.num_pairs, hidden.shape[-1])
    if tuple(out.shape) != expected:
        return f"shape {tuple(out.shape)}, expected {expected}"
    if out.dtype != out_dtype:
        return f"dtype {out.dtype}, expected {out_dtype}"
    if out.device != hidden.device:
        return f"a tensor on {out.device}, expected {hidden.device}"
    if not finite or bool(torch.isfinite(out.sum())):
        return None
    bad_rows = ~torch.isfinite(out).all(dim=1)
    tokens = work.token_index(hidden.device)
    inputs_finite = torch.isfinite(hidden[tokens]).all(dim=1) & torch.isfinite(work.pair_weights(top_k_weights))
    unexplained = bad_rows & inputs_finite
    if bool(unexplained.any()):
        return f"non-finite values in {int(unexplained.sum())} of {work.num_pairs} rows whose inputs are finite"
    return None
