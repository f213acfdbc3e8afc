"""The `triton` backend of `mlp_memory`: the forward kernels of `triton_kernels/mlp_memory/` on the
flat chunk layout, and an exact backward that walks the chunks in reverse, each one by the
hand-written Triton chunk backward from its stored start state (`chunk_backward.py`); both as
`torch.library` custom ops, called directly in plain eager mode (`common/eager_ops.py`).

The op takes the raw gates (flat, padded with η = 0, α = μ = 1) and builds the gate matrices and
the DGD inverses inside; its backward returns the gradients of the raw gates directly. It returns
the states of every chunk boundary `[NC + N, H, ·, ·]` (slots: see `triton_kernels/mlp_memory/
chunk_fwd.py`), the final states among them: what the backward starts its chunks from."""
from typing import List, Optional, Tuple

import torch

from ..common.chunk_gates import chunk_gates
from ..common.chunk_gates_triton import chunk_gates_for
from ..common.chunk_state import dgd_inverse
from ..common.dgd_inverse_triton import dgd_inverse_triton
from ..common.eager_ops import eager_op
from ..common.flat_chunks import flat_chunks
from ..common.inputs import as_gate
from ..common.triton_backend import flat_operands, triton_call_reason
from .chunk_backward import ChunkOptions, chunk_backward
from .state import MLPMemoryState

CHUNK_SIZES = (8, 16, 32, 64)
MAX_KV, MAX_DH = 128, 512


def unsupported_reason(call: dict) -> Optional[str]:
    reason = triton_call_reason(call)
    if reason is not None:
        return reason
    if call["chunk_size"] not in CHUNK_SIZES:
        return f"chunk_size must be one of {CHUNK_SIZES}, got {call['chunk_size']}"
    if max(call["K"], call["V"]) > MAX_KV or call["Dh"] > MAX_DH:
        return f"K and V up to {MAX_KV}, Dh up to {MAX_DH}, got K={call['K']}, V={call['V']}, Dh={call['Dh']}"
    return None


def _none_if_empty(x: torch.Tensor) -> Optional[torch.Tensor]:
    return None if x.numel() == 0 else x


def _chunk_major(x: torch.Tensor, C: int) -> torch.Tensor:
    """Flat gates [T', H] -> [H, NC, C]."""
    return x.t().unflatten(1, (-1, C))


def _last_row(x: torch.Tensor, last_rows: torch.Tensor) -> torch.Tensor:
    """x[h, c, last_rows[c]] for gate tensors laid out [H, NC, C+1, ...]."""
    chunks = torch.arange(last_rows.numel(), device=x.device)
    return x[:, chunks, last_rows.long()].contiguous()


def _forward(q, k, v, lr, retention, momentum, w1, w2, s1, s2, chunk_offsets, last_rows, activation, residual, dgd,
             self_target, read, chunk_size, out_dtype):
    from ..triton_kernels.common.chunk_products import chunk_products
    from ..triton_kernels.mlp_memory.chunk_fwd import mlp_memory_fwd
    from ..triton_kernels.utils.operand_precision import dot_precision

    C = chunk_size
    empty = k.shape[0] == 0                                                   # no chunks: the kernels only copy states
    gates_fn = chunk_gates if empty else chunk_gates_for(C)
    g = gates_fn(*(None if x is None else _chunk_major(x, C) for x in (lr, retention, momentum)))
    use_momentum = momentum is not None
    gates = (
        g.decay.contiguous(), g.carry.contiguous() if use_momentum else None, g.write.contiguous(),
        g.dgd_write.contiguous(),
        _last_row(g.mom_decay, last_rows) if use_momentum else None,
        _last_row(g.mom_write, last_rows) if use_momentum else None,
    )
    dgd_inv = kk_write = None
    if dgd and C >= 16 and not empty:
        _, _, kk_write = chunk_products(q, k, gates[2], gates[3], reads=False, dgd=True,
                                        precision=dot_precision(out_dtype))
        dgd_inv = dgd_inverse_triton(k, g.dgd_write, out_dtype).contiguous()
    elif dgd:                                                                 # the kernels take 16-row products (tl.dot)
        H, NC = g.decay.shape[:2]
        kc = k.float().unflatten(0, (NC, C)).permute(2, 0, 1, 3)            # [H, NC, C, K]
        kk = kc @ kc.transpose(-1, -2)
        kk_write = (kk * g.write[:, :, :C]).contiguous()
        dgd_inv = dgd_inverse(g, kk).contiguous()
    return mlp_memory_fwd(q, k, v, gates, dgd_inv, kk_write, chunk_offsets, last_rows, w1, w2, s1, s2,
                          activation=activation, residual=residual, dgd=dgd, self_target=self_target, read=read,
                          out_dtype=out_dtype)


def _fwd_impl(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lr: torch.Tensor, retention: torch.Tensor,
    momentum: Optional[torch.Tensor], w1: torch.Tensor, w2: torch.Tensor, s1: Optional[torch.Tensor],
    s2: Optional[torch.Tensor], chunk_offsets: torch.Tensor, last_rows: torch.Tensor, activation: str, residual: bool,
    dgd: bool, self_target: bool, read: str, chunk_size: int, out_dtype: torch.dtype,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """o `[T', H, V]` and the states h1, h2, hs1, hs2 `[NC + N, H, ·, ·]` (the momenta empty without momentum)."""
    o, h1, h2, hs1, hs2 = _forward(q, k, v, lr, retention, momentum, w1, w2, s1, s2, chunk_offsets, last_rows,
                                   activation, residual, dgd, self_target, read, chunk_size, out_dtype)
    return o, h1, h2, h1.new_empty(0) if hs1 is None else hs1, h1.new_empty(0) if hs2 is None else hs2


def _fwd_fake(q, k, v, lr, retention, momentum, w1, w2, s1, s2, chunk_offsets, last_rows, activation, residual,
              dgd, self_target, read, chunk_size, out_dtype):
    H, K, V, DH = k.shape[1], k.shape[2], v.shape[2], w1.shape[-1]
    NS = k.shape[0] // chunk_size + chunk_offsets.shape[0] - 1
    h1 = k.new_empty(NS, H, K, DH, dtype=torch.float32)
    h2 = k.new_empty(NS, H, DH, V, dtype=torch.float32)
    use_momentum = momentum is not None
    return (v.new_empty(v.shape, dtype=out_dtype), h1, h2,
            torch.empty_like(h1) if use_momentum else h1.new_empty(0),
            torch.empty_like(h2) if use_momentum else h1.new_empty(0))


def _bwd_impl(
    do: torch.Tensor, dh1: torch.Tensor, dh2: torch.Tensor, dhs1: torch.Tensor, dhs2: torch.Tensor,
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lr: torch.Tensor, retention: torch.Tensor,
    momentum: Optional[torch.Tensor], h1: torch.Tensor, h2: torch.Tensor, hs1: torch.Tensor, hs2: torch.Tensor,
    chunk_offsets: torch.Tensor, last_rows: torch.Tensor, shared: bool, activation: str, residual: bool, dgd: bool,
    self_target: bool, read: str, chunk_size: int,
) -> List[torch.Tensor]:
    """The reverse recurrence over chunks: chunk j of every sequence that has one, last to first,
    each by `chunk_backward` from its start state with the adjoint of its end state carried from
    chunk j + 1 plus the incoming gradient of that state slot. Returns dq, dk, dv, dlr, dret, dmom,
    dw1, dw2, ds1, ds2 (dw1, dw2 summed over the sequences when `shared`; absent ones empty)."""
    C = chunk_size
    Tp, H = q.shape[:2]
    NC = Tp // C
    use_momentum = momentum is not None
    options = ChunkOptions(activation, residual, dgd, self_target, read)
    offsets = chunk_offsets.long()
    counts = offsets[1:] - offsets[:-1]
    N = counts.numel()
    seqs = torch.arange(N, device=q.device)
    final_slots = offsets[1:] + seqs
    chunked = lambda x: x.unflatten(0, (NC, C))                              # [T', ...] -> [NC, C, ...]
    inputs = [chunked(x) for x in (q, k, v, lr, retention)] + [None if momentum is None else chunked(momentum)]
    states = (h1, h2, hs1 if use_momentum else None, hs2 if use_momentum else None)
    d_slots = (dh1, dh2, dhs1 if use_momentum else None, dhs2 if use_momentum else None)
    adjoint = [None if d is None else d[final_slots].clone() for d in d_slots]
    grads = [None if x is None else torch.zeros(x.shape, dtype=torch.float32, device=x.device) for x in inputs]
    do_c = chunked(do)
    for j in reversed(range(int(counts.max().item()) if N else 0)):
        active = seqs[counts > j]
        chunks = offsets[active] + j
        slots = chunks + active
        outs = chunk_backward(
            *(None if x is None else x[chunks] for x in inputs), *(None if s is None else s[slots] for s in states),
            do_c[chunks], *(None if a is None else a[active] for a in adjoint),
            lengths=last_rows[chunks], options=options)
        for g, d in zip(grads, outs[:6]):
            if g is not None:
                g[chunks] = d
        for a, d, d_slot in zip(adjoint, outs[6:], d_slots):
            if a is not None:
                a[active] = d + d_slot[slots]                                # the slot's own incoming gradient
    dw1, dw2, ds1, ds2 = adjoint
    if shared:
        dw1, dw2 = dw1.sum(0, keepdim=True), dw2.sum(0, keepdim=True)
    out = [g.flatten(0, 1).to(x.dtype) for g, x in zip(grads[:3], (q, k, v))] + [
        None if g is None else g.flatten(0, 1) for g in grads[3:]] + [dw1, dw2, ds1, ds2]
    return [q.new_empty(0) if x is None else x for x in out]


def _bwd_fake(do, dh1, dh2, dhs1, dhs2, q, k, v, lr, retention, momentum, h1, h2, hs1, hs2, chunk_offsets,
              last_rows, shared, activation, residual, dgd, self_target, read, chunk_size):
    N = chunk_offsets.shape[0] - 1
    use_momentum = momentum is not None
    lead = 1 if shared else N
    return [torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(lr),
            torch.empty_like(retention), torch.empty_like(momentum) if use_momentum else q.new_empty(0),
            h1.new_empty(lead, *h1.shape[1:]), h2.new_empty(lead, *h2.shape[1:]),
            h1.new_empty(N, *h1.shape[1:]) if use_momentum else q.new_empty(0),
            h2.new_empty(N, *h2.shape[1:]) if use_momentum else q.new_empty(0)]


def _setup_context(ctx, inputs, output):
    q, k, v, lr, retention, momentum, w1, w2, s1, s2, chunk_offsets, last_rows, *options = inputs
    _, h1, h2, hs1, hs2 = output
    ctx.save_for_backward(q, k, v, lr, retention, momentum, h1, h2, hs1, hs2, chunk_offsets, last_rows)
    ctx.options, ctx.out_dtype = options[:-1], options[-1]
    ctx.shared = w1.shape[0] == 1 and chunk_offsets.shape[0] - 1 > 1
    ctx.has_s = (s1 is not None, s2 is not None)


def _backward(ctx, do, dh1, dh2, dhs1, dhs2):
    q, k, v, lr, retention, momentum, h1, h2, hs1, hs2, chunk_offsets, last_rows = ctx.saved_tensors
    zeros = lambda d, like: torch.zeros_like(like) if d is None else d.contiguous()
    do = torch.zeros_like(v, dtype=ctx.out_dtype) if do is None else do.contiguous()   # the op's input dtype
    grads = _triton_bwd(
        do, zeros(dh1, h1), zeros(dh2, h2), zeros(dhs1, hs1), zeros(dhs2, hs2), q, k, v, lr, retention,
        momentum, h1, h2, hs1, hs2, chunk_offsets, last_rows, ctx.shared, *ctx.options)
    dq, dk, dv, dlr, dret, dmom, dw1, dw2, ds1, ds2 = grads
    dmom, ds1, ds2 = (_none_if_empty(x) for x in (dmom, ds1, ds2))
    ds1 = ds1 if ctx.has_s[0] else None
    ds2 = ds2 if ctx.has_s[1] else None
    return dq, dk, dv, dlr, dret, dmom, dw1, dw2, ds1, ds2, None, None, None, None, None, None, None, None, None


_triton_bwd, _ = eager_op("nested_kernels::mlp_memory_triton_bwd", _bwd_impl, fake=_bwd_fake)
_triton_fwd, _ = eager_op("nested_kernels::mlp_memory_triton_fwd", _fwd_impl, fake=_fwd_fake,
                          setup_context=_setup_context, backward=_backward)


def triton_op_args(q, k, v, lr, retention, momentum, *, initial_state, activation, residual, dgd, self_target, read,
                   chunk_size, cu_seqlens):
    """The layout and the arguments of `nested_kernels::mlp_memory_triton_fwd` for one call."""
    B, T, H, K = q.shape
    f32 = torch.float32
    layout = flat_chunks(B, T, chunk_size, cu_seqlens, q.device)
    qf, kf, vf = flat_operands(layout, q, k, v, "mlp_memory")
    gate = lambda x, pad: None if x is None else layout.flatten(as_gate(x, q, f32), pad).contiguous()
    N = layout.chunk_offsets.numel() - 1
    w1, w2 = (x.to(f32).contiguous() for x in (initial_state.w1, initial_state.w2))
    s1 = s2 = None
    if momentum is not None:
        s1 = w1.new_zeros(N, *w1.shape[1:]) if initial_state.s1 is None else initial_state.s1.to(f32).contiguous()
        s2 = w2.new_zeros(N, *w2.shape[1:]) if initial_state.s2 is None else initial_state.s2.to(f32).contiguous()
    args = (qf, kf, vf, gate(lr, 0.0), gate(retention, 1.0), gate(momentum, 1.0), w1, w2, s1, s2,
            layout.chunk_offsets, layout.last_rows, activation, residual, dgd, self_target, read, chunk_size, v.dtype)
    return layout, args


def mlp_memory_triton(
    q, k, v, lr, retention, momentum=None, *, initial_state: MLPMemoryState, activation="silu", residual=True,
    dgd=False, self_target=False, read="current", chunk_size=16, output_final_state=False, cu_seqlens=None,
):
    layout, args = triton_op_args(q, k, v, lr, retention, momentum, initial_state=initial_state,
                                  activation=activation, residual=residual, dgd=dgd, self_target=self_target,
                                  read=read, chunk_size=chunk_size, cu_seqlens=cu_seqlens)
    o, h1, h2, hs1, hs2 = _triton_fwd(*args)
    final_state = None
    if output_final_state:
        offsets = layout.chunk_offsets.long()
        final_slots = offsets[1:] + torch.arange(offsets.numel() - 1, device=offsets.device)
        use_momentum = momentum is not None
        final_state = MLPMemoryState(h1[final_slots], h2[final_slots], hs1[final_slots] if use_momentum else None,
                                     hs2[final_slots] if use_momentum else None)
    return layout.unflatten(o, *q.shape[:2]), final_state
