"""Greedy decoding with each decode step replayed as one CUDA graph.

A wrapped layer call is light on the host but still host work: Python, torch dispatch and a few kernel
launches, tens of microseconds per layer, more than a decode layer's GPU time at small batch. Serving
engines capture the decode step once and replay it (vLLM, TensorRT-LLM, SGLang); this does the same for a
transformers model, wrapped by heteromoe or not: transformers' `StaticCache` keeps the KV cache at fixed
addresses, the step's token and position live in fixed tensors, and one graph per batch size replays the
whole step (every layer: attention, router, the experts' kernels, and for plan policies the plan made on
the device, `wrap(..., plan_on_device=True)`). The host's work per step is then a few copies and one
graph launch, whatever the number of layers.

The prefill runs eagerly (its length varies); so does the first decode step of a new batch size, which is
also the warm-up the capture needs. Graph replays do not go through Python, so a wrapped model's
per-layer statistics (`runtime.report()`) count only the eager calls.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

__all__ = ["GraphedGreedyDecoder"]


@dataclass
class _StepGraph:
    """One batch size's decode step: its cache, its fixed inputs and output, and the captured graph."""

    cache: object  # transformers.StaticCache
    step_ids: torch.Tensor  # [B, 1] the token fed at this step
    step_pos: torch.Tensor  # [1] its position
    next_ids: torch.Tensor | None = None  # [B] the step's greedy token (the graph writes it)
    graph: torch.cuda.CUDAGraph | None = None
    capture_error: str | None = None  # why the step could not be captured (it then runs eagerly)


class GraphedGreedyDecoder:
    """Greedy generation of a fixed number of tokens, each decode step one CUDA graph replay.

    Args:
        model: a transformers causal LM (wrapped by `heteromoe.wrap` or not) on a CUDA device.
        max_cache_len: the longest prompt + new tokens a call may ask for (the static cache's length).
        use_graph: replay captured graphs (default on CUDA); False runs the same static-cache loop eagerly
            (the reference the graphs are tested against, and what runs on CPU).
    """

    def __init__(self, model, max_cache_len: int, use_graph: bool | None = None) -> None:
        if max_cache_len < 2:
            raise ValueError(f"max_cache_len must be >= 2, got {max_cache_len}")
        self.model = model
        self.max_cache_len = int(max_cache_len)
        self.device = next(model.parameters()).device
        self.use_graph = self.device.type == "cuda" if use_graph is None else bool(use_graph)
        if self.use_graph and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a CUDA device; it is on {self.device}")
        self._steps: dict[int, _StepGraph] = {}

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | None = None,
                 pad_token_id: int = 0) -> torch.Tensor:
        """[B, L + max_new_tokens]: the prompts and their greedy continuations.

        The prompts are unpadded: every sequence of the batch is `L` real tokens (there is no attention
        mask). Every step runs for the whole batch (a graph has one shape), so the device is never asked
        whether a sequence has ended; with `eos_token_id`, what a sequence generates after its first stop
        token is replaced by `pad_token_id`, as transformers' generate() pads the sequences it finished (which
        also stops once all have: its result may be shorter, never different where both have tokens).
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, length], got {tuple(input_ids.shape)}")
        batch, length = input_ids.shape
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if length + max_new_tokens > self.max_cache_len:
            raise ValueError(f"prompt {length} + {max_new_tokens} new tokens exceed max_cache_len {self.max_cache_len}")
        input_ids = input_ids.to(self.device)
        step = self._step_for(batch)
        step.cache.reset()
        logits = self.model(input_ids=input_ids, past_key_values=step.cache,
                            cache_position=torch.arange(length, device=self.device), use_cache=True).logits
        tokens = [logits[:, -1].argmax(-1)]
        step.step_pos.fill_(length)
        for _ in range(max_new_tokens - 1):
            step.step_ids.copy_(tokens[-1][:, None])
            if step.graph is not None:
                step.graph.replay()
                tokens.append(step.next_ids.clone())
            else:
                tokens.append(self._eager_step(step))
                if self.use_graph and step.capture_error is None:
                    self._capture(step)  # after the eager step (the warm-up): the graph holds the next ones
            step.step_pos += 1
        new = torch.stack(tokens, dim=1)
        if eos_token_id is not None:  # after each sequence's first stop token: padding
            ended = torch.cumsum((new == eos_token_id).int(), dim=1) - (new == eos_token_id).int() > 0
            new = new.masked_fill(ended, pad_token_id)
        return torch.cat([input_ids, new], dim=1)

    # -- internals -------------------------------------------------------------------------------
    def _step_for(self, batch: int) -> _StepGraph:
        step = self._steps.get(batch)
        if step is None:
            from transformers import StaticCache

            cache = StaticCache(config=self.model.config, max_cache_len=self.max_cache_len)
            step = self._steps[batch] = _StepGraph(
                cache=cache, step_ids=torch.zeros(batch, 1, dtype=torch.long, device=self.device),
                step_pos=torch.zeros(1, dtype=torch.long, device=self.device))
        return step

    def _forward_step(self, step: _StepGraph) -> torch.Tensor:
        logits = self.model(input_ids=step.step_ids, past_key_values=step.cache, cache_position=step.step_pos,
                            use_cache=True).logits
        return logits[:, -1].argmax(-1)

    def _eager_step(self, step: _StepGraph) -> torch.Tensor:
        if not self.use_graph or step.capture_error is not None:
            return self._forward_step(step)
        # the capture's warm-up: on a side stream, as torch.cuda.graph asks (lazy inits, cuBLAS workspaces)
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            out = self._forward_step(step)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return out

    def _capture(self, step: _StepGraph) -> None:
        """Record one decode step (not run: capture only records) reading step_ids / step_pos. A step that
        cannot be captured (an operation in it copies to or waits for the host: torch's float32 grouped_mm
        does) is logged and runs eagerly from then on; no token is lost (nothing ran during the capture)."""
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                next_ids = self._forward_step(step)
        except Exception as exc:  # noqa: BLE001 - any capture failure: the eager loop computes the same tokens
            step.capture_error = f"{type(exc).__name__}: {exc}"
            logger.warning("decode step of batch %d not captured in a CUDA graph (%s); it runs eagerly",
                           step.step_ids.shape[0], step.capture_error)
            torch.cuda.synchronize(self.device)
            return
        step.next_ids, step.graph = next_ids, graph
