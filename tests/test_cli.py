"""`heteromoe ...` as a user calls it."""
from __future__ import annotations

import json
import os
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
    (["demo", "--batch", "0"], "--batch must be >= 1, got 0"),
    (["demo", "--new-tokens", "0"], "--new-tokens must be >= 1, got 0"),
    (["schedule", "--counts", "[1]", "--model", "qwen3-30b-a3b", "--system", "h100-hbm3-pim", "--gpus", "0"],
     "--gpus: "),
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
    out_text = capsys.readouterr().out
    assert "sieve" in out_text
    assert f"wrote {out}, {plot}, {tmp_path / 'sim-gantt.png'}, {tmp_path / 'sim-loads.png'}" in out_text
    rows = [line.split() for line in out_text.splitlines() if line.startswith(("all-exp", "sieve"))]
    assert rows and all(row[3] in ("s", "ms", "us", "ns") for row in rows)  # step time with its unit


@pytest.mark.parametrize("argv,message", [
    (["--policies", "sieve,magic"], "--policies: unknown ['magic']"),
    (["--batch", "1,x"], "--batch must be a comma-separated list of integers"),
    (["--batch", "0"], "--batch must list positive integers"),
    (["--model", "nope"], "unknown model preset 'nope'"),
    (["--batch", "1,,4"], "--batch must be a comma-separated list of positive integers without empty entries"),
    (["--batch", "4,"], "without empty entries, got '4,'"),
    (["--policies", "sieve,,heteromoe"], "--policies must be a comma-separated list of policy names without empty"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--gpus", "99"], "--gpus: "),
])
def test_simulate_bad_arguments(capsys, argv, message):
    base = {"--model": "qwen3-30b-a3b", "--system": "b200-hbm3e-pim", "--batch": "1", "--policies": "sieve"}
    for i in range(0, len(argv), 2):
        base[argv[i]] = argv[i + 1]
    args = ["simulate", "--quiet"] + [x for kv in base.items() for x in kv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


# ------------------------------------------------------------------------------------------- help text


def _subparsers():
    import argparse

    from heteromoe.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, action.choices


def test_every_option_has_help_with_its_default_or_required():
    parser, commands = _subparsers()
    assert {"backends", "presets", "policies", "schedule", "pim-time", "simulate", "demo", "calibrate"} <= set(commands)
    for name, sub in [("heteromoe", parser), *commands.items()]:
        assert sub.description, f"{name} has no description"
        for action in sub._actions:
            if action.dest in ("help", "command"):
                continue
            text = action.help or ""
            assert text, f"{name} {action.option_strings} has no help"
            assert action.required or "default" in text, f"{name} {action.option_strings}: help names no default"
            assert not action.required or "required" in text, f"{name} {action.option_strings}: help hides 'required'"


def test_help_lists_the_finite_choices():
    import heteromoe
    from heteromoe.sched import POLICIES

    _, commands = _subparsers()

    def help_of(command, option):
        sub = commands[command]
        action = next(a for a in sub._actions if option in a.option_strings)
        return sub._get_formatter()._expand_help(action)

    for command, option in [("schedule", "--policy"), ("demo", "--policy"), ("simulate", "--policies")]:
        assert all(p in help_of(command, option) for p in POLICIES), (command, option)
    for command in ("schedule", "pim-time", "simulate", "demo"):
        assert all(s in help_of(command, "--system") for s in heteromoe.systems.names()), command
    for command in ("schedule", "simulate"):
        assert all(m in help_of(command, "--model") for m in heteromoe.models.names()), command
    assert "bf16" in help_of("pim-time", "--dtype") and "fp16" in help_of("pim-time", "--dtype")


def test_help_runs_for_every_command(capsys):
    _, commands = _subparsers()
    for name in commands:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert "default" in capsys.readouterr().out


def test_policies_lists_each_with_its_rule(capsys):
    from heteromoe.sched import POLICIES

    assert main(["policies"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(POLICIES)
    for line, (name, cls) in zip(lines, POLICIES.items()):
        assert line.split()[0] == name and cls.summary in line
    assert main(["policies", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["policies"]
    assert [r["name"] for r in rows] == list(POLICIES) and all(r["rule"] for r in rows)


@pytest.mark.parametrize("seconds,text", [
    (0.00213, "2.13 ms"), (0.0021349, "2.13 ms"), (2.0, "2.00 s"), (123.4e-6, "123 us"), (5e-7, "500 ns"),
    (0.0009996, "1.00 ms"), (0.5994e-3, "599 us"), (12.34, "12.3 s"), (0.0, "0 ns"),
])
def test_format_seconds_three_significant_digits(seconds, text):
    from heteromoe.cli import format_seconds

    assert format_seconds(seconds) == text


def test_pim_time_json_keys_end_in_their_unit(capsys):
    for system in ("b200-hbm3e-pim", "h100-logic-pim"):
        assert main(["pim-time", "--system", system, "--d-in", "64", "--d-out", "64", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        timed = {k for k, v in out.items() if isinstance(v, (float, dict))} - {"speedup"}
        assert timed and all(k.endswith("_ns") for k in timed), timed
        assert all(k.endswith("_ns") for k in out.get("breakdown_ns", {}))


# ------------------------------------------------------------------------------------------- errors


def _one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    for needle in needles:
        assert needle in captured.err, captured.err
    return captured.err


@pytest.mark.parametrize("option", ["--model", "--system"])
def test_missing_toml_path_is_one_line(capsys, tmp_path, option):
    missing = str(tmp_path / "mine.toml")
    argv = {"--model": "qwen3-30b-a3b", "--system": "b200-hbm3e-pim", option: missing}
    for command in (["schedule", "--counts", "[1]"], ["simulate", "--quiet"]):
        _one_line_error(capsys, [*command, *[x for kv in argv.items() for x in kv]], option, missing,
                        "does not exist")


@pytest.fixture
def no_sweep(monkeypatch):
    """Fail the test if the simulator's sweep starts: the checks must come before the work."""
    import heteromoe.sim

    def fail(*args, **kwargs):
        raise AssertionError("the sweep ran before the arguments were checked")

    monkeypatch.setattr(heteromoe.sim, "sweep", fail)


SIM = ["simulate", "--model", "qwen3-30b-a3b", "--system", "b200-hbm3e-pim", "--policies", "sieve", "--batch", "1",
       "--quiet"]


def test_missing_trace_path_is_one_line_before_the_sweep(capsys, tmp_path, no_sweep):
    missing = str(tmp_path / "no-such-trace")
    _one_line_error(capsys, [*SIM, "--trace", missing], "--trace", missing, "does not exist")


@pytest.mark.parametrize("option", ["--json", "--plot"])
def test_output_in_a_missing_folder_is_caught_before_the_sweep(capsys, tmp_path, no_sweep, option):
    path = str(tmp_path / "no-such-folder" / "out.x")
    _one_line_error(capsys, [*SIM, option, path], option, "does not exist")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    _one_line_error(capsys, [*SIM, option, str(a_file / "out.x")], option, "does not exist")
    _one_line_error(capsys, [*SIM, option, str(tmp_path)], option, "is a folder")


@pytest.mark.parametrize("option", ["--json", "--plot"])
def test_output_in_a_read_only_folder_is_caught_before_the_sweep(capsys, tmp_path, no_sweep, monkeypatch, option):
    import heteromoe.cli_checks

    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root may write anywhere: ask the check's own access test to say no
        monkeypatch.setattr(heteromoe.cli_checks.os, "access", lambda path, mode: False)
    _one_line_error(capsys, [*SIM, option, str(folder / "out.x")], option, "cannot be written")


def test_demo_checks_the_policy_before_building_the_model(capsys, monkeypatch):
    import types

    stub = types.ModuleType("heteromoe.demo")

    def run_demo(**kwargs):
        raise AssertionError("the demo started before its arguments were checked")

    stub.run_demo = run_demo
    monkeypatch.setitem(sys.modules, "heteromoe.demo", stub)
    _one_line_error(capsys, ["demo", "--policy", "siev"], "unknown ['siev']", "sieve")
    _one_line_error(capsys, ["demo", "--system", "h100-hbm9"], "--system", "unknown system preset 'h100-hbm9'")


def test_debug_shows_the_traceback(capsys, monkeypatch):
    argv = ["schedule", "--counts", "[1]", "--model", "qwen3-30b-a3b", "--system", "nope"]
    with pytest.raises(ValueError, match="unknown system preset"):
        main(["--debug", *argv])
    monkeypatch.setenv("HETEROMOE_DEBUG", "1")
    with pytest.raises(ValueError, match="unknown system preset"):
        main(argv)


def _run_cli(argv, **env):
    import os

    return subprocess.run([sys.executable, "-m", "heteromoe.cli", *argv], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_bad_fastpath_value_is_one_line():
    result = _run_cli(["presets"], HETEROMOE_FASTPATH="cc")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "HETEROMOE_FASTPATH='cc'" in result.stderr and "python" in result.stderr


def test_unknown_backend_in_env_is_one_line():
    result = _run_cli(["demo", "--batch", "1", "--new-tokens", "1"], HETEROMOE_BACKENDS="torh")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "torh" in result.stderr and "torch" in result.stderr


def test_a_closed_pipe_ends_quietly():
    """`heteromoe presets | head -1`: no error message once the reader has gone."""
    proc = subprocess.Popen([sys.executable, "-m", "heteromoe.cli", "presets"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=0)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) in (0, 1) and "error" not in err and "Traceback" not in err
