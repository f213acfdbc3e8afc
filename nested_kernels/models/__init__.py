"""Models built from the ops: HOPE (SPEC §6)."""
from .hope import HopeBlock, HopeConfig, HopeLayerState, HopeLM, HopeState, SelfModifyingTitans

__all__ = ["HopeConfig", "HopeLM", "HopeBlock", "SelfModifyingTitans", "HopeLayerState", "HopeState"]
