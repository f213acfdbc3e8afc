"""Triton kernels of nested_kernels, installed as `nested_kernels.triton_kernels` (never as a top-level package)."""
