"""DevicePlan: a layer's cost tables and constants on the GPU, the arguments of the planner that runs
inside the routing kernel (`kernels.route_prep_plan`, `_cuda.plan_layer`).

The CUDA planner implements the rules of two policies, bit for bit the host fast path's (`_C.sieve_plan`,
`_C.heteromoe_plan`): `DEVICE_RULES` names them with the entry points' rule numbers. It is what the
kernels can do, so it is where a caller asks whether a policy can be planned on the device.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

__all__ = ["DEVICE_RULES", "DevicePlan"]

#: Policies whose rule the CUDA planner runs, by name -> the entry points' rule number.
DEVICE_RULES: dict[str, int] = {"sieve": 0, "heteromoe": 1}


@dataclass(frozen=True)
class DevicePlan:
    """A layer's costs for planning on the device (one GPU): the arguments of `_C.sieve_plan` /
    `_C.heteromoe_plan`, with the tables as float64 tensors on the GPU. rule: "sieve" or "heteromoe"."""

    rule: str
    flop: torch.Tensor
    pim: torch.Tensor
    read_s: float
    launch_s: float
    comm_s: float
    gpu_fixed_s: float
    pim_fixed_s: float

    @property
    def rule_code(self) -> int:
        """The CUDA entry points' number for the rule (0: sieve, 1: heteromoe)."""
        if self.rule not in DEVICE_RULES:
            raise ValueError(f"device plans exist for 'sieve' and 'heteromoe', not {self.rule!r}")
        return DEVICE_RULES[self.rule]

    @property
    def table_len(self) -> int:
        """Token counts both cost tables cover."""
        return int(min(self.flop.shape[0], self.pim.shape[0]))

    @functools.cached_property
    def kernel_args(self) -> tuple:
        """(rule, flop, pim, table_len, read_s, launch_s, comm_s, gpu_fixed_s, pim_fixed_s) as the CUDA entry
        points take them (pointers and numbers), made once: a plan is reused for every call of its layer."""
        return (self.rule_code, self.flop.data_ptr(), self.pim.data_ptr(), self.table_len, self.read_s, self.launch_s,
                self.comm_s, self.gpu_fixed_s, self.pim_fixed_s)
