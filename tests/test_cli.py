"""`heteromoe ...` as a user calls it."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from heteromoe.cli import main


def test_backends_lists_builtins_with_origin(capsys):
    assert main(["backends", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = {b["name"]: b for b in data["backends"]}
    assert {"torch", "pim-emulator", "numba-cpu"} <= set(names)
    assert names["pim-emulator"]["kind"] == "pim" and names["pim-emulator"]["available"]
    assert "heteromoe_backends.pim_emulator:probe" in names["pim-emulator"]["origin"]
    assert data["fastpath"] in ("c", "numba", "python")


def test_console_script_runs():
    exe = shutil.which("heteromoe")
    cmd = [exe, "backends"] if exe else [sys.executable, "-m", "heteromoe.cli", "backends"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "pim-emulator" in out and "fast path:" in out


def test_presets(capsys):
    assert main(["presets", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["models"]["qwen3-30b-a3b"]["E"] == 128
    assert data["systems"]["samsung-hbm2-pim"]["gpu"] is None


def test_schedule_prints_a_valid_plan(capsys):
    counts = [5] * 4 + [1] * 124
    assert main(["schedule", "--counts", json.dumps(counts), "--model", "qwen3-30b-a3b",
                 "--system", "b200-hbm3e-pim", "--policy", "sieve"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [g + p for g, p in zip(plan["gpu_tokens"], plan["pim_tokens"])] == counts
    assert plan["predicted_time_s"] > 0


@pytest.mark.parametrize("argv,message", [
    (["schedule", "--counts", "[1, -1]", "--model", "qwen3-30b-a3b", "--system", "h100-hbm3-pim"], "2 entries"),
    (["schedule", "--counts", "[1,", "--model", "qwen3-30b-a3b", "--system", "h100-hbm3-pim"], "JSON list"),
    (["schedule", "--counts", "[1]", "--model", "qwen3-30b-a3b", "--system", "nope"], "unknown system preset 'nope'"),
    (["demo", "--batch", "0"], "batch and new_tokens must be >= 1"),
])
def test_bad_arguments_exit_nonzero_with_message(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_demo_generates_identical_tokens(capsys):
    assert main(["demo", "--batch", "2", "--new-tokens", "4", "--json"]) == 0
    out = capsys.readouterr().out
    assert "greedy tokens identical to the unwrapped model: True" in out
    report = json.loads(out[out.index("{"):])
    assert report["tokens_identical"] and sum(layer["pim_tokens"] for layer in report["layers"]) > 0


def test_pim_time_json(capsys):
    assert main(["pim-time", "--system", "b200-hbm3e-pim", "--d-in", "2048", "--d-out", "1536", "--tokens", "2",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "bank-level" and out["pim_ns"] > 0 and out["hbm_read_ns"] > 0
    assert sum(out["breakdown_ns"].values()) == pytest.approx(out["pim_ns"])
    assert main(["pim-time", "--system", "b200-hbm3e-pim", "--stacks", "4", "--d-in", "2048", "--d-out", "1536",
                 "--tokens", "2", "--json"]) == 0
    fewer = json.loads(capsys.readouterr().out)
    assert fewer["pim_ns"] > out["pim_ns"] and fewer["hbm_read_ns"] > out["hbm_read_ns"]
    assert main(["pim-time", "--system", "h100-logic-pim", "--d-in", "64", "--d-out", "64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "roofline"


@pytest.mark.parametrize("argv,message", [
    (["--d-in", "0", "--d-out", "8"], "--d-in must be a positive integer, got 0"),
    (["--d-in", "8", "--d-out", "-3"], "--d-out must be a positive integer, got -3"),
    (["--d-in", "8", "--d-out", "8", "--tokens", "0"], "--tokens must be a positive integer, got 0"),
    (["--d-in", "8", "--d-out", "8", "--stacks", "9"], "--stacks must be in [1, 8] for b200-hbm3e-pim, got 9"),
])
def test_pim_time_bad_arguments(capsys, argv, message):
    assert main(["pim-time", "--system", "b200-hbm3e-pim", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_pim_time_unknown_system(capsys):
    assert main(["pim-time", "--system", "hbm9", "--d-in", "8", "--d-out", "8"]) == 2
    err = capsys.readouterr().err
    assert "--system: unknown system preset 'hbm9'" in err and err.count("\n") == 1


def test_simulate_writes_json_and_plots(tmp_path, capsys):
    out, plot = tmp_path / "sim.json", tmp_path / "sim.png"
    assert main(["simulate", "--model", "qwen3-30b-a3b", "--system", "b200-hbm3e-pim", "--gpus", "2",
                 "--policies", "all-exp,sieve", "--batch", "1,16", "--steps", "1", "--quiet",
                 "--json", str(out), "--plot", str(plot)]) == 0
    data = json.loads(out.read_text())
    assert {(r["policy"], r["batch"]) for r in data["records"]} == {("all-exp", 1), ("all-exp", 16), ("sieve", 1),
                                                                   ("sieve", 16)}
    for r in data["records"]:
        assert {"policy", "batch", "step_time_s", "throughput_per_gpu", "interactivity"} <= set(r)
    for path in (plot, tmp_path / "sim-gantt.png", tmp_path / "sim-loads.png"):
        assert path.stat().st_size > 10_000 and path.read_bytes()[:4] == b"\x89PNG"
    assert "sieve" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--policies", "sieve,magic"], "--policies: unknown ['magic']"),
    (["--batch", "1,x"], "--batch must be a comma-separated list of integers"),
    (["--batch", "0"], "--batch must list positive integers"),
    (["--model", "nope"], "unknown model preset 'nope'"),
])
def test_simulate_bad_arguments(capsys, argv, message):
    base = {"--model": "qwen3-30b-a3b", "--system": "b200-hbm3e-pim", "--batch": "1", "--policies": "sieve"}
    for i in range(0, len(argv), 2):
        base[argv[i]] = argv[i + 1]
    args = ["simulate", "--quiet"] + [x for kv in base.items() for x in kv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
