"""nested_kernels: fused, tested kernels for the in-context memories of HOPE / Nested Learning.

Ops (SPEC §2–§4): `linear_memory`, `mlp_memory`, `cms_level`, each with `backend=`
("reference" | "torch" | "triton" | "cuda" | "cpp" | "auto"); layers in `nested_kernels.modules`.
"""
from . import _extension
from .cms import CMSState, cms_level
from .linear_memory import LinearMemoryState, linear_memory
from .mlp_memory import MLPMemoryState, mlp_memory

__version__ = "0.1.0"

__all__ = ["linear_memory", "LinearMemoryState", "mlp_memory", "MLPMemoryState", "cms_level", "CMSState"]
