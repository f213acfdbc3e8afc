"""Every shipped Triton kernel at every shipped configuration, for the compile report (SPEC §7).

Each op lists its kernels in `triton_kernels/<op>/aot.py` as `AOT_SPECS: list[AotSpec]`
(see `utils/aot.py`); add the op's folder name to OP_MODULES. An op whose folder or `aot.py`
does not exist yet is skipped; any other import error is raised.
"""
import importlib
from typing import List

from .utils.aot import AotSpec

OP_MODULES = ("common", "linear_memory", "mlp_memory", "cms")


def aot_specs() -> List[AotSpec]:
    specs: List[AotSpec] = []
    for op in OP_MODULES:
        try:
            module = importlib.import_module(f".{op}.aot", __package__)
        except ModuleNotFoundError as exc:
            if exc.name in (f"{__package__}.{op}", f"{__package__}.{op}.aot"):
                continue  # this op has no kernels to report yet
            raise
        specs.extend(module.AOT_SPECS)
    return specs
