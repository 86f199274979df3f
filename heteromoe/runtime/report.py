"""Per-layer statistics of a wrapped model, summed over calls (`runtime.report()`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from heteromoe.sched.plan import Plan

__all__ = ["LayerStats", "Records"]


#: The fields of LayerStats a plan adds to (`LayerStats.add_sums`).
SUMS = ("calls", "tokens", "pairs", "gpu_experts", "pim_experts", "gpu_tokens", "pim_tokens", "pim_calls", "t_comm_s",
        "t_gpu_s", "t_pim_s", "predicted_time_s")


@dataclass
class LayerStats:
    """Sums over the calls of one MoE layer, with the same meaning whichever roles ran them.

    `calls` layer calls of `tokens` tokens routed `pairs` (token, expert) pairs; of their plans' slots
    `gpu_experts` / `pim_experts` had GPU / PIM work, `gpu_tokens` / `pim_tokens` pairs ran there and
    `pim_calls` calls had PIM work at all. Times are the plans' predicted (emulated) seconds, summed over
    every call whose plan reached the host; `unplanned_calls` counts the others (`gpu-only` on the CUDA
    kernels, whose counts never leave the device: their pairs count as GPU pairs, their times as 0).
    `fallbacks`: slices or calls re-run on the fallback backend / the backends runner.
    """

    name: str
    calls: int = 0
    tokens: int = 0
    pairs: int = 0
    gpu_experts: int = 0
    pim_experts: int = 0
    gpu_tokens: int = 0
    pim_tokens: int = 0
    t_comm_s: float = 0.0
    t_gpu_s: float = 0.0
    t_pim_s: float = 0.0
    predicted_time_s: float = 0.0
    fallbacks: int = 0
    pim_calls: int = 0
    unplanned_calls: int = 0

    def add(self, plan: Plan, num_tokens: int) -> None:
        """One call's plan."""
        gpu, pim = int(plan.gpu_tokens.sum()), int(plan.pim_tokens.sum())
        self.calls += 1
        self.tokens += num_tokens
        self.pairs += gpu + pim
        self.gpu_experts += int(plan.gpu_experts.size)
        self.pim_experts += int(plan.pim_experts.size)
        self.gpu_tokens += gpu
        self.pim_tokens += pim
        self.pim_calls += int(pim > 0)
        self.t_comm_s += plan.t_comm_s
        self.t_gpu_s += plan.t_gpu_s
        self.t_pim_s += plan.t_pim_s
        self.predicted_time_s += plan.predicted_time_s

    def add_sums(self, **sums) -> None:
        """Several calls at once (their sums of each field of `SUMS`, all of them), as that many `add` calls
        would (plans settled in bulk)."""
        if sums.keys() != set(SUMS):
            raise TypeError(f"add_sums takes exactly {list(SUMS)}, got {sorted(sums)}")
        for name in SUMS:
            setattr(self, name, getattr(self, name) + sums[name])

    def add_unplanned(self, num_tokens: int, num_pairs: int) -> None:
        """A call whose plan never reached the host (`gpu-only` on the CUDA kernels): every pair on the GPU."""
        self.calls += 1
        self.unplanned_calls += 1
        self.tokens += num_tokens
        self.pairs += num_pairs
        self.gpu_tokens += num_pairs

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Records:
    """What an executor keeps of its calls: each layer's LayerStats and its last plan."""

    stats: dict[str, LayerStats] = field(default_factory=dict)
    last_plans: dict[str, Plan] = field(default_factory=dict)

    def layer(self, name: str) -> LayerStats:
        """The layer's statistics (created on its first call; a lookup on every other, so as not to build a
        LayerStats per call only to throw it away)."""
        stats = self.stats.get(name)
        if stats is None:
            stats = self.stats[name] = LayerStats(name)
        return stats

    def add(self, name: str, plan: Plan, num_tokens: int) -> None:
        """One call's plan into the layer's statistics and `last_plans`."""
        self.layer(name).add(plan, num_tokens)
        self.last_plans[name] = plan
