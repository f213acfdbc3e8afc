"""The shipped configurations of the `linear_memory` kernels, for `nested-kernels compile-report`."""
import inspect

from ..utils.aot import AotSpec
from .chunk_bwd import (
    linear_memory_bwd_kernel_dh, linear_memory_bwd_kernel_dk, linear_memory_bwd_kernel_dk_dgd, linear_memory_bwd_kernel_dq,
)
from .chunk_fwd import linear_memory_fwd_kernel_h, linear_memory_fwd_kernel_o
from .configs import launch_config

KERNELS = {
    "fwd_h": linear_memory_fwd_kernel_h,
    "fwd_o": linear_memory_fwd_kernel_o,
    "bwd_dh": linear_memory_bwd_kernel_dh,
    "bwd_dq": linear_memory_bwd_kernel_dq,
    "bwd_dk": linear_memory_bwd_kernel_dk,
    "bwd_dk_dgd": linear_memory_bwd_kernel_dk_dgd,
}
# arguments that are not fp32 pointers: the bf16 inputs, int32 tables, scalars
INPUTS_BF16 = {"q", "k", "v", "do", "o"}
INT32 = {"last_rows", "chunk_offsets"}
SCALARS = {"scale": "fp32", "NC": "i32"}
HEAD_DIMS = (64, 128, 256)
CHUNK_SIZES = (16, 32, 64)


def _params(kernel):
    """(runtime argument names, constexpr names) of a jitted or interpreted kernel."""
    params = inspect.signature(getattr(kernel, "fn", kernel)).parameters.values()
    is_constexpr = lambda p: "constexpr" in str(p.annotation)
    return [p.name for p in params if not is_constexpr(p)], {p.name for p in params if is_constexpr(p)}


def _signature(names) -> dict:
    return {n: SCALARS.get(n, "*bf16" if n in INPUTS_BF16 else "*i32" if n in INT32 else "*fp32") for n in names}


def _specs():
    for part, kernel in KERNELS.items():
        for D in HEAD_DIMS:
            for BT in CHUNK_SIZES:
                cfg = launch_config(part, D, D, BT)
                constexprs = dict(H=16, K=D, V=D, BT=BT, BK=cfg.BK, BV=cfg.BV, USE_MOMENTUM=True, USE_DGD=True,
                                  DOT_PRECISION="tf32")
                runtime, flags = _params(kernel)
                constexprs.update(USE_INITIAL_STATE=True, STORE_FINAL_STATE=True, USE_FINAL_STATE_GRADIENT=True)
                constexprs = {n: value for n, value in constexprs.items() if n in flags}
                yield AotSpec(
                    name=f"linear_memory_{part}-D{D}-BT{BT}-bf16-mom-dgd", kernel=kernel, signature=_signature(runtime),
                    constexprs=constexprs, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                    gemm_heavy=BT == 64,  # wgmma needs 64-row tiles; 16/32-token chunks use mma.sync
                )


AOT_SPECS = list(_specs())
