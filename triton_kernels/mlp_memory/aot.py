"""The shipped configurations of the `mlp_memory` kernels, for `nested-kernels compile-report`:
K = V in (32, 64, 128), Dh in (K, 2K, 4K), chunks of 8 to 64 tokens, bf16 inputs (q, k, v as they
are and as fp32 copies: `OPERAND_VARIANTS`), with every flag that adds registers (momentum, DGD, the
self-target, the residual), and the read kernel with both reads: `read="current"` holds more, but
`read="chunk_start"` spilled where it did not (K = 64, Dh = 128, 8-token chunks on sm_90)."""
import itertools

from ..utils.aot import FP32_INPUT_VARIANTS, OPERAND_VARIANTS, AotSpec, kernel_params, pointer_types
from .chunk_fwd import mlp_memory_fwd_kernel_h, mlp_memory_fwd_kernel_o
from .configs import launch_config

KERNELS = {"fwd_h": mlp_memory_fwd_kernel_h, "fwd_o": mlp_memory_fwd_kernel_o}
INT32 = {"last_rows", "chunk_offsets", "state_slots"}
SCALARS = {"NC": "i32"}
HEAD_DIMS = (32, 64, 128)
EXPANSIONS = (1, 2, 4)
CHUNK_SIZES = (8, 16, 32, 64)
# (name suffix, IS_CURRENT) of the read kernel's reads
READS = (("", True), ("-chunk-start", False))


def _specs(variants, fp32_inputs: bool = False):
    """The kernels for (name, q/k/v dtype, archs, products' precision) `variants`; `fp32_inputs`: of
    fp32 inputs (o in fp32 too), not only fp32 q, k, v."""
    for (variant, qkv, archs, precision), (part, kernel) in itertools.product(variants, KERNELS.items()):
        runtime, flags = kernel_params(kernel)
        signature = pointer_types(runtime, qkv, bf16=set() if fp32_inputs else {"o"}, int32=INT32, scalars=SCALARS)
        reads = READS if "IS_CURRENT" in flags else READS[:1]
        for D, mult, BT, (read_name, current) in itertools.product(HEAD_DIMS, EXPANSIONS, CHUNK_SIZES, reads):
            DH = D * mult
            cfg = launch_config(part, D, D, DH, BT, fp32_operands=qkv == "fp32", read_current=current)
            constexprs = dict(H=16, K=D, V=D, DH=DH, BT=BT, BC=max(16, BT), BK=cfg.BK, BD=cfg.BD, BV=cfg.BV,
                              ACTIVATION=0, USE_RESIDUAL=True, USE_SELF_TARGET=True, USE_MOMENTUM=True,
                              USE_DGD=True, IS_SHARED=True, IS_CURRENT=current, DOT_PRECISION=precision)
            yield AotSpec(
                name=f"mlp_memory_{part}-K{D}-Dh{DH}-BT{BT}-{variant}-mom-dgd-self{read_name}", kernel=kernel,
                signature=signature,
                constexprs={n: value for n, value in constexprs.items() if n in flags},
                num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                # wgmma needs 64-row tiles; shorter chunks use mma.sync; exact fp32 products run on the FMA units
                archs=archs, gemm_heavy=BT == 64 and precision != "ieee",
            )


AOT_SPECS = list(_specs(OPERAND_VARIANTS))
FP32_INPUT_SPECS = list(_specs(FP32_INPUT_VARIANTS, fp32_inputs=True))
