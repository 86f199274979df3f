"""Bank-level HBM-PIM timing model: a command-level path and the closed form derived from it.

A GEMV `[n tokens x d_in] x [d_in x d_out]` on the PIM stacks of one GPU, weights sharded evenly over every
pseudo-channel (Sieve's layout: identical bank and row indices everywhere, so every channel runs the same
command sequence and one channel's timeline is the GEMV's). The command flow is the preset's
(`PimSpec.flow`): `"tile"` is Samsung HBM-PIM's per-tile flow, walked and derived in `cost.pim_tile`;
`"stream"` is the flow below, AttAcc's and NeuPIMs' (as Sieve uses it). In it each token is a serialized GEMV:

1. enter all-bank PIM mode (`mode_switch_cycles`);
2. write the input vector to the channel's buffers: one column write per `column_bytes`, tCCD_S apart,
   then tWR;
3. row steps until the channel's share of the weights is streamed: activate a row in every bank (the
   all-bank activation is power-limited to four banks per tFAW window), tRCD, then every processing
   unit consumes `column_bytes` per column command, tCCD_L apart, from each of its `banks_per_pim_unit`
   banks; precharge after at least tRAS, tRP; a bank's activations at least tRC apart. An explicit
   `internal_bw_multiplier` caps the streaming rate (power cap); a PIM FLOP/s figure caps compute;
4. write the partial results from the units' registers into the banks: one all-bank column write per
   `column_bytes` of a unit's outputs, tCCD_L apart, then tWR;
5. read the results back: tCL, then one column read per `column_bytes`, tCCD_S apart;
6. leave PIM mode (`mode_switch_cycles`).
Refresh: every tREFI the stack is busy for tRFC. The command-level path inserts the stall at the first
command boundary past each tREFI; the closed form scales by tREFI / (tREFI - tRFC), the expectation over
refresh phases (`spec.hardware.refresh_stretch`). Logic-PIM (compute on the logic die) is not bank-level: see `cost.pim.PimRooflineV1`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from heteromoe.cost.pim_tile import TileFlowCosts, tile_counts, walk_tile_gemv
from heteromoe.spec.hardware import PimSpec, refresh_stretch
from heteromoe.spec.model import MoEModelSpec

__all__ = ["BankPimCost", "BankPimTiming", "GemvTiming", "hbm_read_s"]


@dataclass
class GemvTiming:
    """Seconds of one GEMV call (all its tokens), by phase, and the commands when traced."""

    mode_s: float
    input_s: float
    stream_s: float
    output_s: float
    refresh_s: float
    commands: list = field(default_factory=list)

    @property
    def total_s(self) -> float:
        return self.mode_s + self.input_s + self.stream_s + self.output_s + self.refresh_s


@lru_cache(maxsize=32)
def _tile_costs(pim: PimSpec) -> TileFlowCosts:
    return TileFlowCosts.from_walks(pim)


class BankPimTiming:
    """Timing of GEMVs on the bank-level PIM stacks of one GPU (or `stacks` of them).

    `gemv` / `gemv_s`: a GEMV's closed form; `gemv_commands`: the command walk it is derived from;
    `attention_s`: decode attention's score and value GEMVs through the same flow; `hbm_read_s`: the same
    GEMV as a plain read of the weights.
    """

    def __init__(self, pim: PimSpec, stacks: int | None = None) -> None:
        if pim.kind != "bank":
            raise ValueError(f"the bank-level model needs a bank-level PIM preset, got kind={pim.kind!r}")
        if pim.timings is None:
            raise ValueError("the bank-level model needs the preset's DRAM timings ([pim.timing])")
        stacks = pim.stacks_per_gpu if stacks is None else stacks
        if not isinstance(stacks, int) or not 1 <= stacks <= pim.stacks_per_gpu:
            raise ValueError(f"stacks must be an integer in [1, {pim.stacks_per_gpu}], got {stacks!r}")
        self.pim = pim
        self.t = pim.timings
        self.stacks = stacks
        self.channels = stacks * pim.pseudo_channels_per_stack
        self.units = pim.banks_per_pseudo_channel // pim.banks_per_pim_unit
        self.tck_s = self.t.tck_ns * 1e-9
        ext_per_channel = pim.ext_bw_per_stack_bytes_per_s / pim.pseudo_channels_per_stack
        # streaming cap: bytes per cycle over the whole channel (power cap), None when uncapped
        self.cap_bytes_per_cycle = (pim.internal_bw_multiplier * ext_per_channel * self.tck_s
                                    if pim.internal_bw_multiplier is not None else None)
        flops_per_channel = (pim.flops_per_stack_per_s / pim.pseudo_channels_per_stack
                             if pim.flops_per_stack_per_s is not None else None)
        self.flops_per_cycle = flops_per_channel * self.tck_s if flops_per_channel else None
        self.issue_cycles = pim.activation_issue_cycles  # the all-bank activation's tFAW groups
        self.cols_per_step = pim.banks_per_pim_unit * pim.page_bytes // pim.column_bytes
        # tRFC only: see `spec.hardware.refresh_stretch` for which factor each model uses and why
        self.refresh_factor = refresh_stretch(1.0, self.t.t_refi_ns, self.t.t_rfc_ns)
        self.tile = _tile_costs(pim) if pim.flow == "tile" else None

    # -- shared pieces -------------------------------------------------------------------------------
    def _row_step(self, cols):
        """Cycles of a row step whose units each run `cols` column commands (scalar or array)."""
        step = self.t.row_step_cycles(cols, self.issue_cycles)
        if self.cap_bytes_per_cycle is not None:
            step = np.maximum(step, self.units * np.asarray(cols) * self.pim.column_bytes / self.cap_bytes_per_cycle)
        return step

    def _shape(self, d_in, d_out, bytes_w, bytes_a, channels):
        """Per channel: column writes of the input, column commands per unit, all-bank writes of the units'
        partial results, column reads of the output."""
        cb = self.pim.column_bytes
        in_cols = np.ceil(d_in * bytes_a / cb)
        unit_cols = np.ceil(np.ceil(d_in * d_out * bytes_w / channels) / self.units / cb)
        out_rows = np.ceil(d_out / channels)  # outputs of one channel
        partial_cols = np.ceil(np.ceil(out_rows / self.units) * bytes_a / cb)
        out_cols = np.ceil(out_rows * bytes_a / cb)
        return in_cols, unit_cols, partial_cols, out_cols

    # -- closed form ---------------------------------------------------------------------------------
    def gemv(self, d_in, d_out, tokens=1, bytes_w: float = 2.0, bytes_a: float = 2.0, share=1.0) -> GemvTiming:
        """Closed-form timing; `tokens` (input vectors sharing the weights, serialized) and `share` (fraction
        of the channels used) may be arrays."""
        if self.tile is not None:
            return self._gemv_tile(d_in, d_out, tokens, bytes_w, bytes_a, share)
        t = self.t
        channels = self.channels * np.asarray(share, dtype=np.float64)
        in_cols, unit_cols, partial_cols, out_cols = self._shape(d_in, d_out, bytes_w, bytes_a, channels)
        full, last = np.divmod(unit_cols, self.cols_per_step)
        stream = full * self._row_step(self.cols_per_step) + np.where(last > 0, self._row_step(last), 0.0)
        if self.flops_per_cycle is not None:
            stream = np.maximum(stream, 2.0 * d_in * np.ceil(d_out / channels) / self.flops_per_cycle)
        n = np.asarray(tokens, dtype=np.float64)
        mode = n * 2 * self.pim.mode_switch_cycles * self.tck_s
        inp = n * (in_cols * t.t_ccd_s_cycles + t.t_wr_cycles) * self.tck_s
        out = n * (partial_cols * t.t_ccd_l_cycles + t.t_wr_cycles + t.t_cl_cycles + out_cols * t.t_ccd_s_cycles) * self.tck_s
        stream_s = n * stream * self.tck_s
        busy = mode + inp + out + stream_s
        return GemvTiming(mode_s=mode, input_s=inp, stream_s=stream_s, output_s=out,
                          refresh_s=busy * (self.refresh_factor - 1.0))

    def _gemv_tile(self, d_in, d_out, tokens, bytes_w, bytes_a, share) -> GemvTiming:
        """Samsung's flow: the fixed part once, one pass per (output tile, input vector); see `cost.pim_tile`."""
        channels = self.channels * np.asarray(share, dtype=np.float64)
        n_in, n_out = tile_counts(self.pim, d_in, d_out, channels, bytes_w, bytes_a)
        cycles = self.tile.cycles(n_in, n_out * np.asarray(tokens, dtype=np.float64)) * self.tck_s
        return GemvTiming(mode_s=cycles[..., 0], input_s=cycles[..., 1], stream_s=cycles[..., 2],
                          output_s=cycles[..., 3], refresh_s=cycles[..., 4])

    def gemv_s(self, d_in, d_out, tokens=1, bytes_w: float = 2.0, bytes_a: float = 2.0, share=1.0):
        """Closed-form seconds (array-friendly)."""
        return self.gemv(d_in, d_out, tokens, bytes_w, bytes_a, share).total_s

    def attention_s(self, context, head_dim: int, kv_heads: int = 1, q_per_kv=1, bytes_kv: float = 2.0,
                    bytes_a: float = 2.0):
        """Seconds of decode attention's two GEMVs on PIM for `kv_heads` KV heads of `context` tokens each.

        Per KV head: the score GEMV `q K^T` (d_in = head_dim, d_out = context) and the value GEMV `p V`
        (d_in = context, d_out = head_dim), each with `q_per_kv` input vectors (the query heads of a GQA group,
        serialized like an expert's tokens). `kv_heads` counts every KV head to serve (requests x KV heads per
        layer). Heads are laid out head-parallel over the channels, as AttAcc maps heads to channels: with fewer
        heads than channels each head gets an equal group of channels and all run at once; with more, heads
        run in rounds of one head per channel. The softmax between the two GEMVs is not counted.
        """
        if not isinstance(kv_heads, (int, np.integer)) or kv_heads < 1:
            raise ValueError(f"kv_heads must be a positive integer, got {kv_heads!r}")
        per_head = max(1, self.channels // kv_heads)
        rounds = math.ceil(kv_heads / (self.channels // per_head))
        share = per_head / self.channels
        score = self.gemv_s(head_dim, context, q_per_kv, bytes_kv, bytes_a, share)
        value = self.gemv_s(context, head_dim, q_per_kv, bytes_kv, bytes_a, share)
        return rounds * (score + value)

    # -- command level --------------------------------------------------------------------------------
    def gemv_commands(self, d_in: int, d_out: int, tokens: int = 1, bytes_w: float = 2.0, bytes_a: float = 2.0,
                      refresh_phase_ns: float = 0.0, trace: bool = False) -> GemvTiming:
        """Walk the command sequence of one channel; `trace` keeps (command, cycle) pairs.

        `refresh_phase_ns` is when, within a tREFI period, the first refresh falls after the start (0: one
        whole tREFI after it). Traced commands of the tile flow are (command, cycle, bank) triples.
        """
        t, tck_ns = self.t, self.t.tck_ns
        if self.tile is not None:
            n_in, n_out = (int(v) for v in tile_counts(self.pim, d_in, d_out, self.channels, bytes_w, bytes_a))
            first = (refresh_phase_ns % t.t_refi_ns) / tck_ns if refresh_phase_ns else t.t_refi_ns / tck_ns
            w = walk_tile_gemv(self.pim, n_in, n_out, int(tokens), first, trace)
            s = self.tck_s
            return GemvTiming(mode_s=w.spent["mode"] * s, input_s=w.spent["input"] * s,
                              stream_s=w.spent["stream"] * s, output_s=w.spent["output"] * s,
                              refresh_s=w.spent["refresh"] * s, commands=w.log or [])
        in_cols, unit_cols, partial_cols, out_cols = (int(v) for v in self._shape(d_in, d_out, bytes_w, bytes_a,
                                                                                   self.channels))
        refi, rfc = t.t_refi_ns / tck_ns, t.t_rfc_ns / tck_ns
        next_ref = (refresh_phase_ns % t.t_refi_ns) / tck_ns if refresh_phase_ns else refi
        log: list = []
        now = 0.0
        spent = {"mode": 0.0, "input": 0.0, "stream": 0.0, "output": 0.0, "refresh": 0.0}

        def emit(name: str, at: float) -> None:
            if trace:
                log.append((name, at))

        def boundary() -> None:  # refresh stalls land between command groups, all banks precharged
            nonlocal now, next_ref
            while now >= next_ref:
                emit("REF", now)
                now += rfc
                spent["refresh"] += rfc
                next_ref += refi

        def advance(phase: str, cycles: float) -> None:
            nonlocal now
            now += cycles
            spent[phase] += cycles

        def column_writes(name: str, phase: str, cols: int, spacing: float) -> None:
            """`cols` column writes `spacing` cycles apart, then tWR, after any refresh that is due."""
            boundary()
            for c in range(cols):
                emit(name, now + c * spacing)
            advance(phase, cols * spacing + t.t_wr_cycles)

        for _ in range(int(tokens)):
            boundary()
            emit("PIM_ENTER", now)
            advance("mode", self.pim.mode_switch_cycles)
            column_writes("WR_INPUT", "input", in_cols, t.t_ccd_s_cycles)
            remaining = unit_cols
            while remaining > 0:
                boundary()
                cols = min(self.cols_per_step, remaining)
                start = now
                for g in range(self.pim.activation_groups):
                    emit("ACT_ALLBANK", start + g * t.t_faw_cycles)
                first_col = start + self.issue_cycles + t.t_rcd_cycles
                for c in range(cols if trace else 0):
                    emit("MAC", first_col + c * t.t_ccd_l_cycles)
                pre = max(start + self.issue_cycles + t.t_ras_cycles, first_col + cols * t.t_ccd_l_cycles)
                emit("PRE_ALLBANK", pre)
                end = max(pre + t.t_rp_cycles, start + self.issue_cycles + t.t_rc_cycles)
                if self.cap_bytes_per_cycle is not None:
                    end = max(end, start + self.units * cols * self.pim.column_bytes / self.cap_bytes_per_cycle)
                if self.flops_per_cycle is not None and remaining == unit_cols:
                    # compute cap over the whole sweep, charged on its first step
                    sweep = 2.0 * d_in * math.ceil(d_out / self.channels) / self.flops_per_cycle
                    full, last = divmod(unit_cols, self.cols_per_step)
                    natural = full * float(self._row_step(self.cols_per_step)) + (float(self._row_step(last)) if last else 0.0)
                    end += max(0.0, sweep - natural)
                advance("stream", end - start)
                remaining -= cols
            column_writes("WR_PARTIAL", "output", partial_cols, t.t_ccd_l_cycles)
            emit("RD_OUTPUT", now + t.t_cl_cycles)
            advance("output", t.t_cl_cycles + out_cols * t.t_ccd_s_cycles)
            emit("PIM_EXIT", now)
            advance("mode", self.pim.mode_switch_cycles)
        boundary()  # a refresh that came due during the last group is owed before the next command
        s = self.tck_s
        return GemvTiming(mode_s=spent["mode"] * s, input_s=spent["input"] * s, stream_s=spent["stream"] * s,
                          output_s=spent["output"] * s, refresh_s=spent["refresh"] * s, commands=log)

    def gemv_commands_expected_s(self, d_in: int, d_out: int, tokens: int = 1, bytes_w: float = 2.0,
                                 bytes_a: float = 2.0, phases: int | None = None) -> float:
        """The command-level time averaged over evenly spaced refresh phases (the closed form's expectation).

        By default the phases are spaced at most a 32nd of the GEMV's own length apart, so that short
        GEMVs, which a refresh hits only at some phases, are averaged finely enough; a GEMV longer than 16
        refresh periods sees nearly the same number of refreshes at every phase, and 4 phases suffice.
        """
        period = self.t.t_refi_ns
        if phases is None:
            length_ns = float(self.gemv_s(d_in, d_out, tokens, bytes_w, bytes_a)) * 1e9
            fewest = 4 if length_ns > 16 * period else 16
            phases = int(min(4096, max(fewest, math.ceil(32 * period / max(length_ns, 1e-9)))))
        return float(np.mean([self.gemv_commands(d_in, d_out, tokens, bytes_w, bytes_a,
                                                 refresh_phase_ns=period * (i + 0.5) / phases).total_s
                              for i in range(phases)]))

    # -- plain HBM reference ----------------------------------------------------------------------------
    def hbm_read_s(self, d_in, d_out, tokens=1, bytes_w: float = 2.0, gpu=None, bytes_a: float = 2.0) -> float:
        """The same GEMV with the weights read once by the GPU from these stacks (see `hbm_read_s`)."""
        return hbm_read_s(self.pim, self.stacks, d_in, d_out, tokens, bytes_w, gpu, bytes_a)


def hbm_read_s(pim: PimSpec, stacks: int, d_in, d_out, tokens=1, bytes_w: float = 2.0, gpu=None,
               bytes_a: float = 2.0) -> float:
    """Plain-HBM reference: a GEMV with the weights read once by the GPU from `stacks` stacks (roofline).

    With a GPU spec: max(W / (eta_bw * BW), 2 n d_in d_out / (eta_fl * F)). Without (host-attached PIM):
    the weights, the inputs and the outputs streamed at the stacks' external peak, less refresh: every tREFI
    the stack stops for tRFC and the interrupted rows reopen (tRCD), as in PIMSimulator's plain runs.
    """
    bw = stacks * pim.ext_bw_per_stack_bytes_per_s
    weights = d_in * d_out * bytes_w
    if gpu is None:
        moved = weights + np.asarray(tokens, dtype=np.float64) * (d_in + d_out) * bytes_a
        seconds = moved / bw
        t = pim.timings
        if t is not None:
            seconds = refresh_stretch(seconds, t.t_refi_ns, t.t_rfc_ns + t.t_rcd_cycles * t.tck_ns)
        return float(seconds) if np.ndim(seconds) == 0 else seconds
    return float(max(weights / (gpu.eta_bw * bw),
                     2.0 * np.asarray(tokens) * d_in * d_out / (gpu.eta_fl * gpu.peak_flops_per_s)))


#: Largest token count the tile flow's lookup table holds (lookups must not grow with the counts).
_TILE_TABLE_MAX = 1 << 16


class BankPimCost:
    """PIM cost model of one MoE layer on bank-level PIM: per token, the experts' two GEMVs.

    An expert on PIM runs gate+up as one GEMV (d -> 2f) and down as another (f -> d) for each of its
    tokens, serialized. An expert with n > 0 tokens costs `call_s + n * per_token_s`: in the streaming flow
    every token pays its own mode changes (call_s = 0); in Samsung's tile flow park-in, the mode changes
    and the CRF programming are paid once per GEMV call. Implements `times_s(tokens, share)` of
    `cost.pim.PimCostModel`.
    """

    def __init__(self, pim: PimSpec, model: MoEModelSpec) -> None:
        self.timing = BankPimTiming(pim)
        self.model = model
        self._costs: dict[float, tuple[float, float]] = {}
        self._call_all_channels, self._per_token_all_channels = self._call_and_token_s(1.0)
        self._table = np.zeros(0)  # tile flow, all channels: seconds by integer token count, grown on demand

    def _gemvs_s(self, tokens: int, share: float) -> float:
        m, t = self.model, self.timing
        return float(t.gemv_s(m.hidden_size, 2 * m.moe_intermediate_size, tokens, m.bytes_per_weight,
                              m.bytes_per_activation, share)
                     + t.gemv_s(m.moe_intermediate_size, m.hidden_size, tokens, m.bytes_per_weight,
                                m.bytes_per_activation, share))

    def _call_and_token_s(self, share: float) -> tuple[float, float]:
        if share not in self._costs:
            one = self._gemvs_s(1, share)
            if self.timing.tile is None:
                self._costs[share] = (0.0, one)
            else:
                per = self._gemvs_s(2, share) - one
                self._costs[share] = (one - per, per)
        return self._costs[share]

    def per_token_s(self, share: float = 1.0) -> float:
        """Seconds each further token adds to an expert on PIM."""
        return self._call_and_token_s(share)[1]

    def call_s(self, share: float = 1.0) -> float:
        """Seconds an expert's PIM call costs once, whatever its token count (0 in the streaming flow)."""
        return self._call_and_token_s(share)[0]

    def times_s(self, tokens: np.ndarray, share=1.0) -> np.ndarray:
        if self.timing.tile is not None and isinstance(share, float) and share == 1.0:
            counts = np.asarray(tokens)
            if counts.dtype.kind in "iu":  # integer counts: one lookup in call_s + n * per_token_s
                try:
                    return self._table.take(counts)
                except IndexError:
                    top = max(1024, 2 * int(counts.max(initial=0)))
                    if top <= _TILE_TABLE_MAX:  # beyond it the expression below (same values), not a huge table
                        k = np.arange(top + 1, dtype=np.float64)
                        self._table = np.where(k > 0, self._call_all_channels + k * self._per_token_all_channels,
                                               0.0)
                        return self._table.take(counts)
        n = np.asarray(tokens, dtype=np.float64)
        if isinstance(share, float) and share == 1.0:  # Sieve's layout: the per-layer hot path
            call, per = self._call_all_channels, self._per_token_all_channels
        elif np.ndim(share) == 0:
            call, per = self._call_and_token_s(float(share))
        else:
            share = np.asarray(share, dtype=np.float64)
            values = np.unique(share)
            costs = np.array([self._call_and_token_s(float(v)) for v in values])[np.searchsorted(values, share)]
            call, per = costs[:, 0], costs[:, 1]
        if self.timing.tile is None:
            return n * per
        return np.where(n > 0, call + n * per, 0.0)
