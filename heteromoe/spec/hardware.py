"""Hardware specs: GPU, PIM stacks, links and the whole system, as frozen dataclasses.

Units are in the field names (`_bytes_per_s`, `_s`, `_cycles`, `_ns`); presets are TOML data under
`spec/presets/systems/`, built by `SystemSpec.from_toml()`. Checks run in `__post_init__`, so an
impossible configuration fails where it is made, naming the field and the value.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from heteromoe.spec._build import build_dataclass, require_in, require_positive

__all__ = ["DramTimings", "GpuSpec", "LinkSpec", "PimSpec", "SystemSpec", "refresh_stretch"]


def refresh_stretch(busy, t_refi, lost, stall_only: bool = False):
    """Expected time of `busy` worth of DRAM commands when the stack is lost for `lost` every `t_refi`
    (any one unit for all three; scalars or arrays): `busy * t_refi / (t_refi - lost)`, the expectation over
    refresh phases, since only `t_refi - lost` of every period does work. With `stall_only`, the refresh
    part alone: `busy * lost / (t_refi - lost)`.

    The one refresh formula of the PIM models; what one refresh loses depends on the model:
    - the streaming flow's closed form (`BankPimTiming.refresh_factor` = `refresh_stretch(1, tREFI, tRFC)`):
      tRFC, since its command walk stalls at a command-group boundary with every bank precharged;
    - the tile flow's closed form (`cost.pim_tile.TileFlowCosts`, in cycles) and the host-attached plain
      read (`cost.pim_bank.hbm_read_s`): tRFC + tRCD, since a refresh closes the open row and it is opened
      again, as in PIMSimulator;
    - where the simulator rescales a busy time itself (a separate PIM command path: `sim.layer_work`,
      `sim.step`), the tRFC-only `BankPimTiming.refresh_factor` in either flow: its truth
      (`sim.pim_truth.with_refresh`) stalls tRFC at each tREFI boundary an operation runs into (an
      operation is far coarser than a row), and the planners' estimate is that truth's expectation.
    """
    return busy * (lost if stall_only else t_refi) / (t_refi - lost)


@dataclass(frozen=True)
class DramTimings:
    """DRAM timing parameters in clock cycles at `tck_ns` (JEDEC names); refresh in ns.

    `t_rcd_cycles` is the activate-to-read delay (tRCDRD); `t_rcd_wr_cycles` the activate-to-write delay
    (tRCDWR, 0: same as tRCD). `t_rrd_cycles` is tRRD_L (same bank group) and `t_rrd_s_cycles` tRRD_S (0: same
    as tRRD_L); `t_faw_cycles` is the window in which at most four activations issue. `t_wl_cycles` (write
    latency), `t_wtr_cycles` (tWTR_L), `t_rtp_cycles` (tRTP_L), `t_rtrs_cycles` and `t_burst_cycles` (BL/2)
    are the further constraints of a command-level walk (see `cost.pim_tile`); the streaming flow does not use them.
    """

    tck_ns: float
    t_rcd_cycles: int
    t_rp_cycles: int
    t_ras_cycles: int
    t_rc_cycles: int
    t_cl_cycles: int = 0
    t_wr_cycles: int = 0
    t_ccd_s_cycles: int = 2
    t_ccd_l_cycles: int = 4
    t_rrd_cycles: int = 0
    t_faw_cycles: int = 0
    t_refi_ns: float = 3900.0
    t_rfc_ns: float = 350.0
    t_rcd_wr_cycles: int = 0
    t_rrd_s_cycles: int = 0
    t_wl_cycles: int = 0
    t_wtr_cycles: int = 0
    t_rtp_cycles: int = 0
    t_rtrs_cycles: int = 0
    t_burst_cycles: int = 2

    def __post_init__(self) -> None:
        require_positive(self, "tck_ns", "t_rcd_cycles", "t_rp_cycles", "t_ccd_l_cycles", "t_refi_ns")
        for name in ("t_rcd_wr_cycles", "t_rrd_s_cycles", "t_wl_cycles", "t_wtr_cycles", "t_rtp_cycles",
                     "t_rtrs_cycles", "t_burst_cycles"):
            if getattr(self, name) < 0:
                raise ValueError(f"DramTimings.{name} must be >= 0, got {getattr(self, name)}")
        if self.t_rfc_ns >= self.t_refi_ns:
            raise ValueError(f"t_rfc_ns={self.t_rfc_ns} must be below t_refi_ns={self.t_refi_ns}: the stack would never be free")

    def row_step_cycles(self, cols, issue_cycles: float = 0.0):
        """Cycles of one all-bank row step whose units each run `cols` column commands (scalar or array; the
        one formula of the PIM models): the activations issue over `issue_cycles`, then tRCD; `cols` reads
        of tCCD_L each; the row stays open at least tRAS, then tRP; a bank's activations are at least tRC
        apart."""
        open_cycles = np.maximum(self.t_ras_cycles, self.t_rcd_cycles + np.asarray(cols) * self.t_ccd_l_cycles)
        return np.maximum(issue_cycles + open_cycles + self.t_rp_cycles, issue_cycles + self.t_rc_cycles)


@dataclass(frozen=True)
class GpuSpec:
    """One GPU: peak dense bf16 FLOP/s, external HBM bandwidth, and the roofline efficiencies."""

    name: str
    peak_flops_per_s: float
    ext_bw_bytes_per_s: float
    memory_bytes: float = 0.0
    eta_bw: float = 0.85
    eta_fl: float = 0.8
    launch_overhead_s: float = 5e-6

    def __post_init__(self) -> None:
        require_positive(self, "peak_flops_per_s", "ext_bw_bytes_per_s", "eta_bw", "eta_fl")
        require_in(self, "eta_bw", 0.0, 1.0)
        require_in(self, "eta_fl", 0.0, 1.0)
        if self.launch_overhead_s < 0:
            raise ValueError(f"GpuSpec.launch_overhead_s must be >= 0, got {self.launch_overhead_s}")


@dataclass(frozen=True)
class PimSpec:
    """The PIM-capable HBM stacks of one GPU.

    `kind="bank"`: processing units beside the banks (HBM-PIM, AiM); they read weights at
    `internal_bw_multiplier` x the external bandwidth, compute `flops_per_byte` FLOP per byte read, and a
    multi-token expert runs as serialized GEMVs (each token sweeps the weights again).
    `kind="logic"`: compute on the stack's logic die (Duplex Logic-PIM) behind TSVs; tokens are batched.
    When `internal_bw_multiplier` is omitted for bank-level PIM it is derived from the DRAM timings
    (see `derived_internal_bw_multiplier`), so the multiple follows from the timings; when given, the bank-level timing
    model (`cost.pim_bank`) treats it as a power cap on the internal streaming bandwidth.
    `banks_per_pim_unit`: banks sharing one processing unit (2 for Samsung HBM2-PIM, 1 for bank-level PIM
    with a unit per bank). `mode_switch_cycles`: cost of entering (and, again, leaving) all-bank PIM mode.

    `flow` is the command flow of one GEMV, stated per preset with its source in `flow_source`:
    `"stream"`: per input vector, enter PIM mode, broadcast the vector once, sweep every row of the
    channel's share with all-bank MACs, write back and read the results, leave PIM mode (AttAcc's
    WR_GB / MAC_AB / MV_SB; NeuPIMs' PIM_GWRITE / PIM_GEMV as Sieve uses them). `"tile"`: Samsung
    HBM-PIM's flow (PIMSimulator `executeGemv`): per output tile of `grf_b_registers` rows per unit and per
    input vector, a mode change into all-bank-PIM mode, then for every input tile of `grf_a_registers`
    bursts a GRF write and 8 x 8 MACs over the even banks, then the odd banks, the GRF_B write-back and a
    mode change back; park-in, the single-bank/all-bank changes and the CRF programming once per GEMV.
    `dual_row_buffers`: NeuPIMs-style dual row buffers with a PIM command path separate from the DRAM one,
    so that the GPU's own reads of these stacks proceed while the PIM units compute (Sieve section 7.1);
    without them a PIM GEMV holds the channels it runs on. The GEMV time itself is the same either way.
    """

    kind: Literal["bank", "logic"]
    stacks_per_gpu: int
    ext_bw_per_stack_bytes_per_s: float
    pseudo_channels_per_stack: int = 32
    banks_per_pseudo_channel: int = 16
    page_bytes: int = 1024
    column_bytes: int = 32
    internal_bw_multiplier: float | None = None
    flops_per_byte: float = 1.0
    flops_per_stack_per_s: float | None = None
    tokens_serialized: bool = True
    command_overhead_s: float = 0.0
    capacity_per_stack_bytes: float = 0.0
    banks_per_pim_unit: int = 1
    mode_switch_cycles: int = 0
    timings: DramTimings | None = None
    flow: Literal["stream", "tile"] = "stream"
    grf_a_registers: int = 8
    grf_b_registers: int = 8
    dual_row_buffers: bool = False
    flow_source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("bank", "logic"):
            raise ValueError(f"PimSpec.kind must be 'bank' or 'logic', got {self.kind!r}")
        if self.flow not in ("stream", "tile"):
            raise ValueError(f"PimSpec.flow must be 'stream' or 'tile', got {self.flow!r}")
        require_positive(self, "grf_a_registers", "grf_b_registers")
        if self.flow == "tile" and (self.banks_per_pim_unit != 2 or self.timings is None):
            raise ValueError("PimSpec.flow='tile' (Samsung's even/odd-bank flow) needs banks_per_pim_unit=2 and "
                             f"DRAM timings ([pim.timing]), got banks_per_pim_unit={self.banks_per_pim_unit}, "
                             f"timings={'set' if self.timings else 'none'}")
        require_positive(self, "stacks_per_gpu", "ext_bw_per_stack_bytes_per_s", "pseudo_channels_per_stack",
                         "banks_per_pseudo_channel", "page_bytes", "column_bytes", "flops_per_byte",
                         "banks_per_pim_unit")
        if self.banks_per_pseudo_channel % self.banks_per_pim_unit:
            raise ValueError(f"PimSpec.banks_per_pim_unit={self.banks_per_pim_unit} must divide "
                             f"banks_per_pseudo_channel={self.banks_per_pseudo_channel}")
        if self.mode_switch_cycles < 0:
            raise ValueError(f"PimSpec.mode_switch_cycles must be >= 0, got {self.mode_switch_cycles}")
        if self.internal_bw_multiplier is None and self.timings is None:
            raise ValueError("PimSpec needs internal_bw_multiplier or DRAM timings to derive it from")
        if self.internal_bw_multiplier is not None and self.internal_bw_multiplier <= 0:
            raise ValueError(f"PimSpec.internal_bw_multiplier must be > 0, got {self.internal_bw_multiplier}")
        if self.command_overhead_s < 0:
            raise ValueError(f"PimSpec.command_overhead_s must be >= 0, got {self.command_overhead_s}")

    @property
    def activation_groups(self) -> int:
        """Groups an all-bank activation issues in: the activation is power-limited to four banks per tFAW
        window, so the streaming flow opens a row in every bank in ceil(banks / 4) groups, one tFAW apart.
        In Samsung's tile flow one all-bank activation command opens the row of every even (or odd) bank
        at once (PIMSimulator's controller issues and paces it as one ACT), so no tFAW groups apply there."""
        return 1 if self.flow == "tile" else -(-self.banks_per_pseudo_channel // 4)

    @property
    def activation_issue_cycles(self) -> float:
        """Cycles from an all-bank activation's first group to its last (`activation_groups` - 1 tFAW)."""
        t = self.timings
        if t is None:
            raise ValueError("no DRAM timings: the bank-level model needs them")
        return (self.activation_groups - 1) * t.t_faw_cycles

    @property
    def row_step_cycles(self) -> float:
        """Cycles of one all-bank row step in steady state, before any power cap.

        All banks open one row in `activation_groups` groups under tFAW, then tRCD; every processing unit
        streams its banks' rows, `column_bytes` per tCCD_L; then tRP. The row stays open at least tRAS and
        a bank's activations are at least tRC apart.
        """
        t = self.timings
        if t is None:
            raise ValueError("no DRAM timings: the bank-level model needs them")
        return float(t.row_step_cycles(self.banks_per_pim_unit * (self.page_bytes / self.column_bytes),
                                       self.activation_issue_cycles))

    @property
    def derived_internal_bw_multiplier(self) -> float:
        """Internal/external bandwidth of one pseudo-channel in all-bank mode, from the timings.

        Per row step every unit streams `banks_per_pim_unit` rows of `page_bytes`; the step lasts
        `row_step_cycles` (activation under tFAW, tRCD, columns at tCCD_L, tRP). External: the
        pseudo-channel's share of the stack's external bandwidth.
        """
        units = self.banks_per_pseudo_channel // self.banks_per_pim_unit
        internal = units * self.banks_per_pim_unit * self.page_bytes / (self.row_step_cycles * self.timings.tck_ns * 1e-9)
        external = self.ext_bw_per_stack_bytes_per_s / self.pseudo_channels_per_stack
        return internal / external

    @property
    def bw_multiplier(self) -> float:
        """X: the preset's value when given, else derived from the timings."""
        if self.internal_bw_multiplier is not None:
            return self.internal_bw_multiplier
        return self.derived_internal_bw_multiplier

    @property
    def ext_bw_bytes_per_s(self) -> float:
        """External bandwidth of all stacks of one GPU."""
        return self.stacks_per_gpu * self.ext_bw_per_stack_bytes_per_s

    @property
    def internal_bw_bytes_per_s(self) -> float:
        """Weight-read bandwidth of all PIM units of one GPU."""
        return self.bw_multiplier * self.ext_bw_bytes_per_s

    @property
    def flops_per_s(self) -> float:
        """Compute rate of all PIM units of one GPU."""
        if self.flops_per_stack_per_s is not None:
            return self.flops_per_stack_per_s * self.stacks_per_gpu
        return self.flops_per_byte * self.internal_bw_bytes_per_s


@dataclass(frozen=True)
class LinkSpec:
    """GPU-to-GPU link (NVLink): bandwidth per direction per GPU and one-way latency."""

    bw_bytes_per_s_per_dir: float
    latency_s: float = 1e-6

    def __post_init__(self) -> None:
        require_positive(self, "bw_bytes_per_s_per_dir")
        if self.latency_s < 0:
            raise ValueError(f"LinkSpec.latency_s must be >= 0, got {self.latency_s}")


@dataclass(frozen=True)
class SystemSpec:
    """A node of identical GPUs, each with PIM-capable HBM stacks, joined by links."""

    name: str
    pim: PimSpec
    link: LinkSpec
    gpu: GpuSpec | None = None
    max_gpus: int = 8
    description: str = ""
    source: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        require_positive(self, "max_gpus")

    def require_gpu(self) -> GpuSpec:
        """The GPU spec, or a clear error for host-attached PIM presets that have none."""
        if self.gpu is None:
            raise ValueError(f"system {self.name!r} has no GPU (a host-attached PIM preset); "
                             "choose a GPU system such as 'h100-hbm3-pim'")
        return self.gpu

    def check_gpus(self, gpus: int) -> None:
        if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
            raise ValueError(f"gpus must be a positive integer, got {gpus!r}")
        if gpus > self.max_gpus:
            raise ValueError(f"gpus={gpus} exceeds system {self.name!r}'s max_gpus={self.max_gpus}")

    @classmethod
    def from_dict(cls, data: dict) -> SystemSpec:
        data = dict(data)
        pim = dict(data.pop("pim"))
        if "timing" in pim:
            pim["timings"] = build_dataclass(DramTimings, pim.pop("timing"), "pim.timing")
        built = {
            "pim": build_dataclass(PimSpec, pim, "pim"),
            "link": build_dataclass(LinkSpec, data.pop("link"), "link"),
        }
        if "gpu" in data:
            built["gpu"] = build_dataclass(GpuSpec, data.pop("gpu"), "gpu")
        return build_dataclass(cls, {**data, **built}, "system")

    @classmethod
    def from_toml(cls, path) -> SystemSpec:
        from heteromoe.spec._build import load_toml

        return cls.from_dict(load_toml(path))
