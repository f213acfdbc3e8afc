"""The `triton` backend of `linear_memory`: the chunk kernels of `triton_kernels/linear_memory/`
on the flat chunk layout. The gate matrices and the DGD system's inverse are small per-chunk
tensors built by the shared kernels of `triton_kernels/common/` (custom ops in
`common/chunk_gates_triton.py`, `common/dgd_inverse_triton.py`); the chunk kernels do the
state-sized work. On a CPU the kernels run in Triton's interpreter."""
import functools
from typing import List, Optional, Tuple

import torch

from ..common.chunk_gates import padded_chunk_gates
from ..common.chunk_gates_triton import triton_chunk_gates
from ..common.dgd_inverse_triton import dgd_inverse_triton
from ..common.eager_ops import eager_op
from ..common.flat_chunks import flat_chunks
from ..common.inputs import as_gate
from ..common.kept_states import keeping_chunk_states
from ..common.triton_backend import flat_operands, triton_call_reason
from .state import LinearMemoryState

CHUNK_SIZES = (16, 32, 64)
MAX_DIM = 256


def unsupported_reason(call: dict) -> Optional[str]:
    reason = triton_call_reason(call)
    if reason is not None:
        return reason
    if call["chunk_size"] not in CHUNK_SIZES:
        return f"chunk_size must be one of {CHUNK_SIZES}, got {call['chunk_size']}"
    if max(call["K"], call["V"]) > MAX_DIM:
        return f"K and V up to {MAX_DIM}, got K={call['K']}, V={call['V']}"
    return None


def _empty_if_none(x: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(0) if x is None else x


def _none_if_empty(x: torch.Tensor) -> Optional[torch.Tensor]:
    return None if x.numel() == 0 else x


# The kernels as torch.library custom ops (opaque to torch.compile, with fake kernels), and the
# hand-written backward as their autograd formula; plain eager calls skip the dispatch
# (common/eager_ops.py). Inputs are in the flat chunk layout; the gate matrices and the DGD
# inverse are inputs too, so autograd carries their gradients on to lr, retention, momentum and k
# through the torch gate algebra. Absent optional results are empty.
# With `keep_states` the forward also returns the chunk-start states and the residuals (h, s, res,
# pseudo: non-differentiable, saved for the backward, which then does not recompute them).


def _fwd_impl(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, carry: Optional[torch.Tensor],
    write: torch.Tensor, dgd_write: Optional[torch.Tensor], mom_decay_last: Optional[torch.Tensor],
    mom_write_last: Optional[torch.Tensor], dgd_inv: Optional[torch.Tensor], h0: Optional[torch.Tensor],
    s0: Optional[torch.Tensor], chunk_offsets: torch.Tensor, last_rows: torch.Tensor, scale: float, dgd: bool,
    out_dtype: torch.dtype, keep_states: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from ..triton_kernels.linear_memory.chunk_fwd import linear_memory_fwd
    from ..triton_kernels.utils.operand_precision import operand_dtype

    gates = (decay, carry, write, dgd_write, mom_decay_last, mom_write_last)
    # chunk states read by the output kernel alone are stored in its products' operand dtype (the
    # same output, half the bytes for 16-bit operands); kept for the backward, in fp32
    state_dtype = torch.float32 if keep_states else operand_dtype(q.device, q.dtype)
    o, *states, ht, st = linear_memory_fwd(q, k, v, gates, dgd_inv, chunk_offsets, last_rows, h0, s0, scale=scale,
                                           dgd=dgd, output_final_state=True, out_dtype=out_dtype,
                                           state_dtype=state_dtype, residuals=keep_states)
    kept = [_empty_if_none(x, ht) if keep_states else ht.new_empty(0) for x in states]
    return (o, ht, _empty_if_none(st, ht), *kept)


def _fwd_fake(q, k, v, decay, carry, write, dgd_write, mom_decay_last, mom_write_last, dgd_inv, h0, s0,
              chunk_offsets, last_rows, scale, dgd, out_dtype, keep_states):
    (Tp, H, K), V, NC = k.shape, v.shape[2], decay.shape[1]
    ht = k.new_empty(chunk_offsets.shape[0] - 1, H, K, V, dtype=torch.float32)
    st = ht.new_empty(ht.shape if carry is not None else (0,))

    def kept(shape, present=True):
        return ht.new_empty(shape if keep_states and present else (0,))
    states = (kept((H, NC, K, V)), kept((H, NC, K, V), carry is not None), kept((Tp, H, V)), kept((Tp, H, V), dgd))
    return (v.new_empty(v.shape, dtype=out_dtype), ht, st, *states)


def _bwd_impl(
    do: torch.Tensor, dht: Optional[torch.Tensor], dst: Optional[torch.Tensor], q: torch.Tensor, k: torch.Tensor,
    v: torch.Tensor, decay: torch.Tensor, carry: Optional[torch.Tensor], write: torch.Tensor,
    dgd_write: Optional[torch.Tensor],
    mom_decay_last: Optional[torch.Tensor], mom_write_last: Optional[torch.Tensor], dgd_inv: Optional[torch.Tensor],
    h0: Optional[torch.Tensor], s0: Optional[torch.Tensor], chunk_offsets: torch.Tensor, last_rows: torch.Tensor,
    scale: float, dgd: bool, h: Optional[torch.Tensor], s: Optional[torch.Tensor], res: Optional[torch.Tensor],
    pseudo: Optional[torch.Tensor],
) -> List[torch.Tensor]:
    from ..triton_kernels.linear_memory.chunk_bwd import linear_memory_bwd
    from ..triton_kernels.linear_memory.configs import needs_fp32_copies

    gates = (decay, carry, write, dgd_write, mom_decay_last, mom_write_last)
    kept = None if h is None else (h, s, res, pseudo)                         # None: the backward recomputes them
    contiguous = lambda x: None if x is None else x.contiguous()              # e.g. the expanded ones of .sum()
    dtypes = q.dtype, k.dtype, v.dtype
    if needs_fp32_copies(k, write.shape[-1], backward=True):                  # the forward converted its loads
        q, k, v = q.float(), k.float(), v.float()
    dq, dk, dv, d_gates, d_inv, dh0, ds0 = linear_memory_bwd(
        q, k, v, do.contiguous(), contiguous(dht), contiguous(dst), gates, dgd_inv, chunk_offsets, last_rows, h0, s0,
        kept, scale=scale, dgd=dgd, grad_dtypes=dtypes)
    grads = [g.to(dtype) for g, dtype in zip((dq, dk, dv), dtypes)] + [*d_gates, d_inv, dh0, ds0]
    return [_empty_if_none(g, dh0) for g in grads]                              # fp32 placeholders


def _bwd_fake(do, dht, dst, q, k, v, decay, carry, write, dgd_write, mom_decay_last, mom_write_last, dgd_inv, h0, s0,
      chunk_offsets, last_rows, scale, dgd, h, s, res, pseudo):
    N, H, K, V = chunk_offsets.shape[0] - 1, k.shape[1], k.shape[2], v.shape[2]
    like = [q, k, v, decay, carry, write, dgd_write if dgd else None, mom_decay_last, mom_write_last, dgd_inv]
    grads = [q.new_empty(0, dtype=torch.float32) if x is None else torch.empty_like(x)   # E has none without DGD
             for x in like]
    state = q.new_empty(N, H, K, V, dtype=torch.float32)
    return grads + [state, torch.empty_like(state) if carry is not None else state.new_empty(0)]


def _setup_context(ctx, inputs, output):
    *tensors, scale, dgd, out_dtype, _ = inputs
    kept = output[3:]                                                          # empty unless keep_states
    ctx.mark_non_differentiable(*kept)
    ctx.set_materialize_grads(False)        # a loss without the final state: dht None, not zeros to read
    ctx.save_for_backward(*tensors, *kept)
    ctx.scale, ctx.dgd, ctx.out_dtype = scale, dgd, out_dtype


def _backward(ctx, do, dht, dst, *_kept):
    *saved, h, s, res, pseudo = ctx.saved_tensors
    q, k, v, decay, carry, write, dgd_write, mom_decay_last, mom_write_last, dgd_inv, h0, s0, offsets, rows = saved
    kept = (None,) * 4 if h.numel() == 0 else [_none_if_empty(x) for x in (h, s, res, pseudo)]
    do = torch.zeros_like(v, dtype=ctx.out_dtype) if do is None else do
    if carry is None:
        dst = None
    elif dht is None and dst is not None:                                     # the kernel reads both or neither
        dht = torch.zeros_like(dst)
    elif dst is None and dht is not None:
        dst = torch.zeros_like(dht)
    grads = _triton_bwd(
        do, dht, dst, q, k, v, decay, carry, write,
        dgd_write, mom_decay_last, mom_write_last, dgd_inv, h0, s0, offsets, rows, ctx.scale, ctx.dgd, *kept)
    *grads, dh0, ds0 = [_none_if_empty(g) for g in grads]
    return (*grads, None if h0 is None else dh0, None if s0 is None else ds0, None, None, None, None, None, None)


_triton_bwd, _ = eager_op("nested_kernels::linear_memory_triton_bwd", _bwd_impl, fake=_bwd_fake)
_triton_fwd, _ = eager_op("nested_kernels::linear_memory_triton_fwd", _fwd_impl, fake=_fwd_fake,
                          setup_context=_setup_context, backward=_backward)


def triton_op_args(q, k, v, lr, retention, momentum, *, dgd, chunk_size, scale, initial_state, cu_seqlens):
    """The layout and the arguments of `nested_kernels::linear_memory_triton_fwd` for one call."""
    B, T, H, K = q.shape
    f32 = torch.float32
    layout = flat_chunks(B, T, chunk_size, cu_seqlens, q.device)
    qf, kf, vf = flat_operands(layout, q, k, v, "linear_memory", fp32_copies=False)      # the forward converts

    def gate(x, pad):
        return layout.to_chunk_major(layout.flatten(as_gate(x, q, f32), pad))

    # E, the DGD weights, only with DGD (with momentum it is not the write G): no [.., C+1, C] matrix to
    # write and read, nor a zero gradient to fill, without it. Of m and N the kernels read the last
    # token's row alone, which is row C: the padding after it has η = 0, μ = 1 (padded_chunk_gates)
    gates_of = functools.partial(triton_chunk_gates, dgd_write=dgd, mom_write_last_row=True)
    g = padded_chunk_gates(lr, retention, momentum, gate, gates_of)
    dgd_inv = None
    if dgd:
        dgd_inv = dgd_inverse_triton(kf, g.dgd_write, k.dtype)               # one program per chunk and head
    use_momentum = momentum is not None
    gates = (
        g.decay.contiguous(),
        g.carry.contiguous() if use_momentum else None,
        g.write.contiguous(),
        None if g.dgd_write is None else g.dgd_write.contiguous(),
        g.mom_decay[..., chunk_size].contiguous() if use_momentum else None,  # m[last] = m[C]
        g.mom_write if use_momentum else None,                                # N[last, :] = N[C, :]
    )
    h0 = s0 = None
    if initial_state is not None:
        h0 = initial_state.memory.to(f32).contiguous()
        if use_momentum:
            s0 = torch.zeros_like(h0) if initial_state.momentum is None else initial_state.momentum.to(f32).contiguous()
    args = (qf, kf, vf, *gates, dgd_inv, h0, s0, layout.chunk_offsets, layout.last_rows, float(scale), dgd, v.dtype,
            keeping_chunk_states())
    return layout, args


def linear_memory_triton(
    q, k, v, lr, retention, momentum=None, *, dgd=False, chunk_size=64, scale=1.0,
    initial_state: Optional[LinearMemoryState] = None, output_final_state=False, cu_seqlens=None,
):
    layout, args = triton_op_args(q, k, v, lr, retention, momentum, dgd=dgd, chunk_size=chunk_size, scale=scale,
                                  initial_state=initial_state, cu_seqlens=cu_seqlens)
    o, ht, st, *_ = _triton_fwd(*args)
    final_state = LinearMemoryState(ht, st if momentum is not None else None) if output_final_state else None
    return layout.unflatten(o, *q.shape[:2]), final_state
