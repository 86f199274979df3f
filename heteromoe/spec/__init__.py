"""Specs (frozen dataclasses) and their TOML presets."""
from heteromoe.spec.hardware import DramTimings, GpuSpec, LinkSpec, PimSpec, SystemSpec
from heteromoe.spec.model import MoEModelSpec
from heteromoe.spec.presets import PresetRegistry, models, systems

__all__ = [
           "DramTimings",
           "GpuSpec",
           "LinkSpec",
           "MoEModelSpec",
           "PimSpec",
           "PresetRegistry",
           "SystemSpec",
           "models",
           "systems",
]
