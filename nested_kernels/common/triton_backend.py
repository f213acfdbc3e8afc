"""What every op's `triton` backend checks first, and when `backend="auto"` may pick it."""
import importlib.util
import warnings
from typing import Optional, Tuple

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


def warn_fp32_operands(q: torch.Tensor, op: str, stacklevel: int) -> Optional[str]:
    """Why 16-bit dot operands are not safe for q's device and dtype
    (`triton_kernels/utils/operand_precision.py`), or None where they are; warned as a RuntimeWarning
    naming `op` (not in the interpreter), `stacklevel` counted from the caller."""
    from ..triton_kernels.utils.launch import interpreted
    from ..triton_kernels.utils.operand_precision import fp32_operands_reason

    reason = fp32_operands_reason(q.device, q.dtype)
    if reason is not None and not interpreted():
        warnings.warn(f"{op}(backend='triton'): {reason}", RuntimeWarning, stacklevel=stacklevel + 1)
    return reason


def flat_operands(layout, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, op: str
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v in the flat chunk layout (`common/flat_chunks.py`), contiguous; as fp32 copies where
    16-bit dot operands are not safe, with a warning naming `op` (`warn_fp32_operands`). The
    products stay tf32, the precision of the op's input dtype: fp32 holds 16-bit values exactly.
    (`linear_memory`'s kernels convert their loads instead: no copy, half the bytes read.)"""
    qf, kf, vf = (layout.flatten(x).contiguous() for x in (q, k, v))
    if warn_fp32_operands(q, op, stacklevel=4) is not None:
        qf, kf, vf = qf.float(), kf.float(), vf.float()
    return qf, kf, vf
