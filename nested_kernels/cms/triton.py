"""The `triton` backend of `cms_level` (SPEC §4): the chunk kernels of `triton_kernels/cms/`,
launched chunk by chunk, with the hand-written backward of `chunk_bwd.py` as the autograd
formula of a `torch.library` custom op (called directly in plain eager mode: `common/eager_ops.py`).
On a CPU the kernels run in Triton's interpreter.

16-bit x, target and grad_y reach the kernels as they are: every load is converted to fp32 in
registers before any product (fp32 dots for fp32 inputs, tf32 on the matrix units otherwise),
so none of the 16-bit `tl.dot` problems of `triton_kernels/utils/operand_precision.py` apply.
Weights and states are fp32."""
import math
import os
from typing import List, Optional, Tuple

import torch

from ..common.eager_ops import eager_op
from ..common.triton_backend import triton_call_reason
from .state import CMSState


def unsupported_reason(call: dict) -> Optional[str]:
    reason = triton_call_reason(call)
    if reason is not None:
        return reason
    rows = min(call["period"], call["T"])
    if rows * max(call["D"], call["Dh"]) >= 2**31:
        return (f"a chunk's rows × max(D, Dh) must stay below 2^31 (32-bit offsets inside a chunk), got "
                f"min(period, T) = {rows}, D = {call['D']}, Dh = {call['Dh']}")
    return None


def _fake_states(x, w1, n: int):
    B, T, D = x.shape
    Dh = w1.shape[-1]
    return x.new_empty(n, B, D, Dh, dtype=torch.float32), x.new_empty(n, B, Dh, D, dtype=torch.float32)


def _fwd_impl(
    x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, lr: torch.Tensor, retention: torch.Tensor,
    signal: torch.Tensor, period: int, is_grad_y: bool, activation: str, store_states: bool,
    output_final_state: bool, checkpoint_every: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """y, the kept weights (store_states: W^{k}, W^{2k}, …, W^NC; else W^NC with
    output_final_state, or none) and Z, E for the backward (empty unless store_states)."""
    from ..triton_kernels.cms.chunk_fwd import cms_level_fwd

    y, w1s, w2s, z, e = cms_level_fwd(x, w1, w2, lr, retention, signal, period=period, is_grad_y=is_grad_y,
                                      use_gelu=activation == "gelu", store_states=store_states,
                                      output_final_state=output_final_state, checkpoint_every=checkpoint_every)
    if store_states:
        return y, w1s, w2s, z, e
    return y, w1s, w2s, x.new_empty(0, dtype=torch.float32), x.new_empty(0, dtype=torch.float32)


def _fwd_fake(x, w1, w2, lr, retention, signal, period, is_grad_y, activation, store_states, output_final_state,
              checkpoint_every):
    from ..triton_kernels.cms.chunk_fwd import num_states

    B, T, D = x.shape
    Dh = w1.shape[-1]
    empty = lambda: x.new_empty(0, dtype=torch.float32)
    if store_states:
        w1s, w2s = _fake_states(x, w1, num_states(-(-T // period), checkpoint_every))
        return (torch.empty_like(x), w1s, w2s, x.new_empty(B, T, Dh, dtype=torch.float32),
                x.new_empty(B, T, D, dtype=torch.float32))
    w1s, w2s = _fake_states(x, w1, int(output_final_state))
    return torch.empty_like(x), w1s, w2s, empty(), empty()


def _bwd_impl(
    dy: torch.Tensor, dw1: Optional[torch.Tensor], dw2: Optional[torch.Tensor], x: torch.Tensor, w1: torch.Tensor,
    w2: torch.Tensor, lr: torch.Tensor, retention: torch.Tensor, signal: torch.Tensor, w1s: torch.Tensor,
    w2s: torch.Tensor, z: torch.Tensor, e: torch.Tensor, period: int, is_grad_y: bool, activation: str,
    checkpoint_every: int,
) -> List[torch.Tensor]:
    """dx, dw1, dw2 (summed over the batch for shared weights), dlr, dretention, dsignal."""
    from ..triton_kernels.cms.chunk_bwd import cms_level_bwd

    dx, g1, g2, dlr, dret, dsignal = cms_level_bwd(
        x, w1, w2, lr, retention, signal, dy.contiguous(), dw1, dw2, w1s, w2s, z, e, period=period,
        is_grad_y=is_grad_y, use_gelu=activation == "gelu", checkpoint_every=checkpoint_every)
    if w1.dim() == 2:
        g1, g2 = g1.sum(0), g2.sum(0)
    return [dx, g1, g2, dlr, dret, dsignal]


def _bwd_fake(dy, dw1, dw2, x, w1, w2, lr, retention, signal, w1s, w2s, z, e, period, is_grad_y, activation,
              checkpoint_every):
    return [torch.empty_like(x), torch.empty_like(w1), torch.empty_like(w2), torch.empty_like(lr),
            torch.empty_like(retention), torch.empty_like(signal)]


def _setup_context(ctx, inputs, output):
    x, w1, w2, lr, retention, signal, period, is_grad_y, activation, store_states, _, checkpoint_every = inputs
    _, w1s, w2s, z, e = output
    if not store_states:
        raise RuntimeError("cms_level triton: the forward ran without store_states, so it has no backward")
    ctx.save_for_backward(x, w1, w2, lr, retention, signal, w1s, w2s, z, e)
    ctx.period, ctx.is_grad_y, ctx.activation, ctx.checkpoint_every = period, is_grad_y, activation, checkpoint_every


def _backward(ctx, dy, dw1s, dw2s, dz, de):
    x, w1, w2, lr, retention, signal, w1s, w2s, z, e = ctx.saved_tensors
    # Only the last kept state is an output of cms_level (the final state); the others are the
    # backward's checkpoints and get no gradient from outside.
    dw1 = None if dw1s is None else dw1s[-1]
    dw2 = None if dw2s is None else dw2s[-1]
    grads = _triton_bwd(torch.zeros_like(x) if dy is None else dy, dw1, dw2, x, w1, w2, lr, retention, signal,
                        w1s, w2s, z, e, ctx.period, ctx.is_grad_y, ctx.activation, ctx.checkpoint_every)
    return (*grads, None, None, None, None, None, None)


_triton_bwd, _ = eager_op("nested_kernels::cms_level_triton_bwd", _bwd_impl, fake=_bwd_fake)
_triton_fwd, _ = eager_op("nested_kernels::cms_level_triton_fwd", _fwd_impl, fake=_fwd_fake,
                          setup_context=_setup_context, backward=_backward)


def checkpoint_interval(B: int, T: int, D: int, Dh: int, period: int) -> int:
    """k such that a recording forward keeps every k-th chunk's weights: 1 (all of them) while
    they fit in NESTED_KERNELS_CMS_STATES_MIB (default 4096) MiB, else ⌈√NC⌉, which keeps about
    2√NC weight pairs alive in the backward (kept + one segment) for one more step per chunk."""
    NC = -(-T // period)
    budget = float(os.environ.get("NESTED_KERNELS_CMS_STATES_MIB", "4096")) * 2**20
    if NC * 2 * B * D * Dh * 4 <= budget:
        return 1
    return max(1, math.ceil(math.sqrt(NC)))


def triton_op_args(x, w1, w2, *, period, lr, retention, target, grad_y, activation, output_final_state):
    """The arguments of `nested_kernels::cms_level_triton_fwd` for one validated call."""
    from .. import triton_kernels  # noqa: F401  (picks Triton's interpreter on a CPU before torch imports Triton)

    B, T, D = x.shape
    f32 = torch.float32
    signal = grad_y if grad_y is not None else target
    if isinstance(lr, torch.Tensor):
        lr = lr.to(f32).contiguous()
    else:
        lr = torch.full((B, T), float(lr), dtype=f32, device=x.device)
    if isinstance(retention, torch.Tensor):
        retention = retention.to(f32)
    else:
        retention = torch.tensor(float(retention), dtype=f32, device=x.device)
    tensors = (x, w1, w2, lr, retention, signal)
    store_states = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return (x.contiguous(), w1.to(f32).contiguous(), w2.to(f32).contiguous(), lr, retention, signal.contiguous(),
            int(period), grad_y is not None, activation, store_states, bool(output_final_state),
            checkpoint_interval(B, T, D, w1.shape[-1], period))


def cms_level_triton(
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    *,
    period: int,
    lr,
    retention=1.0,
    target: Optional[torch.Tensor] = None,
    grad_y: Optional[torch.Tensor] = None,
    activation: str = "silu",
    output_final_state: bool = False,
):
    B, T, D = x.shape
    if T == 0:                                  # no chunk: nothing to launch
        from .chunked import cms_level_chunked

        return cms_level_chunked(x, w1, w2, period=period, lr=lr, retention=retention, target=target,
                                 grad_y=grad_y, activation=activation, output_final_state=output_final_state)
    args = triton_op_args(x, w1, w2, period=period, lr=lr, retention=retention, target=target, grad_y=grad_y,
                          activation=activation, output_final_state=output_final_state)
    y, w1s, w2s, _, _ = _triton_fwd(*args)
    final_state = CMSState(w1s[-1], w2s[-1]) if output_final_state else None
    return y, final_state
