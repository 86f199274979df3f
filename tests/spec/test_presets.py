"""Presets load, validate and fail clearly."""
from __future__ import annotations

import dataclasses

import pytest

import heteromoe
from heteromoe.spec import MoEModelSpec, SystemSpec

PUBLISHED_MODELS = {  # the published shapes: d, f, E, k
    "qwen3-30b-a3b": (2048, 768, 128, 8), "gpt-oss-120b": (2880, 2880, 128, 4),
    "qwen3.5-397b-a17b": (4096, 1024, 512, 10), "qwen3-next-80b-a3b": (2048, 512, 512, 10),
    "mixtral-8x7b": (4096, 14336, 8, 2), "deepseek-v3": (7168, 2048, 256, 8),
}


def test_all_design_presets_exist():
    assert set(heteromoe.systems.names()) == {"b200-hbm3e-pim", "h100-hbm3-pim", "h200-hbm3e-pim", "h100-logic-pim",
                                              "samsung-hbm2-pim"}
    for name, (d, f, e, k) in PUBLISHED_MODELS.items():
        m = heteromoe.models.get(name)
        assert (m.hidden_size, m.moe_intermediate_size, m.num_experts, m.top_k) == (d, f, e, k)


@pytest.mark.parametrize("name", ["b200-hbm3e-pim", "h100-hbm3-pim", "h200-hbm3e-pim", "h100-logic-pim"])
def test_gpu_systems_have_consistent_bandwidth(name):
    s = heteromoe.systems.get(name)
    assert s.pim.ext_bw_bytes_per_s == pytest.approx(s.gpu.ext_bw_bytes_per_s, rel=0.01)
    assert s.pim.internal_bw_bytes_per_s > s.gpu.ext_bw_bytes_per_s


def test_b200_multiplier_is_derived_from_timings():
    pim = heteromoe.systems.get("b200-hbm3e-pim").pim
    assert pim.internal_bw_multiplier is None  # not picked: derived
    # A row step: 24 banks activate four per tFAW (5 x 12 cycles), tRCD 28, 32 columns x tCCD_L 4, tRP 28
    # = 244 cycles of 0.5 ns, in which 24 banks stream 1 KB each. External: 1 TB/s over 32 pseudo-channels.
    assert pim.row_step_cycles == 60 + 28 + 128 + 28
    expected = 24 * 1024 / (244 * 0.5e-9) / (1e12 / 32)
    assert pim.bw_multiplier == pytest.approx(expected)
    assert 4 < pim.bw_multiplier < 12  # below the 12x bound of the column rate alone


def test_unknown_preset_lists_known_names():
    with pytest.raises(KeyError, match="known presets: .*h100-hbm3-pim"):
        heteromoe.systems.get("h100-hbm4-pim")
    with pytest.raises(KeyError, match="qwen3-30b-a3b"):
        heteromoe.models.get("qwen9")


def test_user_toml_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\nhidden_size = 64\nmoe_intermediate_size = 32\nnum_experts = 16\ntop_k = 2\n'
                    'num_layers = 4\n')
    spec = heteromoe.models.get(str(path))
    assert spec.num_experts == 16 and spec.num_moe_layers == 4
    assert heteromoe.models.get(spec) is spec


def test_bad_toml_names_the_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "bad"\nhidden_size = 64\nmoe_intermediate_size = 32\nnum_experts = 16\ntop_k = 2\n'
                    'num_layers = 4\nhiden = 3\n')
    with pytest.raises(ValueError, match="unknown key.*hiden"):
        heteromoe.models.get(str(path))


def test_impossible_configs_raise():
    base = heteromoe.systems.get("h100-hbm3-pim")
    with pytest.raises(ValueError, match="eta_bw"):
        dataclasses.replace(base.gpu, eta_bw=1.5)
    with pytest.raises(ValueError, match="stacks_per_gpu"):
        dataclasses.replace(base.pim, stacks_per_gpu=0)
    with pytest.raises(ValueError, match="top_k=9 exceeds num_experts=8"):
        MoEModelSpec(name="x", hidden_size=8, moe_intermediate_size=8, num_experts=8, top_k=9, num_layers=1)
    with pytest.raises(ValueError, match="max_gpus"):
        base.check_gpus(9)
    with pytest.raises(ValueError, match="positive integer"):
        base.check_gpus(0)


def test_host_pim_preset_has_no_gpu():
    s = heteromoe.systems.get("samsung-hbm2-pim")
    assert isinstance(s, SystemSpec) and s.gpu is None
    assert s.pim.flops_per_stack_per_s == pytest.approx(1.2e12)
    assert s.pim.flops_per_s == pytest.approx(4 * 1.2e12)  # PIMSimulator's benchmark system: 4 stacks, 64 pCH
    assert s.pim.stacks_per_gpu * s.pim.pseudo_channels_per_stack == 64
    with pytest.raises(ValueError, match="has no GPU"):
        heteromoe.schedule([1] * 128, model="qwen3-30b-a3b", system="samsung-hbm2-pim")


@pytest.mark.parametrize("name", ["b200-hbm3e-pim", "h100-hbm3-pim", "h200-hbm3e-pim", "samsung-hbm2-pim"])
def test_bank_presets_state_their_pim_flow_and_its_source(name):
    pim = heteromoe.systems.get(name).pim
    assert pim.flow in ("stream", "tile") and len(pim.flow_source) > 40
    if pim.flow == "tile":
        assert pim.banks_per_pim_unit == 2 and pim.timings.t_rcd_wr_cycles and pim.timings.t_wl_cycles


def test_bad_flow_is_named():
    base = heteromoe.systems.get("h100-hbm3-pim").pim
    with pytest.raises(ValueError, match="PimSpec.flow must be 'stream' or 'tile', got 'tiles'"):
        dataclasses.replace(base, flow="tiles")
    with pytest.raises(ValueError, match="flow='tile'.*needs banks_per_pim_unit=2"):
        dataclasses.replace(base, flow="tile")
    with pytest.raises(ValueError, match="t_wl_cycles must be >= 0, got -1"):
        dataclasses.replace(base.timings, t_wl_cycles=-1)
