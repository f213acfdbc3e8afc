"""Triton kernels of the optimisers (SPEC §5): the fused multi-tensor accumulate/scale/zero of
`MultiFrequencyOptimizer` (`multi_frequency.py`)."""
