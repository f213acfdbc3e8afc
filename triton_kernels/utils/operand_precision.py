"""When the kernels compute with fp32 operands for 16-bit q, k, v (same values, fp32 dots; loads
converted in linear_memory's kernels where they compile clean, fp32 copies elsewhere and for
mlp_memory's): the places where Triton's 16-bit matrix products are known to be wrong.

* Triton's interpreter (3.8) computes bf16 `tl.dot` wrongly.
* Triton 3.4.0 to 3.7.0 on Hopper (sm_90) miscompiles some 16-bit products whose operand is a
  transposed or converted matrix-product result (fla-org/flash-linear-attention#640, fixed in
  Triton 3.7.1). On an H100 with Triton 3.6 our bf16 kernels gave 7× the error of the other
  configurations (chunk 64, momentum and DGD) and an illegal memory access (B8 T256 H16 D64,
  DGD), while the same kernels on fp32 operands matched the torch tier to 3e-7 everywhere
  (benchmarks/results/h100-2026-11-25.md). Not checked here: an illegal shared-memory read in
  Hopper wgmma kernels with several products, reported against Triton 3.6+ and still in 3.7.1
  (triton-lang/triton#10573, #11366), may be what the H100 run hit; a GPU session with Triton
  ≥ 3.7.1 should run `benchmarks/isolate_triton.py`'s bf16 rows before trusting the cut-off.
  An H200 passed every 16-bit row it ran (h200-2026-11-26.md); an H100 again failed 4 of 49
  (three illegal accesses, one wrong dh0 without a fault: h100-2026-11-27.md), all with 64-token
  chunks. Those configurations, with sm_90's 16-bit launch entries, run in the interpreter on fp16
  inputs with every access in bounds and every gradient right (`tests/linear_memory/test_triton.py`
  `test_triton_chunk_sm90_16bit_entries`): the faults are not our kernels' addressing.

`NESTED_KERNELS_TRITON_16BIT_DOTS=1` keeps 16-bit operands anyway (to investigate).

`dot_precision` is the `input_precision` of the kernels' products, from the dtype of the op's inputs
(before any copy): fp32 operands of 16-bit inputs still run on the matrix units, as tf32.
"""
import os
from typing import Optional

import torch

from .launch import device_arch, interpreted
from .versions import triton_version

FIXED_TRITON = (3, 7, 1)


def _hopper_with_broken_triton(device: torch.device) -> bool:
    return device_arch(device) == 90 and triton_version() < FIXED_TRITON


def dot_precision(input_dtype: torch.dtype) -> str:
    """`tl.dot(..., input_precision=)` for an op whose inputs are `input_dtype`. 16-bit inputs: "tf32",
    also on their fp32 copies (tf32 holds every bf16 and fp16 value exactly, so products of inputs stay
    exact; in-kernel fp32 operands such as the states round to tf32's 10-bit mantissa, finer than the
    16-bit operands they would otherwise be cast to). fp32 inputs: exact fp32 products ("ieee", no
    matrix units), unless torch allows tf32 for fp32 matrix products
    (`torch.backends.cuda.matmul.allow_tf32`, e.g. `torch.set_float32_matmul_precision("high")`)."""
    if input_dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def fp32_operands_reason(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """Why 16-bit inputs must reach the kernels as fp32 here, or None when they need not."""
    if dtype == torch.float32 or os.environ.get("NESTED_KERNELS_TRITON_16BIT_DOTS") == "1":
        return None
    if interpreted():
        return "Triton's interpreter computes 16-bit tl.dot wrongly" if dtype == torch.bfloat16 else None
    if _hopper_with_broken_triton(device):
        import triton

        return (f"Triton {triton.__version__} < 3.7.1 miscompiles 16-bit matrix products on Hopper "
                "(fla-org/flash-linear-attention#640); the kernels run their products on fp32 operands")
    return None


def operand_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype of the kernels' product operands for q, k, v of `dtype` on `device`: fp32 where
    16-bit products are unsafe (`fp32_operands_reason`), whether the kernels convert their loads
    (FP32_OPERANDS: linear_memory where `configs.converts_loads`) or the op hands them fp32 copies
    (mlp_memory, and linear_memory's backward elsewhere); else `dtype`."""
    return torch.float32 if fp32_operands_reason(device, dtype) is not None else dtype
