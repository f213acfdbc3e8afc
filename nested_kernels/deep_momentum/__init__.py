"""`deep_momentum`: one step of Deep Momentum Gradient Descent (DMGD, SPEC §5)."""
import math
from typing import Optional, Tuple, Union

import torch

from ..backends import OpBackends
from ..common.activations import ACTIVATIONS
from ..common.inputs import compute_dtype
from ..common.validation import FLOAT_DTYPES, check_choice, check_state_tensor, check_tensor
from ..mlp_memory import MLPMemoryState
from .chunked import deep_momentum_chunked, mlp_read
from .reference import deep_momentum_reference

__all__ = ["deep_momentum", "mlp_read", "MLPMemoryState", "BACKENDS"]

Gate = Union[float, torch.Tensor]

BACKENDS = OpBackends("deep_momentum")
BACKENDS.register("reference", deep_momentum_reference)
BACKENDS.register("torch", deep_momentum_chunked)


def _fmt(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _check_gate(name, gate, batch, device, lo=None, hi=None):
    """A gate is a Python float or a float tensor of shape [] or the leading dims of grad."""
    if isinstance(gate, bool) or not isinstance(gate, (int, float, torch.Tensor)):
        raise TypeError(f"{name}: expected a float or a tensor of shape [] or {_fmt(batch)}, got {type(gate).__name__}")
    if isinstance(gate, torch.Tensor):
        check_tensor(name, gate, device=device)
        if tuple(gate.shape) not in ((), tuple(batch)):
            raise ValueError(
                f"{name}: expected a tensor of shape [] or {_fmt(batch)} (the leading dims of grad), got {_fmt(gate.shape)}"
            )
        return
    if not math.isfinite(gate) or (lo is not None and gate < lo) or (hi is not None and gate > hi):
        bounds = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name}: expected a finite value {bounds}, got {gate}")


def _check(grad, state, lr_inner, retention, lr, momentum, activation):
    check_tensor("grad", grad, dtypes=FLOAT_DTYPES)
    if grad.dim() < 2:
        raise ValueError(
            f"grad: expected a gradient matrix [n, d] or a batch of them [..., n, d], got shape {_fmt(grad.shape)}"
        )
    *batch, n, d = grad.shape
    batch = tuple(batch)
    if n == 0 or d == 0 or 0 in batch:
        raise ValueError(f"grad: expected non-empty dims [..., n, d], got shape {_fmt(grad.shape)}")
    if not isinstance(state, MLPMemoryState):
        raise TypeError(f"state: expected an MLPMemoryState (w1, w2, s1, s2) of the momentum MLP, got {type(state).__name__}")
    w1 = state.w1
    check_tensor("state.w1", w1, dtypes=(torch.float32, torch.float64), device=grad.device)
    if w1.dim() not in (2, 2 + len(batch)):
        raise ValueError(f"state.w1: expected [d, Dh] or [..., d, Dh] with the leading dims of grad {_fmt(batch)}, "
                         f"got shape {_fmt(w1.shape)}")
    lead = tuple(w1.shape[:-2])
    if lead not in ((), batch):
        raise ValueError(f"state.w1: expected leading dims [] or {_fmt(batch)} (those of grad), got {_fmt(lead)}")
    if w1.shape[-2] != d:
        raise ValueError(
            f"state.w1: expected [..., d, Dh] with d = {d} (the rows' width of grad), got shape {_fmt(w1.shape)}"
        )
    Dh = w1.shape[-1]
    check_state_tensor("state.w2", state.w2, (*lead, Dh, d), "[..., Dh, d] (the leading dims of w1)", grad.device)
    for name, s, shape, dims in (("state.s1", state.s1, (*batch, d, Dh), "[..., d, Dh]"),
                                 ("state.s2", state.s2, (*batch, Dh, d), "[..., Dh, d]")):
        if s is None:
            continue
        if momentum is None:
            raise ValueError(f"{name}: expected None when momentum=None (no momentum state), got a tensor")
        check_state_tensor(name, s, shape, f"{dims} (the leading dims of grad)", grad.device)
    _check_gate("lr_inner", lr_inner, batch, grad.device, lo=0.0)
    _check_gate("retention", retention, batch, grad.device, lo=0.0, hi=1.0)
    _check_gate("lr", lr, batch, grad.device)
    if momentum is not None:
        _check_gate("momentum", momentum, batch, grad.device, lo=0.0, hi=1.0)
    check_choice("activation", activation, sorted(ACTIVATIONS))


def deep_momentum(
    grad: torch.Tensor,
    state: MLPMemoryState,
    *,
    lr_inner: Gate,
    retention: Gate,
    lr: Gate,
    momentum: Optional[Gate] = None,
    activation: str = "silu",
    backend: str = "auto",
) -> Tuple[torch.Tensor, MLPMemoryState]:
    r"""One step of Deep Momentum Gradient Descent (NL eq. 50, SPEC §5) on a gradient matrix.

    The momentum is a residual MLP memory `m_φ(u) = u + φ(u A) B` (`A = w1`, `B = w2`) acting on
    the rows `u` of `U_i = grad`. One step is one `mlp_memory` chunk step over the n rows (keys =
    values = rows, every row's inner gradient at `φ_i`), then a read with the new weights:
    ```
    Δ_i     = −η ∇_φ Σ_rows ½‖m_φ(u) − u‖² |_{φ_i}
    S_{i+1} = μ S_i + Δ_i                  (only with momentum; else S_{i+1} = Δ_i)
    φ_{i+1} = α φ_i + S_{i+1}
    update  = lr · m_{φ_{i+1}}(U_i)        (apply as W_{i+1} = W_i − update)
    ```
    Retention and momentum act once per step (not once per row). Differentiable w.r.t. grad,
    φ_i (w1, w2, s1, s2) and every tensor gate; the backward contains the gradient-of-gradient
    (φ'') terms of BACKGROUND.md §4, through `mlp_memory`. A preconditioned variant passes
    `P(U_i)` as `grad` (keys = values = preconditioned rows).

    Args:
        grad (torch.Tensor): gradient matrix `[n, d]` (rows are the memory's inputs) or a batch
            `[..., n, d]`; each matrix has its own momentum memory (the batch maps to heads).
        state (MLPMemoryState): the momentum MLP `φ_i`: `w1 [d, Dh] | [..., d, Dh]`,
            `w2 [Dh, d] | [..., Dh, d]` (without leading dims they are shared by the batch, and
            their gradient sums over it); `s1 [..., d, Dh]`, `s2 [..., Dh, d]` or None (zeros) with
            `momentum`, None without. fp32 (or fp64).
        lr_inner (float | torch.Tensor): η ≥ 0, the momentum memory's learning rate; a float or a
            tensor `[]` or `[...]` (one per matrix).
        retention (float | torch.Tensor): α ∈ [0, 1], multiplies φ_i; same shapes.
        lr (float | torch.Tensor): the outer learning rate; same shapes.
        momentum (float | torch.Tensor, Optional): μ ∈ [0, 1], momentum of φ's own updates; same
            shapes. Default: `None` (no momentum state).
        activation (str): φ, `"silu"` or `"gelu"` (tanh approximation). Default: `"silu"`.
        backend (str): `"reference" | "torch" | "auto"` (the torch tier runs `mlp_memory`). Default: `"auto"`.

    Returns:
        update (torch.Tensor): `lr · m_{φ_{i+1}}(U_i)`, `[..., n, d]` in the dtype of grad.
        new_state (MLPMemoryState): `φ_{i+1}`: fp32 (fp64 for fp64 inputs) `w1 [..., d, Dh]`,
            `w2 [..., Dh, d]` and, with momentum, `s1`, `s2`; the leading dims are those of grad.

    Examples::
        >>> n, d, Dh = 64, 32, 16
        >>> phi0 = MLPMemoryState(torch.randn(d, Dh) / d**0.5, 0.1 * torch.randn(Dh, d) / Dh**0.5)
        >>> update, phi1 = deep_momentum(W.grad, phi0, lr_inner=0.1, retention=0.99, lr=1e-2)
        >>> W.data -= update
        >>> grads = torch.randn(8, n, d)                        # 8 matrices, φ0 shared
        >>> updates, phis = deep_momentum(grads, phi0, lr_inner=0.1, retention=1.0, lr=1e-2, momentum=0.9)
    """
    _check(grad, state, lr_inner, retention, lr, momentum, activation)
    impl = BACKENDS.resolve(backend, {"device": grad.device})
    *batch, n, d = grad.shape
    H, Dh = math.prod(batch), state.w1.shape[-1]
    dtype = compute_dtype(grad, state.w1, state.w2)

    def heads(x, tail):                                                        # [*batch | , ·, ·] -> [H, ·, ·]
        return x.to(dtype).expand(*batch, *tail).reshape(H, *tail)

    def gate(g):                                                               # float | [] | [*batch] -> [H]
        if isinstance(g, torch.Tensor):
            return g.to(dtype).expand(batch).reshape(H)
        return torch.full((H,), float(g), dtype=dtype, device=grad.device)

    u = grad.to(dtype).reshape(H, n, d)
    w1, w2 = heads(state.w1, (d, Dh)), heads(state.w2, (Dh, d))
    s1 = s2 = mu = None
    if momentum is not None:
        mu = gate(momentum)
        s1 = u.new_zeros(H, d, Dh) if state.s1 is None else heads(state.s1, (d, Dh))
        s2 = u.new_zeros(H, Dh, d) if state.s2 is None else heads(state.s2, (Dh, d))
    update, new = impl(u, w1, w2, s1, s2, gate(lr_inner), gate(retention), mu, gate(lr), activation=activation)
    shapes = ((d, Dh), (Dh, d), (d, Dh), (Dh, d))
    new_state = MLPMemoryState(*(None if x is None else x.reshape(*batch, *s) for x, s in zip(new, shapes)))
    return update.reshape(grad.shape).to(grad.dtype), new_state
