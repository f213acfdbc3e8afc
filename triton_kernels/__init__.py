"""Triton kernels of nested_kernels, installed as `nested_kernels.triton_kernels` (never as a
top-level package).

On a machine without a CUDA device the kernels run in Triton's interpreter, which must be
chosen before Triton is first imported: importing this package then sets TRITON_INTERPRET=1
(unless TRITON_INTERPRET is already set, or NESTED_KERNELS_TRITON_INTERPRET=0).
"""
import os
import sys


def _choose_interpreter() -> None:
    if "TRITON_INTERPRET" in os.environ or os.environ.get("NESTED_KERNELS_TRITON_INTERPRET") == "0":
        return
    import torch

    if not torch.cuda.is_available() and "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"


_choose_interpreter()
