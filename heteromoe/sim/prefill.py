"""Colocated prefill schedules: how many of a batch's requests are in prefill, and their prompt tokens per step.

Sieve §7.3 evaluates Qwen3 with up to two prefill requests per batch for B <= 32 and up to eight for B >= 64,
and gives no prompt length. Two readings of "prompt tokens in a step":

- `sieve_prefill(batch, prompt_tokens)`: every prefill request brings its whole prompt into the step;
- `chunked_prefill(batch, budget)`: a decode-first token budget per step, as vLLM's scheduler with chunked
  prefill (`max_num_batched_tokens`; vLLM docs, "Optimization and Tuning": decodes are batched first, the rest
  of the budget goes to prefill chunks; the docs cite SARATHI, arXiv 2308.16369) does, with the prefill
  requests sharing `budget - decode requests` tokens evenly (this model's choice: vLLM's default
  `max_num_partial_prefills = 1` gives the remainder to the first prefill in the queue). A chunk's attention to the earlier chunks of its prompt is
  not added (the simulator costs each step's prompt tokens as a causal block).

Each returns (prefill requests, prompt tokens each), the `prefill` argument of `sweep` and `StepSimulator`.
"""
from __future__ import annotations

__all__ = ["chunked_prefill", "sieve_prefill", "sieve_prefill_requests"]


def sieve_prefill_requests(batch: int) -> int:
    """Prefill requests in a batch of `batch` (Sieve §7.3): two up to B = 32, eight above; none below B = 4,
    where two prefill requests would leave (almost) no decode requests."""
    if batch < 4:
        return 0
    return 2 if batch <= 32 else 8


def sieve_prefill(batch: int, prompt_tokens: int = 1024) -> tuple[int, int]:
    """Sieve §7.3's prefill requests, each with its whole `prompt_tokens`-token prompt in the step."""
    requests = sieve_prefill_requests(batch)
    return (requests, int(prompt_tokens)) if requests and prompt_tokens > 0 else (0, 0)


def chunked_prefill(batch: int, budget: int, requests: int | None = None) -> tuple[int, int]:
    """`requests` prefill requests (default: Sieve §7.3's) sharing a decode-first budget of `budget` tokens
    per step: each gets (budget - decode requests) // requests prompt tokens; none when decodes fill it."""
    if budget < 1:
        raise ValueError(f"budget must be >= 1 token per step, got {budget}")
    requests = sieve_prefill_requests(batch) if requests is None else min(int(requests), batch)
    if requests <= 0:
        return (0, 0)
    each = (int(budget) - (batch - requests)) // requests
    return (requests, each) if each > 0 else (0, 0)
