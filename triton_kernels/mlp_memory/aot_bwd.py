"""The shipped configurations of the `mlp_memory` chunk-backward kernels (chunk_bwd.py), for
`nested-kernels compile-report`: every chunk tile BT at the largest shapes of the contract
(K = V = 128, Dh = 512; the tiles do not depend on K, V, Dh beyond the loop counts), bf16
inputs (q, k, v as they are and as fp32 copies: `OPERAND_VARIANTS`), with every flag on
(momentum, `read="current"`, self target, residual: the most registers) without and with DGD."""
import itertools

from ..utils.aot import FP32_INPUT_VARIANTS, OPERAND_VARIANTS, AotSpec, kernel_params, pointer_types
from .chunk_bwd import (
    mlp_memory_bwd_kernel_dd, mlp_memory_bwd_kernel_dres, mlp_memory_bwd_kernel_dw, mlp_memory_bwd_kernel_inner,
    mlp_memory_bwd_kernel_qk, mlp_memory_bwd_kernel_res,
)
from .configs_bwd import CHUNK_TILES, launch_config

KERNELS = {
    "res": mlp_memory_bwd_kernel_res,
    "qk": mlp_memory_bwd_kernel_qk,
    "inner": mlp_memory_bwd_kernel_inner,
    "dd": mlp_memory_bwd_kernel_dd,
    "dres": mlp_memory_bwd_kernel_dres,
    "dw": mlp_memory_bwd_kernel_dw,
}
SCALARS = {"C": "i32"}
SHAPES = ((128, 512),)                      # (K = V, Dh)


def _specs(variants, fp32_inputs: bool = False):
    """The kernels for (name, q/k/v dtype, archs, products' precision) `variants`; `fp32_inputs`: of
    fp32 inputs (do in fp32 too), not only fp32 q, k, v."""
    for (variant, qkv, archs, precision), (part, kernel) in itertools.product(variants, KERNELS.items()):
        runtime, flags = kernel_params(kernel)
        signature = pointer_types(runtime, qkv, bf16=set() if fp32_inputs else {"do"}, scalars=SCALARS)
        for (D, Dh), dgd, BT in itertools.product(SHAPES, (False, True), CHUNK_TILES):
            if dgd and "USE_DGD" not in flags:
                continue                                                      # the same kernel as without DGD
            cfg = launch_config(part, D, D, Dh, BT, dgd)
            constexprs = dict(H=16, K=D, V=D, DH=Dh, BT=BT, BK=cfg.BK, BV=cfg.BV, BD=cfg.BD, ACT=0, IS_RESIDUAL=True,
                              IS_SELF_TARGET=True, IS_READ_CURRENT=True, USE_MOMENTUM=True, USE_DGD=dgd,
                              DOT_PRECISION=precision)
            yield AotSpec(
                name=f"mlp_memory_bwd_{part}-D{D}-Dh{Dh}-BT{BT}-{variant}-mom-current-self{'-dgd' * dgd}", kernel=kernel,
                signature=signature, constexprs={n: x for n, x in constexprs.items() if n in flags},
                num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                # wgmma needs 64-row tiles; 16/32-token chunks use mma.sync; exact fp32 products run on the FMA units
                archs=archs, gemm_heavy=BT == 64 and precision != "ieee",
            )


AOT_SPECS = list(_specs(OPERAND_VARIANTS))
FP32_INPUT_SPECS = list(_specs(FP32_INPUT_VARIANTS, fp32_inputs=True))
# No KNOWN_SPILLS: every configuration is free of spills on sm_90 and sm_80 (triton 3.8), since the
# DGD system's forward (`inner`) and backward (`dd`) run in separate kernels (one spilled on sm_80).
