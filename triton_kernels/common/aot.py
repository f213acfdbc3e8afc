"""The shipped configurations of the shared kernels, for `nested-kernels compile-report`: the
gate kernels (momentum on: the most registers), and the chunk products (both products) and the DGD
inverse (forward and backward) with bf16 q, k as they are and as fp32 copies (`OPERAND_VARIANTS`;
the chunk products also with bf16 loads converted to fp32, `CONVERTED_VARIANT`), H = 16."""
import itertools

from ..utils.aot import ARCHS, CONVERTED_VARIANT, FP32_INPUT_VARIANTS, OPERAND_VARIANTS, AotSpec, kernel_params
from . import chunk_products
from .dgd_inverse import dgd_inverse_bwd_kernel, dgd_inverse_kernel, launch_params
from .chunk_gates import CHUNK_SIZES, NUM_WARPS, chunk_gates_bwd_kernel, chunk_gates_fwd_kernel

_FWD = ("lr", "ret", "mom", "decay", "carry", "write", "mom_decay", "mom_write", "dgd_write")
_BWD = ("lr", "ret", "mom", "d_decay", "d_carry", "d_write", "d_mom_decay", "d_mom_write", "d_dgd_write",
        "d_lr", "d_ret", "d_mom", "rows_y")


# the backward's products run at the op's input precision: tf32 for bf16 inputs (the fp32 copies
# included), three-pass tf32 for fp32 inputs (dgd_inverse.py), on both archs
BWD_FP32_INPUTS = ("fp32-tf32x3", "fp32", ARCHS, "tf32x3")
# the DGD inverse's fp32 inputs beyond its default rows (`FP32_INPUT_VARIANTS`, not in CI): the
# forward (its K Kᵀ at the op's precision) with tf32 allowed on sm_80 and exact on both; the
# backward with tf32 allowed on sm_80 (its exact fp32 inputs are the tf32x3 rows)
DGD_INVERSE_FP32_INPUTS = (FP32_INPUT_VARIANTS, [v for v in FP32_INPUT_VARIANTS if v[3] != "ieee"])


def _dgd_inverse_specs(fwd_variants, bwd_variants):
    """The DGD inverse's forward for each of (name, k dtype, archs, precision) `fwd_variants` and its
    backward for each of `bwd_variants`; K Kᵀ at the op's precision in both (`dot_precision`: exact
    fp32 where the backward's other products are three-pass tf32)."""
    signature = dict(k=None, dgd_write="*fp32", write="*fp32", inv="*fp32", kk_write="*fp32", d_inv="*fp32",
                     dk_partial="*fp32", dk=None, d_dgd_write="*fp32", NC="i32")
    # kk_write: linear_memory's forward (the most work), dk_partial: its backward
    fwd, bwd = ("fwd", "", dgd_inverse_kernel), ("bwd", "_bwd", dgd_inverse_bwd_kernel)
    for (part, suffix, kernel), (variant, qkv, archs, precision) in itertools.chain(
            itertools.product([fwd], fwd_variants), itertools.product([bwd], bwd_variants)):
        runtime, flags = kernel_params(kernel)
        types = {n: signature[n] or f"*{qkv}" for n in runtime}
        for K, C in itertools.product((64, 128, 256), (16, 32, 64)):
            params = launch_params(part, C)
            constexprs = dict(H=16, K=K, C=C, BK=params["BK"], DOT_PRECISION=precision,
                              KK_PRECISION={"tf32x3": "ieee"}.get(precision, precision))
            yield AotSpec(name=f"dgd_inverse{suffix}-K{K}-C{C}-{variant}", kernel=kernel, signature=types,
                          constexprs={n: x for n, x in constexprs.items() if n in flags},
                          num_warps=params["num_warps"], archs=archs)


def _chunk_products_specs(variants):
    """The chunk products of (name, q/k dtype, archs, precision) `variants`, both products."""
    for (variant, qkv, archs, precision), (flags, reads, dgd), K, C in itertools.product(
            variants, (("reads", True, False), ("dgd", False, True), ("reads-dgd", True, True)),
            (32, 64, 128, 256),             # mlp_memory's K from 32, linear_memory's to 256
            (16, 32, 64)):
        yield AotSpec(name=f"chunk_products-K{K}-C{C}-{variant}-{flags}", kernel=chunk_products.chunk_products_kernel,
                      signature={"q": f"*{qkv}", "k": f"*{qkv}", "write": "*fp32", "dgd_write": "*fp32",
                                 "qk_write": "*fp32", "qk_dgd_write": "*fp32", "kk_write": "*fp32", "NC": "i32"},
                      constexprs={"H": 16, "K": K, "BT": C, "BK": min(chunk_products.BK, K), "USE_QK": reads,
                                  "USE_DGD": dgd, "DOT_PRECISION": precision, "FP32_OPERANDS": variant != "bf16"},
                      num_warps=chunk_products.num_warps(C), archs=archs,
                      gemm_heavy=C == 64 and precision != "ieee")     # exact fp32 products: the FMA units


AOT_SPECS = [
    AotSpec(name=f"chunk_gates_{part}-C{C}-mom{'' if e else '-noE-Nlast-padded'}", kernel=kernel,
            signature={**{n: "*fp32" for n in names}, "index": "*i64", "H": "i32", "NC": "i32"},
            constexprs={"C": C, "USE_MOMENTUM": True, "USE_DGD_WRITE": e, "N_LAST_ROW": not e, "PADDED": not e},
            num_warps=NUM_WARPS)
    for part, kernel, names in (("fwd", chunk_gates_fwd_kernel, _FWD), ("bwd", chunk_gates_bwd_kernel, _BWD))
    for C in CHUNK_SIZES
    # every gate as rows (mlp_memory), and linear_memory's without DGD (no E, N's last row) from the
    # token layout through its padding index
    for e in (True, False)
] + list(_dgd_inverse_specs(OPERAND_VARIANTS, (*OPERAND_VARIANTS, BWD_FP32_INPUTS))) + list(
    _chunk_products_specs((*OPERAND_VARIANTS, CONVERTED_VARIANT)))
FP32_INPUT_SPECS = list(_dgd_inverse_specs(*DGD_INVERSE_FP32_INPUTS)) + list(
    _chunk_products_specs(FP32_INPUT_VARIANTS))
