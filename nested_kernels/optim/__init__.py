"""Optimisers of Nested Learning (SPEC §5): deep momentum, multi-frequency outer updates, M3."""
from .deep_momentum import DeepMomentum, DMGDMeta, functional_step
from .m3 import M3
from .multi_frequency import MultiFrequencyOptimizer
from .newton_schulz import newton_schulz, polar_factor

__all__ = ["DeepMomentum", "DMGDMeta", "functional_step", "M3", "MultiFrequencyOptimizer", "newton_schulz", "polar_factor"]
