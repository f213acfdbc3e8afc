"""The shipped configurations of the `mlp_memory` kernels, for `nested-kernels compile-report`:
K = V in (32, 64, 128), Dh in (K, 2K, 4K), chunks of 8 to 64 tokens, bf16 inputs, with every
flag that adds registers (momentum, DGD, the self-target, the residual, `read="current"`)."""
import inspect

from ..utils.aot import AotSpec
from .chunk_fwd import mlp_memory_fwd_kernel_h, mlp_memory_fwd_kernel_o
from .configs import launch_config

KERNELS = {"fwd_h": mlp_memory_fwd_kernel_h, "fwd_o": mlp_memory_fwd_kernel_o}
INPUTS_BF16 = {"q", "k", "v", "o"}
INT32 = {"last_rows", "chunk_offsets", "state_slots"}
SCALARS = {"NC": "i32"}
HEAD_DIMS = (32, 64, 128)
EXPANSIONS = (1, 2, 4)
CHUNK_SIZES = (8, 16, 32, 64)


def _params(kernel):
    """(runtime argument names, constexpr names) of a jitted or interpreted kernel."""
    params = inspect.signature(getattr(kernel, "fn", kernel)).parameters.values()
    is_constexpr = lambda p: "constexpr" in str(p.annotation)
    return [p.name for p in params if not is_constexpr(p)], {p.name for p in params if is_constexpr(p)}


def _signature(names) -> dict:
    return {n: SCALARS.get(n, "*bf16" if n in INPUTS_BF16 else "*i32" if n in INT32 else "*fp32") for n in names}


def _specs():
    for part, kernel in KERNELS.items():
        runtime, flags = _params(kernel)
        for D in HEAD_DIMS:
            for mult in EXPANSIONS:
                for BT in CHUNK_SIZES:
                    DH = D * mult
                    cfg = launch_config(part, D, D, DH, BT)
                    constexprs = dict(H=16, K=D, V=D, DH=DH, BT=BT, BC=max(16, BT), BK=cfg.BK, BD=cfg.BD, BV=cfg.BV,
                                      ACTIVATION=0, USE_RESIDUAL=True, USE_SELF_TARGET=True, USE_MOMENTUM=True,
                                      USE_DGD=True, IS_SHARED=True, IS_CURRENT=True, DOT_PRECISION="tf32")
                    yield AotSpec(
                        name=f"mlp_memory_{part}-K{D}-Dh{DH}-BT{BT}-bf16-mom-dgd-self",
                        kernel=kernel, signature=_signature(runtime),
                        constexprs={n: value for n, value in constexprs.items() if n in flags},
                        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                        gemm_heavy=BT == 64,  # wgmma needs 64-row tiles; shorter chunks use mma.sync
                    )


AOT_SPECS = list(_specs())
