"""bench/quality.py from a clean clone: inputs checked first, real traces optional, JSON always written."""
from __future__ import annotations

import json

import numpy as np
import pytest

import heteromoe
from bench import quality


@pytest.fixture
def one_case(monkeypatch):
    """A single small synthetic layer call instead of the benchmark's hundreds (the flow is under test)."""
    spec = heteromoe.models.get("qwen3-30b-a3b")
    counts = np.zeros(spec.num_experts, dtype=np.int64)
    counts[:8] = [5, 3, 2, 1, 1, 1, 1, 2]
    seen = {}

    def cases(traces, samples, quick):
        seen["traces"] = dict(traces)
        yield "synthetic", spec, 1, 2, counts, None

    monkeypatch.setattr(quality, "cases", cases)
    return seen


def test_runs_without_the_shared_traces_and_says_what_it_skipped(tmp_path, capsys, one_case):
    out = tmp_path / "q.json"
    assert quality.main(["--shared", str(tmp_path / "absent"), "--json", str(out), "--exact-limit-s", "2"]) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert set(data["skipped_traces"]) == set(quality.TRACES) and data["traces"] == []
    for name in quality.TRACES:
        assert f"skipped real trace {name}: " in printed and "does not exist" in data["skipped_traces"][name]
    assert one_case["traces"] == {} and len(data["rows"]) == 1 and data["rows"][0]["sieve"] >= 1 - 1e-9


def test_an_unreadable_trace_is_skipped_with_its_reason(tmp_path):
    (tmp_path / "traces" / "DynaNDE-Simulator").mkdir(parents=True)  # a folder without any known trace file
    loaded, skipped = quality.load_traces(tmp_path, ["DynaNDE-Simulator", "ExperimentsForMoE"])
    assert loaded == {}
    assert "unrecognised trace" in skipped["DynaNDE-Simulator"]
    assert "does not exist" in skipped["ExperimentsForMoE"]


@pytest.mark.parametrize("argv,message", [
    (["--system", "h100-hbm9"], "unknown system preset 'h100-hbm9'"),
    (["--system", "samsung-hbm2-pim"], "has no GPU"),
    (["--samples", "0"], "--samples must be >= 1"),
    (["--exact-limit-s", "0"], "--exact-limit-s must be > 0"),
    (["--json", "/no/such/folder/q.json"], "folder '/no/such/folder' does not exist"),
])
def test_bad_inputs_stop_before_any_work(monkeypatch, capsys, argv, message):
    def fail(*args, **kwargs):
        raise AssertionError("work started before the inputs were checked")

    monkeypatch.setattr(quality, "load_traces", fail)
    with pytest.raises(SystemExit) as exc:
        quality.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err
