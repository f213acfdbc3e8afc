"""Loader of the compiled extension `nested_kernels._C` (C++/CUDA kernels in `csrc/`).

Importing `_C` registers its ops in `torch.ops.nested_kernels`. A package installed with
`NESTED_KERNELS_BUILD=none` has no `_C`: the compiled backends are then unavailable, quietly.
A `_C` that exists but fails to load (e.g. built against another torch) warns, visibly.
"""
import importlib.util
import warnings

import torch

EXTENSION_AVAILABLE = False
_LOAD_ERROR = "nested_kernels._C is not built (installed with NESTED_KERNELS_BUILD=none?)"

if importlib.util.find_spec(f"{__package__}._C") is not None:
    try:
        from . import _C  # noqa: F401  (registers torch.ops.nested_kernels.*)

        EXTENSION_AVAILABLE = True
        _LOAD_ERROR = None
    except (ImportError, OSError, RuntimeError) as e:  # RuntimeError: e.g. the ops registered twice
        _LOAD_ERROR = f"nested_kernels._C failed to load: {e}"
        warnings.warn(
            f"{_LOAD_ERROR}. The compiled (cpp/cuda) backends are unavailable; rebuild with "
            "`pip install --no-build-isolation -e .` against the installed torch.",
            RuntimeWarning,
            stacklevel=2,
        )


def build_info() -> dict:
    """How `_C` was built: {"built", "cuda", "cuda_archs", "openmp", "torch_version"};
    {"built": False, "error": reason} when it is missing or failed to load."""
    if not EXTENSION_AVAILABLE:
        return {"built": False, "error": _LOAD_ERROR}
    return dict(_C.build_info())


def has_cpp_op(name: str) -> bool:
    """Whether `torch.ops.nested_kernels.<name>` is registered (by `_C`)."""
    if not EXTENSION_AVAILABLE:
        return False
    try:
        return hasattr(torch.ops.nested_kernels, name)
    except (AttributeError, RuntimeError):
        return False
