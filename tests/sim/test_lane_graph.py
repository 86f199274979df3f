"""The lane scheduler on random operation graphs: exclusive lanes, inputs first, collectives together, no
lane idle while one of its operations is ready, refresh stalls where PIM work runs into them."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heteromoe.sim.graph import LaneGraph, _schedule_py
from heteromoe.sim.timeline import LANES, Timeline


@st.composite
def graphs(draw):
    gpus = draw(st.integers(1, 3))
    n = draw(st.integers(1, 25))
    ops = []
    for i in range(n):
        lane = draw(st.sampled_from([None, *LANES]))
        dur = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.5]), min_size=gpus, max_size=gpus))
        deps = sorted(set(draw(st.lists(st.integers(0, i - 1), max_size=3)))) if i else []
        ops.append((lane, np.array(dur), deps, draw(st.booleans())))
    return gpus, ops


def build(gpus, ops, refresh=None):
    g = LaneGraph(gpus, refresh)
    for i, (lane, dur, deps, coll) in enumerate(ops):
        g.op(f"op{i}", lane, dur, deps, layer=0, collective=coll, refresh=lane == "pim")
    return g


@settings(max_examples=60, deadline=None)
@given(graphs())
def test_schedule_respects_lanes_inputs_and_collectives(case):
    gpus, ops = case
    g = build(gpus, ops)
    start, end = g.run()
    for i, (lane, dur, deps, coll) in enumerate(ops):
        for d in deps:
            if coll:
                assert (start[i] >= end[d].max() - 1e-12).all()
            else:
                assert (start[i] >= end[d] - 1e-12).all()
        assert np.allclose(end[i] - start[i], dur if lane is not None else 0.0)
    timeline = Timeline()
    g.record(timeline)
    per_lane: dict = {}
    for s in timeline.spans:
        per_lane.setdefault((s.gpu, s.lane), []).append((s.start_s, s.end_s))
    for spans in per_lane.values():
        spans.sort()
        for (_, e), (b, _) in zip(spans, spans[1:]):
            assert b >= e - 1e-12
    # work-conserving: an operation that waited past its inputs found its lane busy at every moment of the wait
    for i, (lane, dur, deps, coll) in enumerate(ops):
        if lane is None or not deps:
            continue
        for h in range(gpus):
            if dur[h] == 0:
                continue
            ready = max(end[d].max() if coll else end[d, h] for d in deps)
            if start[i, h] > ready + 1e-12:
                busy = sorted((b, e) for b, e in per_lane.get((h, lane), []) if e > ready and b < start[i, h])
                t = ready
                for b, e in busy:
                    assert b <= t + 1e-12
                    t = max(t, e)
                assert t >= start[i, h] - 1e-12


def test_compiled_and_python_schedules_agree():
    rng = np.random.default_rng(3)
    ops = []
    for i in range(200):
        deps = sorted(set(rng.integers(0, i, size=min(i, 2)).tolist())) if i else []
        ops.append((LANES[rng.integers(0, len(LANES))], rng.choice([0.0, 1e-6, 3e-6], size=4), deps, bool(rng.random() < 0.2)))
    g = build(4, ops, refresh=(3.9e-6, 0.4e-6))
    start, end = g.run()
    ptr = np.concatenate([[0], np.cumsum([len(d) for d in g.deps])])
    dep = np.array([x for d in g.deps for x in d], dtype=np.int64)
    s2, e2 = _schedule_py(ptr, dep, np.array(g.lane), np.array(g.collective), np.array(g.with_refresh),
                          np.array(g.durations), len(LANES), 3.9e-6, 0.4e-6)
    assert np.array_equal(start, s2) and np.array_equal(end, e2)


def test_pim_work_stalls_for_refresh_on_the_stacks_clock():
    g = LaneGraph(1, refresh=(3.9e-6, 0.4e-6))
    a = g.op("gpu", "gpu", 3.5e-6, [], 0)
    g.op("pim", "pim", 1e-6, [a], 0, refresh=True)  # starts at 3.5 us, runs into the refresh at 3.9 us
    start, end = g.run()
    assert end[1, 0] - start[1, 0] == pytest.approx(1.4e-6)
