"""The `triton` backend of `linear_memory`: the chunk kernels of `triton_kernels/linear_memory/`
on the flat chunk layout, as ONE custom op per direction: the forward op cuts q, k, v into the
layout, builds the gate matrices (from the gates as it takes them) and (with DGD) each chunk's
inverse with the shared kernels of `triton_kernels/common/`, and runs the chunk kernels; the
backward op runs their backward kernels and those of the gates and of the DGD inverse. One
autograd node per call: on the H100 the forward + backward at D64 was host-bound
(benchmarks/results/h100-2026-11-27.md), and the separate gate and DGD-inverse ops with the
layout's views between them made 34 autograd nodes per call (36 with DGD); now 8 with momentum,
six of them the inputs' AccumulateGrad. On a CPU the kernels run in Triton's interpreter."""
from typing import List, Optional, Tuple

import torch

from ..common.eager_ops import eager_op
from ..common.flat_chunks import FlatChunks, flat_chunks
from ..common.inputs import as_gate
from ..common.kept_states import keeping_chunk_states
from ..common.triton_backend import triton_call_reason, warn_fp32_operands
from .state import LinearMemoryState
from .triton_gates import StoredGates, gate_grads, gate_matrices, kernel_gates

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


def _flat_operands(layout: FlatChunks, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """q, k, v in the flat layout, contiguous, in their dtype: where 16-bit dot operands are not safe
    the kernels convert their loads (FP32_OPERANDS), and the call has warned (`triton_op_args`)."""
    return tuple(layout.flatten(x).contiguous() for x in (q, k, v))


def _empty_if_none(x: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(0) if x is None else x


def _residuals_present(mom: bool, dgd: bool, keep: bool) -> Tuple[bool, ...]:
    """Which of the forward op's residuals exist (the others are empty): the six StoredGates (E
    without momentum, as the write, or with DGD), the DGD inverse, and the kept chunk-start states
    h, s and R, W."""
    return (True, mom, mom, dgd or not mom, mom, mom, dgd, keep, keep and mom, keep, keep and dgd)


# The ops (torch.library custom ops with fake kernels; plain eager calls skip the dispatch,
# common/eager_ops.py). The forward op takes q, k, v `[B, T, H, ·]`, the gates `[B, T, H]` fp32
# contiguous and the layout's tensors, and returns o in the flat layout, the final states and the
# residuals its backward reads (non-differentiable; absent ones empty): the gate matrices, the DGD
# inverse and, with `keep_states`, the chunk-start states and R, W (the backward then does not
# recompute them). The backward op returns dq, dk, dv in the flat layout, the gates' gradients
# `[B, T, H]` and dh0, ds0; the autograd formula maps dq, dk, dv back to the inputs' layout.


def _fwd_impl(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lr: torch.Tensor, retention: torch.Tensor,
    momentum: Optional[torch.Tensor], h0: Optional[torch.Tensor], s0: Optional[torch.Tensor],
    index: Optional[torch.Tensor], slots: Optional[torch.Tensor], chunk_offsets: torch.Tensor,
    last_rows: torch.Tensor, chunk_size: int, scale: float, dgd: bool, keep_states: bool,
) -> List[torch.Tensor]:
    from ..triton_kernels.common.dgd_inverse import dgd_inverse_fwd
    from ..triton_kernels.linear_memory.chunk_fwd import linear_memory_fwd
    from ..triton_kernels.utils.operand_precision import operand_dtype

    layout = FlatChunks(chunk_size, index, slots, chunk_offsets, last_rows)
    qf, kf, vf = _flat_operands(layout, q, k, v)
    gates = gate_matrices(layout, lr, retention, momentum, dgd)
    kernel_gate_list = kernel_gates(gates, dgd)
    dgd_inv = kk_write = None
    if dgd:                                                                   # one program per chunk and head
        dgd_inv, kk_write = dgd_inverse_fwd(kf, gates.e_matrix, write=kernel_gate_list[2])
    # chunk states read by the output kernel alone are stored in its products' operand dtype (the
    # same output, half the bytes for 16-bit operands); kept for the backward, in fp32
    state_dtype = torch.float32 if keep_states else operand_dtype(q.device, q.dtype)
    o, *states, ht, st = linear_memory_fwd(qf, kf, vf, kernel_gate_list, dgd_inv, chunk_offsets, last_rows, h0, s0,
                                           scale=scale, dgd=dgd, output_final_state=True, out_dtype=v.dtype,
                                           kk_write=kk_write, state_dtype=state_dtype, residuals=keep_states)
    kept = states if keep_states else (None,) * 4
    return [o, ht, *(_empty_if_none(x, ht) for x in (st, *gates, dgd_inv, *kept))]


def _fwd_fake(q, k, v, lr, retention, momentum, h0, s0, index, slots, chunk_offsets, last_rows, chunk_size, scale,
              dgd, keep_states):
    B, T, H, K = q.shape
    V, NC, N, C = v.shape[-1], last_rows.shape[0], chunk_offsets.shape[0] - 1, chunk_size
    mom = momentum is not None

    def f32(*shape, present=True):
        return q.new_empty(shape if present else (0,), dtype=torch.float32)
    shapes = [(H, NC, C + 1)] * 2 + [(H, NC, C + 1, C)] * 2 + [(H, NC), (H, NC, C), (H, NC, C, C),
              (H, NC, K, V), (H, NC, K, V), (NC * C, H, V), (NC * C, H, V)]
    residuals = [f32(*shape, present=p) for shape, p in zip(shapes, _residuals_present(mom, dgd, keep_states))]
    return [v.new_empty(NC * C, H, V), f32(N, H, K, V), f32(N, H, K, V, present=mom), *residuals]


def _bwd_impl(
    do: torch.Tensor, dht: Optional[torch.Tensor], dst: Optional[torch.Tensor], q: torch.Tensor, k: torch.Tensor,
    v: torch.Tensor, h0: Optional[torch.Tensor], s0: Optional[torch.Tensor], index: Optional[torch.Tensor],
    slots: Optional[torch.Tensor], chunk_offsets: torch.Tensor, last_rows: torch.Tensor, lr: torch.Tensor,
    retention: torch.Tensor, momentum: Optional[torch.Tensor], decay: torch.Tensor,
    carry: Optional[torch.Tensor], write: Optional[torch.Tensor], e_matrix: Optional[torch.Tensor],
    mom_decay_last: Optional[torch.Tensor], mom_write_last: Optional[torch.Tensor], dgd_inv: Optional[torch.Tensor],
    h: Optional[torch.Tensor], s: Optional[torch.Tensor], res: Optional[torch.Tensor], pseudo: Optional[torch.Tensor],
    chunk_size: int, scale: float, dgd: bool,
) -> List[torch.Tensor]:
    from ..triton_kernels.common.dgd_inverse import dgd_inverse_bwd
    from ..triton_kernels.linear_memory.chunk_bwd import linear_memory_bwd
    from ..triton_kernels.linear_memory.configs import needs_fp32_copies

    layout = FlatChunks(chunk_size, index, slots, chunk_offsets, last_rows)
    qf, kf, vf = _flat_operands(layout, q, k, v)
    gates = StoredGates(decay, carry, write, e_matrix, mom_decay_last, mom_write_last)
    kept = None if h is None else (h, s, res, pseudo)                         # None: the backward recomputes them
    contiguous = lambda x: None if x is None else x.contiguous()              # e.g. the expanded ones of .sum()
    operands = (qf, kf, vf)
    if needs_fp32_copies(kf, chunk_size, backward=True):                      # the forward converted its loads
        operands = tuple(x.float() for x in operands)
    dtypes = q.dtype, k.dtype, v.dtype
    dq, dk, dv, d_gates, d_inv, dh0, ds0 = linear_memory_bwd(
        *operands, do.contiguous(), contiguous(dht), contiguous(dst), kernel_gates(gates, dgd), dgd_inv, chunk_offsets,
        last_rows, h0, s0, kept, scale=scale, dgd=dgd, grad_dtypes=dtypes)
    d_e_inverse = None
    if dgd:                                                                   # through the inverse: dK (all of it) and dE
        dk, d_e_inverse = dgd_inverse_bwd(kf, e_matrix, dgd_inv, d_inv, input_dtype=k.dtype, dk_partial=dk)
    d_gates = gate_grads(layout, lr, retention, momentum, d_gates, d_e_inverse)
    grads = [g.to(dtype) for g, dtype in zip((dq, dk, dv), dtypes)] + [*d_gates, dh0, ds0]
    return [_empty_if_none(g, dh0) for g in grads]                            # fp32 placeholders


def _bwd_fake(do, dht, dst, q, k, v, h0, s0, index, slots, chunk_offsets, last_rows, lr, retention, momentum, decay,
              carry, write, e_matrix, mom_decay_last, mom_write_last, dgd_inv, h, s, res, pseudo, chunk_size, scale,
              dgd):
    N, (Tp, H, V), K = chunk_offsets.shape[0] - 1, do.shape, k.shape[-1]
    mom = momentum is not None
    state = lr.new_empty(N, H, K, V)
    return [q.new_empty(Tp, H, K), k.new_empty(Tp, H, K), v.new_empty(Tp, H, V), torch.empty_like(lr),
            torch.empty_like(retention), torch.empty_like(momentum) if mom else lr.new_empty(0),
            state, torch.empty_like(state) if mom else lr.new_empty(0)]


def _setup_context(ctx, inputs, output):
    q, k, v, lr, retention, momentum, h0, s0, index, slots, chunk_offsets, last_rows, *flags = inputs
    ctx.chunk_size, ctx.scale, ctx.dgd, keep_states = flags
    ctx.use_momentum, ctx.keep_states = momentum is not None, keep_states
    residuals = output[3:]
    ctx.mark_non_differentiable(*residuals)
    ctx.set_materialize_grads(False)        # a loss without the final state: dht None, not zeros to read
    ctx.save_for_backward(q, k, v, lr, retention, momentum, h0, s0, index, slots, chunk_offsets, last_rows, *residuals)


def _backward(ctx, grads):
    do, dht, dst = grads[:3]
    q, k, v, lr, retention, momentum, h0, s0, index, slots, chunk_offsets, last_rows, *residuals = ctx.saved_tensors
    mom, dgd, keep = ctx.use_momentum, ctx.dgd, ctx.keep_states
    residuals = [x if present else None for x, present in zip(residuals, _residuals_present(mom, dgd, keep))]
    B, T, H = q.shape[:3]
    Tp = last_rows.shape[0] * ctx.chunk_size                                  # tokens of the flat layout
    if do is None:
        do = v.new_zeros(Tp, H, v.shape[-1])
    if not mom:
        dst = None
    elif dht is None and dst is not None:                                     # the kernel reads both or neither
        dht = torch.zeros_like(dst)
    elif dst is None and dht is not None:
        dst = torch.zeros_like(dht)
    dq, dk, dv, d_lr, d_ret, d_mom, dh0, ds0 = _triton_bwd(
        do, dht, dst, q, k, v, h0, s0, index, slots, chunk_offsets, last_rows, lr, retention, momentum, *residuals,
        ctx.chunk_size, ctx.scale, dgd)
    layout = FlatChunks(ctx.chunk_size, index, slots, chunk_offsets, last_rows)
    tokens = lambda x: layout.unflatten(x, B, T)                              # [T', H, ·] -> [B, T, H, ·]
    return (tokens(dq), tokens(dk), tokens(dv), d_lr, d_ret, d_mom if mom else None,
            dh0 if h0 is not None else None, ds0 if s0 is not None else None) + (None,) * 8


_triton_bwd, _ = eager_op("nested_kernels::linear_memory_triton_bwd", _bwd_impl, fake=_bwd_fake)
_triton_fwd, _ = eager_op("nested_kernels::linear_memory_triton_fwd", _fwd_impl, fake=_fwd_fake,
                          setup_context=_setup_context, backward=_backward)


def triton_op_args(q, k, v, lr, retention, momentum, *, dgd, chunk_size, scale, initial_state, cu_seqlens):
    """The layout and the arguments of `nested_kernels::linear_memory_triton_fwd` for one call."""
    B, T = q.shape[:2]
    f32 = torch.float32
    warn_fp32_operands(q, "linear_memory", stacklevel=3)                     # at linear_memory's caller
    layout = flat_chunks(B, T, chunk_size, cu_seqlens, q.device)
    gates = [None if g is None else as_gate(g, q, f32).contiguous() for g in (lr, retention, momentum)]  # read as laid out
    h0 = s0 = None
    if initial_state is not None:
        h0 = initial_state.memory.to(f32).contiguous()
        if momentum is not None:
            s0 = torch.zeros_like(h0) if initial_state.momentum is None else initial_state.momentum.to(f32).contiguous()
    args = (q, k, v, *gates, h0, s0, layout.index, layout.slots, layout.chunk_offsets, layout.last_rows, chunk_size,
            float(scale), dgd, keeping_chunk_states())
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
