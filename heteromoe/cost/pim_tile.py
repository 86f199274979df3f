"""Samsung HBM-PIM's GEMV command flow on one pseudo-channel: the command walk and the closed form derived from it.

The flow (PimSpec.flow = "tile") is the one of Samsung's public cycle-level simulator of its HBM2-PIM
(SAITPublic/PIMSimulator, src/tests/PIMKernel.cpp, `executeGemv`), read and modelled here, not reused:

1. once per GEMV: park in (a read to every bank, single-bank mode), the change to all-bank mode (writes
   to two banks of two bank groups), the CRF programming (one write per eight PIM instructions);
2. for every output tile (`grf_b_registers` output rows per processing unit) and, inside it, every input
   vector: the change to all-bank-PIM mode (one write), then for every even input tile the input chunk
   into the GRF_A registers (`grf_a_registers` writes) and `grf_a x grf_b` MACs over the even banks, then
   the same for the odd input tiles over the odd banks, the GRF_B write-back (`grf_b` writes) and the
   change back to all-bank mode;
3. once per GEMV: the change to single-bank mode and park out.

Every pseudo-channel runs the same commands on its share of the weights, so one channel's timeline is
the GEMV's. The walk issues those commands in order on one channel, each at the first cycle the timing
rules allow, as PIMSimulator's controller does (src/CommandQueue.cpp, src/MemoryController.cpp,
src/Configuration.h): a command group behind a barrier becomes visible once the group before it is down
to its last command; a bank's row is closed as soon as no visible command needs it; ACT waits tRP after
the PRE, tRC after the bank's last ACT, tRRD_L/S after any ACT and four per tFAW; the first column command
waits tRCD (read or write); column commands are tCCD_L apart in a bank group, tCCD_S across; read to
write waits RL + BL/2 + tRTRS - WL, write to read WL + BL/2 + tWTR, read to precharge
BL/2 + max(tRTP, tCCD_L) - tCCD_L, write to precharge WL + BL/2 + tWR; every tREFI the open rows are
closed, REF holds every bank for tRFC and the interrupted row is opened again.

The closed form is the walk's own arithmetic: the cycles of the fixed prologue/epilogue and of one pass
(one output tile for one input vector) as a function of the input-tile count, taken from walks of short
canonical passes without refresh (`TileFlowCosts`), times the pass count, scaled by the expected share of
refresh (each refresh costs tRFC plus the reopening of the interrupted row, tRCD;
`spec.hardware.refresh_stretch`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from heteromoe.spec.hardware import PimSpec, refresh_stretch

__all__ = ["PHASES", "TileFlowCosts", "TileWalk", "tile_counts", "walk_tile_gemv"]

PHASES = ("mode", "input", "stream", "output", "refresh")
_BANKS_PER_GROUP = 4  # HBM2: 4 banks per bank group (PIMSimulator ini: NUM_BANKS 16, NUM_BANK_GROUPS 4)


class TileWalk:
    """In-order command issue on one pseudo-channel under the DRAM timing rules (see the module docstring)."""

    def __init__(self, pim: PimSpec, refresh_phase_cycles: float | None = None, trace: bool = False) -> None:
        t = pim.timings
        self.t = t
        n = pim.banks_per_pseudo_channel
        self.banks = n
        self.group = [b // _BANKS_PER_GROUP for b in range(n)]
        self.rcd = {False: t.t_rcd_cycles, True: t.t_rcd_wr_cycles or t.t_rcd_cycles}
        burst = t.t_burst_cycles
        self.ccd = {True: max(t.t_ccd_l_cycles, burst), False: max(t.t_ccd_s_cycles, burst)}
        self.rd_to_pre = burst + max(t.t_rtp_cycles, t.t_ccd_l_cycles) - t.t_ccd_l_cycles
        self.wr_to_pre = t.t_wl_cycles + burst + t.t_wr_cycles
        self.rd_to_wr = t.t_cl_cycles + burst + t.t_rtrs_cycles - t.t_wl_cycles
        self.wr_to_rd = t.t_wl_cycles + burst + t.t_wtr_cycles
        self.rrd = {True: t.t_rrd_cycles, False: t.t_rrd_s_cycles or t.t_rrd_cycles}
        self.row: list = [None] * n
        self.next_act = [0.0] * n
        self.next_pre = [0.0] * n
        self.next_rd = [0.0] * n
        self.next_wr = [0.0] * n
        self.last_use = [0.0] * n
        self.acts: list[float] = []
        self.last_cmd = -1.0
        self.penult = -1.0
        self.visible = 0.0
        self.refi = t.t_refi_ns / t.tck_ns
        self.rfc = t.t_rfc_ns / t.tck_ns
        self.next_ref = math.inf if refresh_phase_cycles is None else float(refresh_phase_cycles)
        self.refresh_cycles = 0.0
        self.log: list | None = [] if trace else None
        self.spent = dict.fromkeys(PHASES, 0.0)
        self._mark = 0.0
        self._refresh_mark = 0.0

    # -- bookkeeping ------------------------------------------------------------------------------------
    def _emit(self, name: str, at: float, bank: int | None = None) -> None:
        if self.log is not None:
            self.log.append((name, float(at), bank))

    def account(self, phase: str) -> None:
        """Charge the cycles since the last call (up to the last column command) to `phase`, less the
        refresh windows in them (those go to `refresh`)."""
        self.spent[phase] += self.last_cmd - self._mark - (self.refresh_cycles - self._refresh_mark)
        self._mark = self.last_cmd
        self._refresh_mark = self.refresh_cycles

    # -- row commands -----------------------------------------------------------------------------------
    def _precharge(self, bank: int, at: float) -> float:
        self._emit("PRE", at, bank)
        self.row[bank] = None
        self.next_act[bank] = max(self.next_act[bank], at + self.t.t_rp_cycles)
        return at

    def _refresh_before(self, at: float) -> bool:
        """Run the refreshes due before a command at `at`; True if any ran (rows are closed then)."""
        ran = False
        while at >= self.next_ref:
            due = self.next_ref
            pres = [self._precharge(b, max(due, self.next_pre[b])) for b in range(self.banks) if self.row[b] is not None]
            ref = max([due] + [p + 1 for p in pres])
            self._emit("REF", ref)
            free = ref + self.rfc
            for b in range(self.banks):
                self.next_act[b] = max(self.next_act[b], free)
            self.refresh_cycles += free - due
            self.next_ref += self.refi
            ran = True
        return ran

    def _activate(self, bank: int, row) -> None:
        t = self.t
        while True:
            at = max(self.next_act[bank], self.visible)
            if t.t_faw_cycles and len(self.acts) >= 4:
                at = max(at, self.acts[-4] + t.t_faw_cycles)
            if not self._refresh_before(at):
                break
        self._emit("ACT", at, bank)
        self.row[bank] = row
        self.next_act[bank] = max(self.next_act[bank], at + t.t_rc_cycles)
        self.next_pre[bank] = max(self.next_pre[bank], at + t.t_ras_cycles)
        self.next_rd[bank] = max(self.next_rd[bank], at + self.rcd[False])
        self.next_wr[bank] = max(self.next_wr[bank], at + self.rcd[True])
        g = self.group[bank]
        for o in range(self.banks):
            if o != bank:
                self.next_act[o] = max(self.next_act[o], at + self.rrd[self.group[o] == g])
        self.acts = self.acts[-3:] + [at]

    # -- column commands --------------------------------------------------------------------------------
    def _issue(self, bank: int, write: bool, first: float, count: int, step: float) -> None:
        last = first + (count - 1) * step
        if self.log is not None:
            for i in range(count):
                self._emit("WR" if write else "RD", first + i * step, bank)
        self.penult = last - step if count >= 2 else self.last_cmd
        self.last_cmd = last
        self.last_use[bank] = last
        g = self.group[bank]
        for o in range(self.banks):
            gap = self.ccd[self.group[o] == g]
            if write:
                self.next_rd[o] = max(self.next_rd[o], last + self.wr_to_rd)
                self.next_wr[o] = max(self.next_wr[o], last + gap)
            else:
                self.next_rd[o] = max(self.next_rd[o], last + gap)
                self.next_wr[o] = max(self.next_wr[o], last + self.rd_to_wr)
        self.next_pre[bank] = max(self.next_pre[bank], last + (self.wr_to_pre if write else self.rd_to_pre))

    def run(self, bank: int, row, write: bool, count: int, new_group: bool = True) -> None:
        """Issue `count` column commands (reads or writes) to one row of one bank, in order."""
        if new_group:
            self.visible = self.penult + 1  # the previous group's barrier command has reached the queue head
            # The controller closes a row once no command up to the next barrier needs it. A row whose
            # precharge could issue before the previous group's last command did is closed then (that group's
            # barrier hid this one); a later one stays open for this group if it needs the row, and otherwise
            # is decided at the next group.
            for b in range(self.banks):
                if self.row[b] is not None:
                    ready = max(self.next_pre[b], self.last_use[b] + 1)
                    if ready <= self.last_cmd:
                        self._precharge(b, ready)
        step = self.ccd[True]
        remaining = count
        while remaining:
            if self.row[bank] != row:
                if self.row[bank] is not None:
                    self._precharge(bank, max(self.next_pre[bank], self.last_use[bank] + 1))
                self._activate(bank, row)
            first = max(self.last_cmd + 1, self.next_wr[bank] if write else self.next_rd[bank])
            if self._refresh_before(first):
                continue
            if self.next_ref > first + (remaining - 1) * step:
                self._issue(bank, write, first, remaining, step)
                return
            # a refresh falls due inside the run: commands issue until a precharge may go first
            done, at = 0, first
            while done < remaining:
                pre_ready = max(self.next_ref, self.next_pre[bank])
                if pre_ready <= at:
                    break
                self._issue(bank, write, at, 1, step)
                done += 1
                at = max(at + step, self.next_wr[bank] if write else self.next_rd[bank])
            remaining -= done
            self._refresh_before(max(at, self.next_ref))


def tile_counts(pim: PimSpec, d_in, d_out, channels, bytes_w: float = 2.0, bytes_a: float = 2.0):
    """(input tiles, output tiles) of a GEMV on `channels` pseudo-channels (arrays broadcast)."""
    units = pim.banks_per_pseudo_channel // pim.banks_per_pim_unit
    per_burst = pim.column_bytes / np.maximum(bytes_w, bytes_a)  # elements of one 256-bit register / burst
    n_in = np.ceil(np.asarray(d_in, dtype=np.float64) / (per_burst * pim.grf_a_registers))
    n_out = np.ceil(np.asarray(d_out, dtype=np.float64) / (np.asarray(channels, dtype=np.float64) * units
                                                            * pim.grf_b_registers))
    return n_in, n_out


def walk_tile_gemv(pim: PimSpec, n_in: int, n_out: int, vectors: int, refresh_phase_cycles: float | None = None,
                   trace: bool = False) -> TileWalk:
    """Walk the whole GEMV flow on one pseudo-channel; returns the walk (cycles by phase in `.spent`)."""
    w = TileWalk(pim, refresh_phase_cycles, trace)
    bpg = _BANKS_PER_GROUP
    groups = pim.banks_per_pseudo_channel // bpg
    cols_per_row = pim.page_bytes // pim.column_bytes
    macs = pim.grf_a_registers * pim.grf_b_registers
    crf_writes = 1  # GEMV's six PIM instructions fit one 8-instruction CRF write (src/tests/PIMCmdGen.h)
    for i, (bank, group) in enumerate((b, g) for b in range(bpg) for g in range(groups)):
        w.run(group * bpg + bank, "park", False, 1, new_group=i == 0)  # park in
    for i, bank in enumerate((0, 1, 2 * bpg, 2 * bpg + 1)):
        w.run(bank, "sb-to-ab", True, 1, new_group=i == 0)  # single-bank -> all-bank mode
    w.run(1, "pim-reg", True, crf_writes)  # program the CRF
    w.account("mode")
    for j in range(n_out):
        for v in range(vectors):
            w.run(0, "pim-reg", True, 1)  # all-bank -> all-bank-PIM mode
            w.account("mode")
            for parity in (0, 1):  # even banks hold the even input tiles, odd banks the odd ones
                for k, _ in enumerate(range(parity, n_in, 2)):
                    w.run(1, "pim-reg", True, pim.grf_a_registers)  # input chunk into GRF_A
                    w.account("input")
                    col = (j * (n_in // 2) + k) * macs  # the tile's MACs, split at row ends
                    left = macs
                    while left:
                        cols = min(left, cols_per_row - col % cols_per_row)
                        w.run(parity, ("weights", col // cols_per_row), False, cols)
                        col += cols
                        left -= cols
                    w.account("stream")
            w.run(1, ("result", j, v), True, pim.grf_b_registers)  # GRF_B -> bank
            w.account("output")
            w.run(0, "pim-reg", True, 1)  # all-bank-PIM -> all-bank mode
            w.account("mode")
    w.run(0, "ab-to-sb", True, 1)
    w.run(1, "ab-to-sb", True, 1, new_group=False)  # all-bank -> single-bank mode
    w.run(0, "park", False, 1)
    w.run(1, "park", False, 1, new_group=False)  # park out
    w.last_cmd += w.t.t_cl_cycles + w.t.t_burst_cycles  # the last read's data returns
    w.account("mode")
    w.spent["refresh"] = w.refresh_cycles
    return w


@dataclass(frozen=True)
class TileFlowCosts:
    """Cycles by phase of the tile flow, from walks without refresh: the fixed prologue/epilogue, one pass
    (output tile x input vector) for 1 and 2 input tiles, and beyond that a pass's base plus one even and one
    odd input tile; `refresh_cost` is what one refresh adds (tRFC, then tRCD to reopen the row)."""

    fixed: np.ndarray
    pass_1: np.ndarray
    pass_2: np.ndarray
    pass_base: np.ndarray
    even_tile: np.ndarray
    odd_tile: np.ndarray
    refresh_cost: float
    refi: float

    @classmethod
    def from_walks(cls, pim: PimSpec) -> TileFlowCosts:
        def phases(n_in: int, passes: int) -> np.ndarray:
            spent = walk_tile_gemv(pim, n_in, passes, 1).spent
            return np.array([spent[p] for p in PHASES[:-1]])

        per_pass = {n: phases(n, 2) - phases(n, 1) for n in (1, 2, 3, 4, 5)}
        odd = per_pass[4] - per_pass[3]
        even = per_pass[5] - per_pass[4]
        t = pim.timings
        fixed = phases(4, 1) - per_pass[4]
        fixed = np.array([fixed.sum(), 0.0, 0.0, 0.0])  # park, mode changes and CRF: all mode commands
        return cls(fixed=fixed, pass_1=per_pass[1], pass_2=per_pass[2],
                   pass_base=per_pass[4] - 2 * even - 2 * odd, even_tile=even, odd_tile=odd,
                   refresh_cost=t.t_rfc_ns / t.tck_ns + t.t_rcd_cycles,
                   refi=t.t_refi_ns / t.tck_ns)

    def cycles(self, n_in, passes) -> np.ndarray:
        """[..., 5] cycles by phase (mode, input, stream, output, refresh) for arrays of input tiles / passes."""
        n_in = np.asarray(n_in, dtype=np.float64)[..., None]
        passes = np.asarray(passes, dtype=np.float64)[..., None]
        even, odd = np.ceil(n_in / 2), np.floor(n_in / 2)
        per_pass = np.where(n_in == 1, self.pass_1, np.where(n_in == 2, self.pass_2,
                                                             self.pass_base + even * self.even_tile + odd * self.odd_tile))
        busy = self.fixed + passes * per_pass
        total = busy.sum(axis=-1, keepdims=True)
        refresh = refresh_stretch(total, self.refi, self.refresh_cost, stall_only=True)
        return np.concatenate([busy, refresh], axis=-1)
