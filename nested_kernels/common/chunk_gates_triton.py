"""`chunk_gates` (chunk_gates.py) computed by the Triton kernels of
`triton_kernels/common/chunk_gates.py`, one program per chunk, as a torch.library custom op with a
fake kernel and a hand-written backward kernel (no PyTorch autograd through cumulative products)
for chunks of 16, 32 and 64 tokens, called directly in plain eager mode (`eager_ops.py`).
`chunk_gates_vjp` is that backward as a function, for kernels' backwards that run inside custom ops."""
from typing import Callable, List, Optional, Tuple

import torch

from .chunk_gates import ChunkGates, chunk_gates
from .eager_ops import eager_op


def _flat(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if x is None else x.reshape(-1, x.shape[-1]).float().contiguous()


def _fwd_impl(lr: torch.Tensor, retention: torch.Tensor, momentum: Optional[torch.Tensor], dgd_write: bool,
              mom_write_last_row: bool) -> List[torch.Tensor]:
    from ..triton_kernels.common.chunk_gates import chunk_gates_fwd

    gates = chunk_gates_fwd(lr, retention, momentum, dgd_write, mom_write_last_row)
    return [lr.new_empty(0) if x is None else x for x in gates]


def _fwd_fake(lr, retention, momentum, dgd_write, mom_write_last_row):
    n, C = lr.shape
    vec, mat = lr.new_empty(n, C + 1), lr.new_empty(n, C + 1, C)
    if momentum is None:
        return [vec, lr.new_empty(0), lr.new_empty(0), lr.new_empty(0), lr.new_empty(0), mat]
    return [vec, torch.empty_like(vec), torch.empty_like(mat), torch.empty_like(vec),
            lr.new_empty(n, C) if mom_write_last_row else torch.empty_like(mat), mat if dgd_write else lr.new_empty(0)]


def _bwd_impl(lr: torch.Tensor, retention: torch.Tensor, momentum: Optional[torch.Tensor], d_decay: torch.Tensor,
              d_carry: Optional[torch.Tensor], d_write: Optional[torch.Tensor], d_mom_decay: Optional[torch.Tensor],
              d_mom_write: Optional[torch.Tensor], d_dgd_write: Optional[torch.Tensor]) -> List[torch.Tensor]:
    from ..triton_kernels.common.chunk_gates import chunk_gates_bwd

    d_lr, d_ret, d_mom = chunk_gates_bwd(lr, retention, momentum, d_decay, d_carry, d_write, d_mom_decay,
                                         d_mom_write, d_dgd_write)
    return [d_lr, d_ret, lr.new_empty(0) if d_mom is None else d_mom]


def _bwd_fake(lr, retention, momentum, *grads):
    return [torch.empty_like(lr), torch.empty_like(retention),
            lr.new_empty(0) if momentum is None else torch.empty_like(momentum)]


def _check_chunk_size(name: str, C: int) -> None:
    from ..triton_kernels.common.chunk_gates import CHUNK_SIZES

    if C not in CHUNK_SIZES:
        raise ValueError(f"{name}: chunks of {CHUNK_SIZES} tokens, got {C} (use chunk_gates)")


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*(x if x is not None else inputs[0].new_empty(0) for x in inputs[:3]))
    ctx.use_momentum = inputs[2] is not None                                  # not numel: no chunks is empty too


def chunk_gates_vjp(lr: torch.Tensor, retention: torch.Tensor, momentum: Optional[torch.Tensor],
                    grads) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """(d_lr, d_retention, d_momentum) of the gates of chunks `[n, C]`, C in CHUNK_SIZES, for the
    cotangents `grads` of the six `ChunkGates` fields (None or empty: zero), by the backward
    kernel. No autograd: callable inside custom ops. A zero cotangent of E (dgd_write) is not
    materialised: the kernel skips E's part. A cotangent of mom_write `[n, C]` is that of N's last
    row alone (`triton_chunk_gates(mom_write_last_row=True)`)."""
    n, C = lr.shape
    _check_chunk_size("chunk_gates_vjp", C)
    d_lr, d_ret, d_mom = _bwd(lr, retention, momentum, *kernel_cotangents(grads, n, C, lr, momentum is not None))
    return d_lr, d_ret, None if momentum is None else d_mom


def kernel_cotangents(grads, n: int, C: int, like: torch.Tensor, momentum: bool) -> List[Optional[torch.Tensor]]:
    """The cotangents of the six `ChunkGates` fields of n chunks (None or empty: zero) as the
    backward kernel takes them: contiguous, zeros materialised where it reads them, but E's left
    None (the kernel then skips E's part), and without `momentum` those of f, G, m, N (it reads
    none of them: two gate matrices of zeros a call, until 2026-11-27)."""
    shapes = [(n, C + 1), (n, C + 1), (n, C + 1, C), (n, C + 1), (n, C + 1, C)]
    present = lambda g: g is not None and g.numel() > 0
    read = [True] + [momentum] * 4
    return [g.contiguous() if present(g) else like.new_zeros(s) if on else None
            for g, s, on in zip(grads, shapes, read)] + [grads[5].contiguous() if present(grads[5]) else None]


def _backward(ctx, grads):
    lr, retention, momentum = ctx.saved_tensors
    return (*chunk_gates_vjp(lr, retention, momentum if ctx.use_momentum else None, grads), None, None)


_bwd, _ = eager_op("nested_kernels::chunk_gates_triton_bwd", _bwd_impl, fake=_bwd_fake)
_fwd, _ = eager_op("nested_kernels::chunk_gates_triton_fwd", _fwd_impl, fake=_fwd_fake,
                   setup_context=_setup_context, backward=_backward)


def triton_chunk_gates(lr: torch.Tensor, retention: torch.Tensor, momentum: Optional[torch.Tensor],
                       dgd_write: bool = True, mom_write_last_row: bool = False) -> ChunkGates:
    """The gates of chunks laid out [..., C] (fp32 out), like `chunk_gates`, for C in CHUNK_SIZES.
    With momentum and not `dgd_write`, E (`dgd_write`, DGD's alone then) is None: not computed.
    With `mom_write_last_row`, `mom_write` is N's last row N[C, :] alone, `[..., C]` (that of the
    last token when the padding tokens after it have η = 0 and μ = 1, as `padded_chunk_gates`'s)."""
    lead, C = lr.shape[:-1], lr.shape[-1]
    _check_chunk_size("triton_chunk_gates", C)
    decay, carry, write, mom_decay, mom_write, e_matrix = _fwd(_flat(lr), _flat(retention), _flat(momentum),
                                                               dgd_write, mom_write_last_row)
    vec = lambda x: x.view(*lead, C + 1)
    mat = lambda x: x.view(*lead, C + 1, C)
    # absent outputs are known from the flags (their empty placeholders are not: no chunks is empty too)
    if momentum is None:
        return ChunkGates(vec(decay), None, mat(e_matrix), None, None, mat(e_matrix))
    mom_write = mom_write.view(*lead, C) if mom_write_last_row else mat(mom_write)
    e_gates = mat(e_matrix) if dgd_write else None
    return ChunkGates(vec(decay), vec(carry), mat(write), vec(mom_decay), mom_write, e_gates)


def chunk_gates_for(chunk_size: int) -> Callable[..., ChunkGates]:
    """The Triton gates where they exist for `chunk_size`, else the PyTorch ones."""
    from ..triton_kernels.common.chunk_gates import CHUNK_SIZES

    return triton_chunk_gates if chunk_size in CHUNK_SIZES else chunk_gates
