"""Why a compiled decode step (`torch.ops.nested_kernels.*_step`, forward only, state updated in
place) cannot run a call: the `cpp` and `cuda` backends of every `*_step` op judge alike."""
from typing import Callable, Optional, Tuple

from .._extension import build_info, has_cpp_op

Reason = Callable[[dict], Optional[str]]


def compiled_step_reasons(op_name: str) -> Tuple[Reason, Reason]:
    """(cpp_unsupported_reason, cuda_unsupported_reason) of the op `nested_kernels::<op_name>`."""

    def unsupported(call: dict, device_type: str) -> Optional[str]:
        if not has_cpp_op(op_name):
            return "the compiled extension nested_kernels._C is not built (see `nested-kernels info`)"
        if call["device"].type != device_type:
            return f"it runs on {device_type} tensors, the inputs are on {call['device']}"
        if call["requires_grad"]:
            return "it is forward-only (decoding); use backend='torch' for training"
        return None

    def cuda(call: dict) -> Optional[str]:
        if has_cpp_op(op_name) and not build_info().get("cuda", False):
            return "nested_kernels._C was built without CUDA (NESTED_KERNELS_BUILD=cpu)"
        return unsupported(call, "cuda")

    return (lambda call: unsupported(call, "cpu")), cuda
