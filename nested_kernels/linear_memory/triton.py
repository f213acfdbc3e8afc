"""The `triton` backend of `linear_memory`: the chunk kernels of `triton_kernels/linear_memory/`
on the flat chunk layout. The gate matrices and the DGD system's inverse are small per-chunk
tensors built here in PyTorch (`common/chunk_gates.py`, `common/chunk_state.py`); the kernels
do the state-sized work. On a CPU the kernels run in Triton's interpreter."""
import importlib.util
from typing import Optional

import torch

from ..common.chunk_gates import chunk_gates
from ..common.chunk_state import dgd_inverse
from ..common.flat_chunks import flat_chunks
from ..common.inputs import as_gate
from .state import LinearMemoryState

CHUNK_SIZES = (16, 32, 64)
MAX_DIM = 256
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def unsupported_reason(call: dict) -> Optional[str]:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if call["device"].type not in ("cpu", "cuda"):
        return f"it runs on CUDA devices (or interpreted on the CPU), the inputs are on {call['device']}"
    if call["dtype"] not in DTYPES:
        return f"it takes fp32/bf16/fp16 inputs, got {call['dtype']} (use backend='torch' or 'reference')"
    if call["chunk_size"] not in CHUNK_SIZES:
        return f"chunk_size must be one of {CHUNK_SIZES}, got {call['chunk_size']}"
    if max(call["K"], call["V"]) > MAX_DIM:
        return f"K and V up to {MAX_DIM}, got K={call['K']}, V={call['V']}"
    return None


def auto_reason(call: dict) -> Optional[str]:
    """`backend="auto"` takes the Triton kernels on a GPU only: interpreted on a CPU they are slow."""
    return None if call["device"].type == "cuda" else "interpreted on the CPU"


def _last_row(x: torch.Tensor, last_rows: torch.Tensor) -> torch.Tensor:
    """x[h, c, last_rows[c]] for gate tensors laid out [H, NC, C+1, ...]."""
    chunks = torch.arange(last_rows.numel(), device=x.device)
    return x[:, chunks, last_rows.long()].contiguous()


class ChunkLinearMemoryFunction(torch.autograd.Function):
    """The Triton chunk kernels with their hand-written backward. Inputs are in the flat chunk
    layout; the gate matrices and the DGD inverse are inputs too, so autograd carries their
    gradients on to lr, retention, momentum and k through the torch gate algebra. The backward
    recomputes the chunk states from the inputs (only inputs and per-chunk gates are saved)."""

    @staticmethod
    def forward(ctx, q, k, v, decay, carry, write, dgd_write, mom_decay_last, mom_write_last, dgd_inv, h0, s0,
                chunk_offsets, last_rows, scale, dgd, out_dtype):
        from ..triton_kernels.linear_memory.chunk_fwd import linear_memory_fwd

        gates = (decay, carry, write, dgd_write, mom_decay_last, mom_write_last)
        o, *_, ht, st = linear_memory_fwd(q, k, v, gates, dgd_inv, chunk_offsets, last_rows, h0, s0, scale=scale,
                                          dgd=dgd, output_final_state=True, out_dtype=out_dtype)
        ctx.save_for_backward(q, k, v, *gates, dgd_inv, h0, s0, chunk_offsets, last_rows)
        ctx.scale, ctx.dgd = scale, dgd
        ctx.set_materialize_grads(False)
        return o, ht, st

    @staticmethod
    def backward(ctx, do, dht, dst):
        from ..triton_kernels.linear_memory.chunk_bwd import linear_memory_bwd
        from ..triton_kernels.linear_memory.chunk_fwd import linear_memory_fwd

        q, k, v, *gates, dgd_inv, h0, s0, chunk_offsets, last_rows = ctx.saved_tensors
        _, h, s, res, pseudo, _, _ = linear_memory_fwd(
            q, k, v, gates, dgd_inv, chunk_offsets, last_rows, h0, s0, scale=ctx.scale, dgd=ctx.dgd,
            output_final_state=False, out_dtype=v.dtype)
        if do is None:
            do = torch.zeros_like(v)
        dq, dk, dv, d_gates, d_inv, dh0, ds0 = linear_memory_bwd(
            q, k, do.contiguous(), dht, dst, gates, dgd_inv, chunk_offsets, last_rows, (h, s, res, pseudo),
            scale=ctx.scale, dgd=ctx.dgd)
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), *d_gates, d_inv,
                None if h0 is None else dh0, None if s0 is None else ds0, None, None, None, None, None)


def linear_memory_triton(
    q, k, v, lr, retention, momentum=None, *, dgd=False, chunk_size=64, scale=1.0,
    initial_state: Optional[LinearMemoryState] = None, output_final_state=False, cu_seqlens=None,
):
    from ..triton_kernels.utils.launch import interpreted

    B, T, H, K = q.shape
    f32 = torch.float32
    layout = flat_chunks(B, T, chunk_size, cu_seqlens, q.device)
    qf, kf, vf = (layout.flatten(x).contiguous() for x in (q, k, v))
    if interpreted() and q.dtype == torch.bfloat16:                           # the interpreter's bf16 dot is wrong;
        qf, kf, vf = qf.float(), kf.float(), vf.float()                      # fp32 holds bf16 values exactly

    def gate(x, pad):
        return layout.to_chunk_major(layout.flatten(as_gate(x, q, f32), pad))

    g = chunk_gates(gate(lr, 0.0), gate(retention, 1.0), None if momentum is None else gate(momentum, 1.0))
    dgd_inv = None
    if dgd:
        kc = kf.float().unflatten(0, (-1, chunk_size)).permute(2, 0, 1, 3)                 # [H, NC, C, K]
        dgd_inv = dgd_inverse(g, kc @ kc.transpose(-1, -2)).contiguous()
    use_momentum = momentum is not None
    gates = (
        g.decay.contiguous(),
        g.carry.contiguous() if use_momentum else None,
        g.write.contiguous(),
        g.dgd_write.contiguous(),
        _last_row(g.mom_decay, layout.last_rows) if use_momentum else None,
        _last_row(g.mom_write, layout.last_rows) if use_momentum else None,
    )
    h0 = s0 = None
    if initial_state is not None:
        h0 = initial_state.memory.to(f32).contiguous()
        if use_momentum:
            s0 = torch.zeros_like(h0) if initial_state.momentum is None else initial_state.momentum.to(f32).contiguous()
    o, ht, st = ChunkLinearMemoryFunction.apply(
        qf, kf, vf, *gates, dgd_inv, h0, s0, layout.chunk_offsets, layout.last_rows, float(scale), dgd, v.dtype)
    final_state = LinearMemoryState(ht, st) if output_final_state else None
    return layout.unflatten(o, B, T), final_state
