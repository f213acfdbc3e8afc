"""The shipped configurations of the `linear_memory` kernels, for `nested-kernels compile-report`."""
import itertools

from ..utils.aot import CONVERTED_VARIANT, FP32_INPUT_VARIANTS, OPERAND_VARIANTS, AotSpec, kernel_params, pointer_types
from .chunk_bwd import (
    linear_memory_bwd_kernel_dgd_inv, linear_memory_bwd_kernel_dh, linear_memory_bwd_kernel_dk,
    linear_memory_bwd_kernel_dk_dgd, linear_memory_bwd_kernel_dq,
)
from .chunk_fwd import linear_memory_fwd_kernel_h, linear_memory_fwd_kernel_o
from .configs import converts_loads, launch_config, transposed_states

KERNELS = {
    "fwd_h": linear_memory_fwd_kernel_h,
    "fwd_o": linear_memory_fwd_kernel_o,
    "bwd_dh": linear_memory_bwd_kernel_dh,
    "bwd_dq": linear_memory_bwd_kernel_dq,
    "bwd_dk": linear_memory_bwd_kernel_dk,
    "bwd_dk_dgd": linear_memory_bwd_kernel_dk_dgd,
    "bwd_dgd_inv": linear_memory_bwd_kernel_dgd_inv,
}
# arguments other than fp32 pointers (q, k, v: `OPERAND_VARIANTS`)
INPUT_DTYPE = {"do", "o"}
# the forward kernels also run with the chunk states h, s in 16-bit operands' dtype (a forward whose states only
# its output kernel reads, chunk_fwd.py `state_dtype`): their 16-bit operand variant is registered
# twice, the second time with `-states16` rows
STATES = {"h", "s"}
STATES_IN_OPERAND_DTYPE = ("fwd_h", "fwd_o")
INT32 = {"last_rows", "chunk_offsets"}
SCALARS = {"scale": "fp32", "NC": "i32"}
HEAD_DIMS = (64, 128, 256)
CHUNK_SIZES = (16, 32, 64)
# (name suffix, USE_MOMENTUM, USE_DGD): every combination runs different products, and none holds the
# most registers everywhere (without momentum, bwd_dh at K = 256 with 32-token chunks spilled on
# sm_80 where momentum and DGD together did not). Kernels without USE_DGD run with DGD only.
FLAGS = (("mom-dgd", True, True), ("mom", True, False), ("dgd", False, True), ("plain", False, False))
# The reverse recurrence also without the final state's gradient (`-nodht`: the usual training
# call, whose loss does not read the final state): there it starts from zeros, and two fp32 rows
# spilled that did not with the gradient.
FINAL_STATE_GRADIENT = (("", True), ("-nodht", False))


def flag_combinations(flags: set) -> list:
    """(name suffix, constexprs) of each combination of FLAGS (and FINAL_STATE_GRADIENT) a kernel
    with constexprs `flags` runs with."""
    with_dht = FINAL_STATE_GRADIENT if "USE_FINAL_STATE_GRADIENT" in flags else (("", True),)
    return [(name + dht_name, dict(USE_MOMENTUM=momentum, USE_DGD=dgd, USE_FINAL_STATE_GRADIENT=dht))
            for name, momentum, dgd in FLAGS if dgd or "USE_DGD" in flags for dht_name, dht in with_dht]


def signature(names, qkv: str = "bf16", states16: bool = False, fp32_inputs: bool = False, dgd: bool = False
              ) -> dict:
    """The argument types; dO and o in bf16, the inputs' dtype, but with `fp32_inputs` (in fp32 as q,
    k, v are). dQ, dK, dV in the op's input dtype, dO's (also where q, k, v are fp32 copies: the
    fp32qkv rows), but dQ and dK in fp32 with DGD (`linear_memory_bwd`)."""
    bf16 = (set() if fp32_inputs else INPUT_DTYPE) | (STATES if states16 else set())
    types = pointer_types(names, qkv, bf16=bf16, int32=INT32, scalars=SCALARS)
    grads = {"dv"} | (set() if dgd else {"dq", "dk"})
    return {n: ("*fp32" if fp32_inputs else "*bf16") if n in grads else t for n, t in types.items()}


# 16-bit inputs, their loads converted to fp32 on Hopper with Triton < 3.7.1 (`CONVERTED_VARIANT`),
# fp32 inputs with tf32 products
VARIANTS = (*OPERAND_VARIANTS, CONVERTED_VARIANT)


def _specs(variants, fp32_inputs: bool = False):
    """The kernels for (name, q/k/v dtype, archs, products' precision) `variants`; `fp32_inputs`: of
    fp32 inputs (dO, o in fp32 too), not only fp32 q, k, v."""
    for (variant, qkv, archs, precision), (part, kernel) in itertools.product(variants, KERNELS.items()):
        fp32_operands = qkv == "fp32" or variant == CONVERTED_VARIANT[0]
        runtime, flags = kernel_params(kernel)
        states16 = (False, True) if part in STATES_IN_OPERAND_DTYPE and not fp32_operands else (False,)
        for D, BT, h16, (flag_name, flag_values) in itertools.product(HEAD_DIMS, CHUNK_SIZES, states16,
                                                                     flag_combinations(flags)):
            if variant == CONVERTED_VARIANT[0] and not converts_loads(D, BT, backward=part.startswith("bwd")):
                continue                                                      # fp32 copies there
            by_config = {}                                                    # one spec per distinct config
            for arch in archs:
                cfg = launch_config(part, D, D, BT, fp32_operands=fp32_operands, arch=arch)
                transposed = transposed_states(part, D, BT, fp32_operands, arch)
                by_config.setdefault((cfg, transposed), []).append(arch)
            for (cfg, transposed), cfg_archs in by_config.items():
                constexprs = dict(H=16, K=D, V=D, BT=BT, BK=cfg.BK, BV=cfg.BV, DOT_PRECISION=precision,
                                  FP32_OPERANDS=fp32_operands, USE_INITIAL_STATE=True, STORE_FINAL_STATE=True,
                                  STORE_RES=True, TRANSPOSED=transposed, **flag_values)
                yield AotSpec(
                    name=f"linear_memory_{part}-D{D}-BT{BT}-{variant}-{flag_name}{'-states16' * h16}", kernel=kernel,
                    signature=signature(runtime, qkv, h16, fp32_inputs, flag_values["USE_DGD"]),
                    constexprs={n: value for n, value in constexprs.items() if n in flags},
                    num_warps=cfg.num_warps, num_stages=cfg.num_stages, archs=tuple(cfg_archs),
                    # wgmma needs 64-row tiles; 16/32-token chunks use mma.sync, as do the transposed
                    # states' products (BV rows); exact fp32 products run on the FMA units
                    gemm_heavy=BT == 64 and precision != "ieee", mma_sync_on_hopper=transposed,
                )


AOT_SPECS = list(_specs(VARIANTS))
FP32_INPUT_SPECS = list(_specs(FP32_INPUT_VARIANTS, fp32_inputs=True))
