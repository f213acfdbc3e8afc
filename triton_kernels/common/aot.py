"""The shipped configurations of the shared kernels, for `nested-kernels compile-report`: the
gate kernels (momentum on: the most registers), and the chunk products (both products) and the DGD
inverse (forward and backward) with bf16 q, k as they are and as fp32 copies (`OPERAND_VARIANTS`),
H = 16."""
import itertools

from ..utils.aot import OPERAND_VARIANTS, AotSpec, kernel_params
from . import chunk_products
from .dgd_inverse import BK, dgd_inverse_bwd_kernel, dgd_inverse_kernel
from .dgd_inverse import num_warps as dgd_inverse_warps
from .chunk_gates import CHUNK_SIZES, chunk_gates_bwd_kernel, chunk_gates_fwd_kernel, num_warps

_FWD = ("lr", "ret", "mom", "decay", "carry", "write", "mom_decay", "mom_write", "dgd_write")
_BWD = ("lr", "ret", "mom", "d_decay", "d_carry", "d_write", "d_mom_decay", "d_mom_write", "d_dgd_write",
        "d_lr", "d_ret", "d_mom")


def _dgd_inverse_specs():
    """The DGD inverse, forward and backward; the backward's products in tf32 on bf16 keys, in
    three-pass tf32 on fp32 ones (dgd_inverse.py)."""
    signature = dict(k=None, dgd_write="*fp32", inv="*fp32", d_inv="*fp32", dk=None, d_dgd_write="*fp32", NC="i32")
    for (part, kernel), (variant, qkv, archs) in itertools.product(
            (("", dgd_inverse_kernel), ("_bwd", dgd_inverse_bwd_kernel)), OPERAND_VARIANTS):
        runtime, flags = kernel_params(kernel)
        types = {n: signature[n] or f"*{qkv}" for n in runtime}
        for K, C in itertools.product((64, 128, 256), (16, 32, 64)):
            constexprs = dict(H=16, K=K, C=C, BK=BK, DOT_PRECISION="tf32" if qkv == "bf16" else "tf32x3")
            yield AotSpec(name=f"dgd_inverse{part}-K{K}-C{C}-{variant}", kernel=kernel, signature=types,
                          constexprs={n: x for n, x in constexprs.items() if n in flags},
                          num_warps=dgd_inverse_warps(C), archs=archs)


AOT_SPECS = [
    AotSpec(name=f"chunk_gates_{part}-C{C}-mom", kernel=kernel, signature={n: "*fp32" for n in names},
            constexprs={"C": C, "USE_MOMENTUM": True}, num_warps=num_warps(part, C))
    for part, kernel, names in (("fwd", chunk_gates_fwd_kernel, _FWD), ("bwd", chunk_gates_bwd_kernel, _BWD))
    for C in CHUNK_SIZES
] + list(_dgd_inverse_specs()) + [
    AotSpec(name=f"chunk_products-K{K}-C{C}-{variant}-{flags}", kernel=chunk_products.chunk_products_kernel,
            signature={"q": f"*{qkv}", "k": f"*{qkv}", "write": "*fp32", "dgd_write": "*fp32", "qk_write": "*fp32",
                       "qk_dgd_write": "*fp32", "kk_write": "*fp32", "NC": "i32"},
            constexprs={"H": 16, "K": K, "BT": C, "BK": min(chunk_products.BK, K), "USE_QK": reads, "USE_DGD": dgd,
                        "DOT_PRECISION": "tf32"},
            num_warps=chunk_products.num_warps(C), archs=archs, gemm_heavy=C == 64)
    for variant, qkv, archs in OPERAND_VARIANTS
    for flags, reads, dgd in (("reads", True, False), ("dgd", False, True), ("reads-dgd", True, True))
    for K in (32, 64, 128, 256)             # mlp_memory's K from 32, linear_memory's to 256
    for C in (16, 32, 64)
]
