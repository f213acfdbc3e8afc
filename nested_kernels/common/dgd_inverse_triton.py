"""`dgd_inverse` (chunk_state.py) computed by the Triton kernels of
`triton_kernels/common/dgd_inverse.py` from the keys in the flat chunk layout and the gate matrix E,
as a torch.library custom op, forward and backward (one program per chunk and head each), called
directly in plain eager mode (`eager_ops.py`)."""
from typing import Tuple

import torch

from .eager_ops import eager_op


def _fwd(k: torch.Tensor, dgd_write: torch.Tensor, input_dtype: torch.dtype) -> torch.Tensor:
    from ..triton_kernels.common.dgd_inverse import dgd_inverse_fwd

    return dgd_inverse_fwd(k.contiguous(), dgd_write.contiguous(), input_dtype=input_dtype)


def _fwd_fake(k, dgd_write, input_dtype):
    H, NC, _, C = dgd_write.shape
    return dgd_write.new_empty(H, NC, C, C)


def _bwd(k: torch.Tensor, dgd_write: torch.Tensor, inv: torch.Tensor, d_inv: torch.Tensor,
         input_dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    from ..triton_kernels.common.dgd_inverse import dgd_inverse_bwd

    return dgd_inverse_bwd(k.contiguous(), dgd_write.contiguous(), inv.contiguous(), d_inv.contiguous(),
                           input_dtype=input_dtype)


def _bwd_fake(k, dgd_write, inv, d_inv, input_dtype):
    return k.new_empty(k.shape), dgd_write.new_empty(dgd_write.shape)


def _setup_context(ctx, inputs, output):
    k, dgd_write, ctx.input_dtype = inputs
    ctx.save_for_backward(k, dgd_write, output)


def _backward(ctx, d_inv):
    return (*dgd_inverse_triton_bwd(*ctx.saved_tensors, d_inv, ctx.input_dtype), None)


dgd_inverse_triton_bwd, _ = eager_op("nested_kernels::dgd_inverse_triton_bwd", _bwd, fake=_bwd_fake)
dgd_inverse_triton, _ = eager_op("nested_kernels::dgd_inverse_triton", _fwd, fake=_fwd_fake,
                                 setup_context=_setup_context, backward=_backward)
dgd_inverse_triton.__doc__ = """(I + L)^{-1} `[H, NC, C, C]` for keys `[T', H, K]` and E `[H, NC, C+1, C]` (fp32).
`input_dtype`: the op's input dtype (k may be an fp32 copy), which sets the kernels' precision."""
