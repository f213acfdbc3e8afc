"""Triton kernels of `linear_memory` (SPEC §2); see README.md here for the algorithm."""
