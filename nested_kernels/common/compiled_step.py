"""Why a compiled decode step (`torch.ops.nested_kernels.*_step`, forward only, state updated in
place) cannot run a call: the `cpp` and `cuda` backends of every `*_step` op judge alike."""
from typing import Callable, Optional, Tuple

import torch

from .._extension import build_info, has_cpp_op
from .validation import decode_state_tensors

Reason = Callable[[dict], Optional[str]]


def decode_state_facts(state) -> dict:
    """What the compiled steps decide on about a decode state: the dtype of its first field, the
    running weights ("state_dtype"), and whether its tensors are all contiguous ("state_contiguous"),
    as they update them in place."""
    tensors = [t for _, t in decode_state_tensors(state)]
    return {"state_dtype": state[0].dtype, "state_contiguous": all(t.is_contiguous() for t in tensors)}


def compiled_step_reasons(op_name: str) -> Tuple[Reason, Reason]:
    """(cpp_unsupported_reason, cuda_unsupported_reason) of the op `nested_kernels::<op_name>`."""

    def unsupported(call: dict, device_type: str) -> Optional[str]:
        if not has_cpp_op(op_name):
            return "the compiled extension nested_kernels._C is not built (see `nested-kernels info`)"
        if call["device"].type != device_type:
            return f"it runs on {device_type} tensors, the inputs are on {call['device']}"
        if call["requires_grad"]:
            return "it is forward-only (decoding); use backend='torch' for training"
        # a call without the state's facts (a capability query) means the state the constructors build
        state_dtype = torch.float64 if call["dtype"] == torch.float64 else torch.float32
        if call.get("state_dtype", state_dtype) != state_dtype:
            return f"it keeps a {state_dtype} state for {call['dtype']} inputs, got a {call['state_dtype']} state"
        if not call.get("state_contiguous", True):
            return "it updates the state in place and needs contiguous state tensors"
        return None

    def cuda(call: dict) -> Optional[str]:
        if has_cpp_op(op_name) and not build_info().get("cuda", False):
            return "nested_kernels._C was built without CUDA (NESTED_KERNELS_BUILD=cpu)"
        return unsupported(call, "cuda")

    return (lambda call: unsupported(call, "cpu")), cuda
