"""`gpu-only`: every expert and decode attention on the GPU, no PIM (the plain GPU baseline)."""
from __future__ import annotations

import numpy as np

from heteromoe.sched.policy import PlacementContext, Policy, Split


class GpuOnlyPolicy(Policy):
    name = "gpu-only"
    summary = "everything on GPU, no PIM"
    attention_on_pim = False
    every_expert_on_gpu = True

    def _place(self, ctx: PlacementContext) -> Split:
        gpu_tokens = ctx.slot_counts.copy()
        regime = getattr(ctx.cost.gpu, "regime_fixed_s", None)
        if regime is None:
            return Split(gpu_tokens=gpu_tokens)
        # a measured GPU table: the runtime's gpu-only path picks GEMV or grouped GEMM per expert by its tokens,
        # and pays the grouped side's fixed cost on a GPU where some expert has more than the GEMV takes
        slot_gpu = ctx.placement.slot_gpu
        times = ctx.cost.times(gpu_tokens, gpu_tokens, np.zeros_like(gpu_tokens), slot_gpu, ctx.num_gpus,
                               attention_on_pim=self.attention_on_pim, pim_layout=self.pim_layout, comm_s=ctx.comm_s)
        batch_tokens = int(ctx.counts.sum()) // ctx.cost.model.top_k
        extra = np.array([regime(gpu_tokens[slot_gpu == g], batch_tokens) for g in range(ctx.num_gpus)])
        return Split(gpu_tokens=gpu_tokens, t_comm_s=times.t_comm_s, t_gpu_s=times.t_gpu_s + extra, t_pim_s=times.t_pim_s)
