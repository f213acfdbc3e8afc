"""What every op's `triton` backend checks first, and when `backend="auto"` may pick it."""
import importlib.util
from typing import Optional

import torch

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def triton_call_reason(call: dict) -> Optional[str]:
    """Why the Triton kernels cannot run `call` at all (None when they can): not installed, a device
    other than CUDA (or the CPU, interpreted), or inputs other than fp32/bf16/fp16."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if call["device"].type not in ("cpu", "cuda"):
        return f"it runs on CUDA devices (or interpreted on the CPU), the inputs are on {call['device']}"
    if call["dtype"] not in DTYPES:
        return f"it takes fp32/bf16/fp16 inputs, got {call['dtype']} (use backend='torch' or 'reference')"
    return None


def auto_reason(call: dict) -> Optional[str]:
    """`backend="auto"` takes the Triton kernels on a GPU only: interpreted on a CPU they are slow."""
    return None if call["device"].type == "cuda" else "interpreted on the CPU"
