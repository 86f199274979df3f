"""Third-party backends through the `heteromoe.backends` entry points (vLLM's plugin tests)."""
from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

import heteromoe
from heteromoe import device
from heteromoe.errors import UserError
from tests.helpers import tiny_model

PLUGIN_DIR = Path(__file__).parent / "dummy_backend"
FAKE_NAMES = ("dummy", "dummy-broken", "dummy-absent", "dummy-import-broken", "dummy-import-broken-2")


@pytest.fixture
def with_plugins(monkeypatch):
    """Pretend the dummy package (and a broken and an absent one) are installed."""
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    real = list(metadata.entry_points(group=device.ENTRY_POINT_GROUP))
    fake = [metadata.EntryPoint(name=n, value=v, group=device.ENTRY_POINT_GROUP) for n, v in (
        ("dummy", "heteromoe_dummy_backend:probe"),
        ("dummy-broken", "heteromoe_dummy_backend:broken_probe"),
        ("dummy-absent", "heteromoe_dummy_backend:absent_probe"),
        ("dummy-import-broken", "heteromoe_dummy_backend:import_broken_probe"),
        ("dummy-import-broken-2", "heteromoe_dummy_backend:import_broken_probe"))]
    monkeypatch.setattr(device, "_entry_points", lambda: real + fake)
    device.registry.load_plugins(force=True)
    yield device.registry
    monkeypatch.undo()
    for name in FAKE_NAMES:
        device.registry._entries.pop(name, None)
        device.registry._instances.pop(name, None)
    sys.modules.pop("heteromoe_dummy_backend", None)
    sys.modules.pop("heteromoe_dummy_backend.needs_missing", None)
    device.registry.load_plugins(force=True)


def test_builtins_come_from_entry_points():
    entries = {e.name: e for e in device.registry.entries()}
    for name in ("torch", "pim-emulator", "numba-cpu"):
        assert entries[name].origin.startswith("entry point heteromoe_backends.")


def test_third_party_backend_runs_a_wrapped_model(with_plugins):
    assert "dummy" in with_plugins.names()
    model = tiny_model("qwen3_moe")
    x = torch.randint(1, 128, (2, 5))
    with torch.no_grad():
        ref = model(x).logits
        before = with_plugins.get("dummy").pairs_run
        runtime = heteromoe.wrap(model, policy="all-exp", pim_backend="dummy")
        out = model(x).logits
    assert with_plugins.get("dummy").pairs_run - before == 2 * 5 * 2 * 2  # tokens x k x layers, all on PIM
    assert runtime.report()["backends"]["pim"] == "dummy"
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    runtime.unwrap()


def test_broken_and_absent_plugins_do_not_break_the_others(with_plugins):
    ok, reason = with_plugins.availability("dummy-broken")
    assert not ok and "broken on purpose" in reason
    ok, reason = with_plugins.availability("dummy-absent")
    assert not ok and "needs hardware this machine lacks" in reason
    with pytest.raises(device.BackendUnavailable, match="dummy-absent.*cannot run here"):
        with_plugins.get("dummy-absent")
    assert with_plugins.availability("torch") == (True, "")


def test_plugins_disabled_by_env(monkeypatch):
    monkeypatch.setenv("HETEROMOE_BACKENDS", "torch")
    reg = device.BackendRegistry()
    assert reg.names() == ["torch"]


def test_unknown_backend_lists_known():
    with pytest.raises(UserError, match="unknown backend 'nope'; known backends: .*pim-emulator") as err:
        device.registry.get("nope")
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)
    assert not str(err.value).startswith("'")  # not quoted as a KeyError's message would be


def test_class_import_failure_names_the_backend_and_lists_only_working_ones(with_plugins):
    assert "dummy-import-broken" in with_plugins.available_names()  # its probe said yes
    with pytest.raises(device.BackendUnavailable) as err:
        with_plugins.get("dummy-import-broken")
    message = str(err.value)
    assert "\n" not in message and isinstance(err.value, UserError)
    assert message.startswith("backend 'dummy-import-broken' (entry point heteromoe_dummy_backend:import_broken_probe)")
    assert "heteromoe_dependency_not_installed" in message
    available = message[message.index("available:"):]
    assert "'torch'" in available and "dummy-import-broken-2" not in available and "dummy-broken" not in available
    assert with_plugins.availability("dummy-import-broken")[0] is False


def test_unknown_name_in_env_is_named_with_the_known_ones(monkeypatch):
    monkeypatch.setenv("HETEROMOE_BACKENDS", "torh")
    reg = device.BackendRegistry()
    with pytest.raises(UserError, match=r"HETEROMOE_BACKENDS=torh names unknown backend\(s\) 'torh'; known backends: "
                                        r".*pim-emulator.*torch") as err:
        reg.default("gpu")
    assert "not installed" not in str(err.value) and "\n" not in str(err.value)


def test_register_in_code():
    from heteromoe_backends.torch_backend import TorchBackend

    reg = device.BackendRegistry()
    reg._plugins_loaded = True
    reg.register("mine", TorchBackend)
    assert reg.get("mine").name == "torch" and reg.names() == ["mine"]
