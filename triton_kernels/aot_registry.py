"""Every shipped Triton kernel at every shipped configuration, for the compile report (SPEC §7).

Each op lists its kernels in `triton_kernels/<op>/aot.py` as `AOT_SPECS: list[AotSpec]`
(see `utils/aot.py`); add the op's folder name to OP_MODULES (or, for a second list in the
same folder, its dotted module path `<op>.<module>`). An op whose folder or module does not
exist yet is skipped; any other import error is raised.
"""
import importlib
from typing import List, Optional, Set

from .utils.aot import AotSpec

OP_MODULES = ("common", "linear_memory", "mlp_memory", "mlp_memory.aot_bwd", "cms", "optim")


def _op_modules():
    for op in OP_MODULES:
        module = op if "." in op else f"{op}.aot"
        try:
            yield importlib.import_module(f".{module}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name in (f"{__package__}.{op.split('.')[0]}", f"{__package__}.{module}"):
                continue  # this op has no kernels to report yet
            raise


def aot_specs(arch: Optional[int] = None, fp32_inputs: bool = False) -> List[AotSpec]:
    """Every registered spec, or those that launch on sm_`arch` (`AotSpec.archs`). With
    `fp32_inputs`, also what fp32 inputs run beyond them (an op's `FP32_INPUT_SPECS`: tf32 products
    on sm_80, exact fp32 products on both; `utils/aot.py` `FP32_INPUT_VARIANTS`), which CI does not
    compile."""
    lists = ("AOT_SPECS", "FP32_INPUT_SPECS") if fp32_inputs else ("AOT_SPECS",)
    return [spec for module in _op_modules() for name in lists for spec in getattr(module, name, ())
            if arch is None or arch in spec.archs]


def known_spills(arch: int) -> Set[str]:
    """Names of shipped configurations an op declares as still spilling on sm_`arch` (its
    `KNOWN_SPILLS = {arch: {name, ...}}`): open work, listed so that CI catches any other
    spill and any fix (a listed configuration that stops spilling must leave the list)."""
    return {name for module in _op_modules() for name in getattr(module, "KNOWN_SPILLS", {}).get(arch, ())}
