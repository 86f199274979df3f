"""The simulator's pictures show what they claim: every policy's curve stays visible."""
from __future__ import annotations

import pytest

from heteromoe.sched import POLICIES
from heteromoe.sim import plots


def test_every_policy_has_its_own_marker_and_line_style():
    names = [*POLICIES, "mine", "yours"]  # registered user policies get spare styles
    styles = plots.policy_styles(names)
    pairs = [(s["marker"], s["linestyle"]) for s in styles.values()]
    assert len(set(pairs)) == len(names)
    assert len({s["marker"] for n, s in styles.items() if n in POLICIES}) == len(POLICIES)


def test_a_curve_on_top_of_another_is_drawn_differently(tmp_path, monkeypatch):
    """`heteromoe` equal to `sieve` at every batch: both lines are drawn, with different markers and styles."""
    matplotlib = pytest.importorskip("matplotlib")
    records = [{"policy": p, "batch": b, "throughput_per_gpu": 100.0 * b, "interactivity": 1000.0 / b}
               for p in ("sieve", "heteromoe") for b in (1, 4, 16)]
    figures = []
    plt = plots._pyplot()
    monkeypatch.setattr(plt, "close", lambda fig: figures.append(fig))
    styles = plots.plot_pareto(records, tmp_path / "p.png", "t")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    lines = {line.get_label(): line for line in figures[0].axes[0].get_lines() if not line.get_label().startswith("_")}
    assert set(lines) == {"sieve", "heteromoe"}
    drawn = {name: (line.get_marker(), line.get_linestyle()) for name, line in lines.items()}
    assert drawn["sieve"] != drawn["heteromoe"]
    assert drawn == {n: (s["marker"], s["linestyle"]) for n, s in styles.items()}
    matplotlib.pyplot.close(figures[0])
