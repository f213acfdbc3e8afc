"""Triton kernels of `cms_level` (SPEC §4)."""
