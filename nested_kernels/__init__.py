"""nested_kernels: fused, tested kernels for the in-context memories of HOPE / Nested Learning.

Ops (SPEC §2–§5): `linear_memory`, `mlp_memory`, `cms_level`, `deep_momentum`, each with
`backend=` ("reference" | "torch" | "triton" | "cuda" | "cpp" | "auto"); layers in
`nested_kernels.modules`, optimisers in `nested_kernels.optim`.
"""
from . import _extension
from .cms import CMSDecodeState, CMSState, cms_level, cms_level_step
from .common.kept_states import keep_chunk_states
from .deep_momentum import deep_momentum
from .linear_memory import LinearMemoryDecodeState, LinearMemoryState, linear_memory, linear_memory_step
from .mlp_memory import MLPMemoryDecodeState, MLPMemoryState, mlp_memory, mlp_memory_step

__version__ = "0.1.0"

__all__ = ["linear_memory", "LinearMemoryState", "linear_memory_step", "LinearMemoryDecodeState", "mlp_memory",
           "MLPMemoryState", "mlp_memory_step", "MLPMemoryDecodeState", "cms_level", "CMSState", "cms_level_step",
           "CMSDecodeState", "deep_momentum", "keep_chunk_states"]
