"""The shipped configurations of the `cms_level` kernels, for `nested-kernels compile-report`."""

from ..utils.aot import AotSpec, kernel_params
from .chunk_bwd import cms_bwd_kernel_de, cms_bwd_kernel_dw, cms_bwd_kernel_dx, cms_bwd_kernel_dz, cms_bwd_kernel_q
from .chunk_fwd import cms_fwd_kernel_p, cms_fwd_kernel_w, cms_fwd_kernel_y, cms_fwd_kernel_z
from .configs import TABLE, TABLE_FP32, launch_config

KERNELS = {
    "fwd_z": cms_fwd_kernel_z,
    "fwd_y": cms_fwd_kernel_y,
    "fwd_p": cms_fwd_kernel_p,
    "fwd_w": cms_fwd_kernel_w,
    "bwd_q": cms_bwd_kernel_q,
    "bwd_de": cms_bwd_kernel_de,
    "bwd_dz": cms_bwd_kernel_dz,
    "bwd_dx": cms_bwd_kernel_dx,
    "bwd_dw": cms_bwd_kernel_dw,
}
assert set(KERNELS) == set(TABLE) == set(TABLE_FP32), "one compile-report entry per launch-table row"
# arguments that are not fp32 pointers: the activations in the input dtype (x, the teach signal,
# y and their gradients) and the integer scalars
INPUTS_BF16 = {"x", "signal", "y", "dy", "dx", "dsignal"}
SCALARS = {"r0", "n_rows", "T", "D", "DH", "stride_w", "ND"}
# (D, Dh) of the report: SPEC §6's small HOPE level (d 256, 4·d hidden), where the table's tiles
# apply in full; larger D and Dh add loop trips, not registers
D, DH = 256, 1024


def _signature(names, activations: str) -> dict:
    return {n: "i32" if n in SCALARS else f"*{activations}" if n in INPUTS_BF16 else "*fp32" for n in names}


# (name, input dtype, products, activations): 16-bit inputs run tf32 products on the matrix units
# (every kernel is a GEMM: wgmma required on sm_90), fp32 inputs exact fp32 ones (FMA, their own
# table; GELU only, the activation with more registers)
VARIANTS = (("bf16", "bf16", "tf32", ("silu", "gelu")), ("fp32", "fp32", "ieee", ("gelu",)))
# fp32 inputs with tf32 allowed (`compile-report --fp32-inputs`): the 16-bit inputs' table
FP32_INPUT_VARIANTS = (("fp32-tf32", "fp32", "tf32", ("gelu",)),)


def _specs(variants):
    for variant, dtype, precision, activations in variants:
        for part, kernel in KERNELS.items():
            for act in activations:
                cfg = launch_config(part, D, DH, precision)
                runtime, flags = kernel_params(kernel)
                constexprs = dict(BT=cfg.BT, BD=cfg.BD, BH=cfg.BH, USE_GELU=act == "gelu", IS_GRAD_Y=False,
                                  STORE_ERROR=True, DOT_PRECISION=precision)
                constexprs = {n: value for n, value in constexprs.items() if n in flags}
                yield AotSpec(
                    name=f"cms_{part}-{act}-{variant}", kernel=kernel, signature=_signature(runtime, dtype),
                    constexprs=constexprs, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                    gemm_heavy=precision == "tf32",
                )


AOT_SPECS = list(_specs(VARIANTS))
FP32_INPUT_SPECS = list(_specs(FP32_INPUT_VARIANTS))
