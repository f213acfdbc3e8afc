"""`DeepMomentum`: Deep Momentum Gradient Descent (DMGD, SPEC §5) as a torch optimiser, and
`functional_step`, its out-of-place form that stays differentiable for meta-learning.

Matrices (2-D parameters; a parameter with more dims is viewed as `[shape[0], -1]` by the
optimiser) take `W ← W − lr · m_{φ_{i+1}}(U_i)` with `φ_{i+1}` from `deep_momentum`, the rows of
the gradient U_i being the momentum memory's inputs. Vectors and scalars (biases, norms), where
a row memory is meaningless, fall back to heavy-ball SGD: `b ← β b + g`, `p ← p − lr · b`
(β = `fallback_momentum`; the first step takes `b = g`, as `torch.optim.SGD` does).
"""
import math
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch

from ..deep_momentum import deep_momentum
from ..mlp_memory import MLPMemoryState

__all__ = ["DeepMomentum", "DMGDMeta", "DMGDParamState", "functional_step", "default_phi0"]

Gate = Union[float, torch.Tensor]
PRECONDITIONERS = (None, "rms")
_MATRIX_KEYS = ("w1", "w2", "s1", "s2", "exp_avg_sq")   # fp32 state that must keep its dtype on load


class DMGDMeta(NamedTuple):
    """What DMGD can meta-learn, shared by every matrix: tensors (possibly requiring grad) or floats.

    w1 `[d, Dh]`, w2 `[Dh, d]`: the momentum memory's initial weights φ_0 (used by every matrix
    whose rows have width d); lr_inner η, retention α, lr, momentum μ (None: none) as in
    `deep_momentum`.
    """

    w1: torch.Tensor
    w2: torch.Tensor
    lr_inner: Gate = 0.1
    retention: Gate = 1.0
    lr: Gate = 1e-2
    momentum: Optional[Gate] = None


class DMGDParamState(NamedTuple):
    """Per-parameter state of `functional_step`: `phi` (matrices; None before the first step,
    which then starts from the meta's φ_0), `buf` (vectors' heavy-ball buffer), `sq`
    (`precondition="rms"`: running mean of g²) and the number of steps taken."""

    phi: Optional[MLPMemoryState] = None
    buf: Optional[torch.Tensor] = None
    sq: Optional[torch.Tensor] = None
    step: int = 0


def default_phi0(d: int, hidden: int, *, init_scale: float = 0.1, seed: int = 0, dtype=torch.float32,
                 device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """φ_0 when none is given: `w1 ~ N(0, 1/d)`, `w2 ~ N(0, init_scale²/Dh)` from a generator seeded
    with `seed`, so m_φ0(u) = u + a small nonlinear correction (w2 = 0 would be plain SGD forever:
    the inner gradient vanishes with B)."""
    gen = torch.Generator().manual_seed(seed)
    w1 = torch.randn(d, hidden, generator=gen, dtype=torch.float64) / math.sqrt(d)
    w2 = init_scale * torch.randn(hidden, d, generator=gen, dtype=torch.float64) / math.sqrt(hidden)
    return w1.to(dtype=dtype, device=device), w2.to(dtype=dtype, device=device)


def _precondition(g, sq, step, beta2, eps):
    """Adam's second moment: u = g / (sqrt(v̂) + eps), v = β2 v + (1 − β2) g², v̂ = v / (1 − β2^step)."""
    g2 = g.to(torch.float64 if g.dtype == torch.float64 else torch.float32) ** 2
    sq = (1 - beta2) * g2 if sq is None else beta2 * sq + (1 - beta2) * g2
    u = g / ((sq / (1 - beta2**step)).sqrt() + eps).to(g.dtype)
    return u, sq


def _matrix_step(g, phi, sq, step, *, lr, lr_inner, retention, momentum, activation, precondition, beta2, eps,
                 backend):
    """DMGD on matrices g `[..., n, d]`: returns (update, φ_{i+1}, sq)."""
    u = g
    if precondition == "rms":
        u, sq = _precondition(g, sq, step, beta2, eps)
    update, phi = deep_momentum(u, phi, lr_inner=lr_inner, retention=retention, lr=lr, momentum=momentum,
                                activation=activation, backend=backend)
    return update, phi, sq


def _check_meta(meta):
    if not isinstance(meta, DMGDMeta):
        raise TypeError(f"meta: expected a DMGDMeta(w1, w2, lr_inner, retention, lr, momentum), got {type(meta).__name__}")
    for name in ("w1", "w2"):
        t = getattr(meta, name)
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            given = f"shape {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"meta.{name}: expected a 2-d tensor ({'[d, Dh]' if name == 'w1' else '[Dh, d]'}), got {given}")


def functional_step(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    meta: DMGDMeta,
    states: Optional[Sequence[DMGDParamState]] = None,
    *,
    activation: str = "silu",
    fallback_momentum: float = 0.9,
    precondition: Optional[str] = None,
    beta2: float = 0.999,
    eps: float = 1e-8,
    backend: str = "auto",
) -> Tuple[List[torch.Tensor], List[DMGDParamState]]:
    r"""One DMGD step, out of place and differentiable w.r.t. params, grads and every tensor of `meta`.

    For meta-learning: unroll K steps (`grads` from `torch.autograd.grad(..., create_graph=True)`
    when the inner loss's curvature matters), take a loss of the final params and backpropagate
    into `meta` (φ_0, η, α, lr).

    Args:
        params (Sequence[torch.Tensor]): parameters; those with ≥ 2 dims are matrices `[n, d]`
            or batches of independent matrices `[..., n, d]` (e.g. one per task), each with its
            own momentum memory started from φ_0; the others take the heavy-ball fallback.
        grads (Sequence[torch.Tensor]): their gradients, same shapes.
        meta (DMGDMeta): φ_0 = (w1 `[d, Dh]`, w2 `[Dh, d]`) and the gates.
        states (Sequence[DMGDParamState], Optional): from the previous call. Default: `None` (first step).
        activation (str): φ of the momentum memory. Default: `"silu"`.
        fallback_momentum (float): β of the vectors' heavy ball. Default: `0.9`.
        precondition (str, Optional): `"rms"` feeds the memory `g / (sqrt(v̂) + eps)` (Adam's second
            moment) instead of `g`. Default: `None`.
        beta2 (float): decay of v for `precondition="rms"`. Default: `0.999`.
        eps (float): added to sqrt(v̂). Default: `1e-8`.
        backend (str): backend of `deep_momentum`. Default: `"auto"`.

    Returns:
        new_params (List[torch.Tensor]): `p − update`, same shapes and dtypes.
        new_states (List[DMGDParamState]): pass to the next call.
    """
    _check_meta(meta)
    if len(grads) != len(params):
        raise ValueError(f"grads: expected one gradient per parameter ({len(params)}), got {len(grads)}")
    if states is None:
        states = [DMGDParamState()] * len(params)
    elif len(states) != len(params):
        raise ValueError(f"states: expected one state per parameter ({len(params)}), got {len(states)}")
    if precondition not in PRECONDITIONERS:
        raise ValueError(f"precondition: expected one of {list(PRECONDITIONERS)}, got {precondition!r}")
    new_params, new_states = [], []
    for i, (p, g, st) in enumerate(zip(params, grads, states)):
        if not isinstance(g, torch.Tensor) or g.shape != p.shape:
            given = list(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
            raise ValueError(f"grads[{i}]: expected the shape of params[{i}] {list(p.shape)}, got {given}")
        step = st.step + 1
        if p.dim() >= 2:
            phi = st.phi if st.phi is not None else MLPMemoryState(meta.w1, meta.w2)
            update, phi, sq = _matrix_step(
                g, phi, st.sq, step, lr=meta.lr, lr_inner=meta.lr_inner, retention=meta.retention,
                momentum=meta.momentum, activation=activation, precondition=precondition, beta2=beta2, eps=eps,
                backend=backend,
            )
            new_params.append(p - update.to(p.dtype))
            new_states.append(DMGDParamState(phi=phi, sq=sq, step=step))
        else:
            buf = g if st.buf is None else fallback_momentum * st.buf + g
            new_params.append(p - (meta.lr * buf).to(p.dtype))
            new_states.append(DMGDParamState(buf=buf, step=step))
    return new_params, new_states


def _as_float(name, x):
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(f"{name}: expected a float or a one-element tensor, got shape {list(x.shape)}")
        return float(x.detach())
    return x


class DeepMomentum(torch.optim.Optimizer):
    r"""Deep Momentum Gradient Descent (NL eq. 50, SPEC §5): the momentum of each matrix parameter
    is a residual MLP memory `m_φ(u) = u + φ(u A) B` trained in context on its gradient rows.

    Each step, for a matrix W `[n, d]` with gradient U (n rows of width d; a parameter with more
    dims is viewed as `[shape[0], -1]`):
    `φ ← α φ + S`, `S = [μ S_prev +] (−η ∇_φ Σ_rows ½‖m_φ(u) − u‖²)`, then `W ← W − lr · m_φ(U)`
    (the memory is read after its update), through `nested_kernels.deep_momentum.deep_momentum`.
    Parameters with fewer than 2 dims take heavy-ball SGD (`b ← β b + g`, `p ← p − lr · b`,
    β = `fallback_momentum`). The step runs without autograd; to meta-learn φ_0, η, α or lr use
    `functional_step`, then deploy the result with `DeepMomentum.from_meta`.

    Args:
        params: parameters or parameter groups.
        lr (float): outer learning rate. Default: `1e-2`.
        lr_inner (float): η ≥ 0 of the momentum memory. Default: `0.1`.
        retention (float): α ∈ [0, 1] of the momentum memory. Default: `1.0`.
        momentum (float, Optional): μ ∈ [0, 1] of the memory's own updates. Default: `None`.
        hidden (int): Dh of the memory when `phi0` is not given. Default: `32`.
        activation (str): `"silu"` or `"gelu"`. Default: `"silu"`.
        phi0 (Tuple[Tensor, Tensor], Optional): shared φ_0 = (w1 `[d, Dh]`, w2 `[Dh, d]`), copied
            (as fp32, or fp64 for fp64 parameters) into each matrix's state at its first step.
            Default: `None` (`default_phi0(d, hidden, init_scale=init_scale, seed=seed)`).
        init_scale (float): scale of the default w2. Default: `0.1`.
        seed (int): seed of the default φ_0. Default: `0`.
        fallback_momentum (float): β of the vectors' heavy ball. Default: `0.9`.
        precondition (str, Optional): `"rms"`: the memory sees `g / (sqrt(v̂) + eps)`. Default: `None`.
        beta2 (float): decay of v̂. Default: `0.999`.
        eps (float): Default: `1e-8`.

    State per matrix: `step`, `w1`, `w2` (and `s1`, `s2` with momentum, `exp_avg_sq` with
    `precondition="rms"`), all fp32 (fp64 for fp64 parameters), kept in that dtype by
    `load_state_dict`; per vector: `step`, `momentum_buffer`.

    Examples::
        >>> opt = DeepMomentum(model.parameters(), lr=1e-2, lr_inner=0.1, retention=0.99)
        >>> loss.backward(); opt.step(); opt.zero_grad()
        >>> opt = DeepMomentum.from_meta(model.parameters(), meta)        # meta-learned φ_0 and gates
    """

    def __init__(self, params, lr: float = 1e-2, *, lr_inner: float = 0.1, retention: float = 1.0,
                 momentum: Optional[float] = None, hidden: int = 32, activation: str = "silu", phi0=None,
                 init_scale: float = 0.1, seed: int = 0, fallback_momentum: float = 0.9,
                 precondition: Optional[str] = None, beta2: float = 0.999, eps: float = 1e-8):
        checks = [("lr", lr, 0.0, None), ("lr_inner", lr_inner, 0.0, None), ("retention", retention, 0.0, 1.0),
                  ("fallback_momentum", fallback_momentum, 0.0, 1.0), ("beta2", beta2, 0.0, 1.0), ("eps", eps, 0.0, None)]
        if momentum is not None:
            checks.append(("momentum", momentum, 0.0, 1.0))
        for name, value, lo, hi in checks:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name}: expected a float, got {type(value).__name__}")
            if not (value >= lo and (hi is None or value <= hi)):
                wanted = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
                raise ValueError(f"{name}: expected a value {wanted}, got {value}")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden: expected an int >= 1, got {hidden!r}")
        if precondition not in PRECONDITIONERS:
            raise ValueError(f"precondition: expected one of {list(PRECONDITIONERS)}, got {precondition!r}")
        if phi0 is not None:
            if not (isinstance(phi0, (tuple, list)) and len(phi0) == 2 and all(isinstance(t, torch.Tensor) for t in phi0)):
                raise TypeError(f"phi0: expected a pair of tensors (w1 [d, Dh], w2 [Dh, d]), got {type(phi0).__name__}")
            w1, w2 = (t.detach() for t in phi0)
            if w1.dim() != 2 or w2.shape != (w1.shape[1], w1.shape[0]):
                raise ValueError(f"phi0: expected w1 [d, Dh] and w2 [Dh, d], got {list(w1.shape)} and {list(w2.shape)}")
            phi0 = (w1.clone(), w2.clone())
        defaults = dict(lr=lr, lr_inner=lr_inner, retention=retention, momentum=momentum, hidden=hidden,
                        activation=activation, phi0=phi0, init_scale=init_scale, seed=seed,
                        fallback_momentum=fallback_momentum, precondition=precondition, beta2=beta2, eps=eps)
        super().__init__(params, defaults)

    @classmethod
    def from_meta(cls, params, meta: DMGDMeta, **kwargs) -> "DeepMomentum":
        """An optimiser running a (meta-learned) `DMGDMeta`: φ_0 and the gates, detached."""
        _check_meta(meta)
        gates = {name: _as_float(f"meta.{name}", getattr(meta, name)) for name in ("lr", "lr_inner", "retention", "momentum")}
        return cls(params, phi0=(meta.w1, meta.w2), **gates, **kwargs)

    def _init_matrix(self, state, group, p, d):
        dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
        if group["phi0"] is None:
            w1, w2 = default_phi0(d, group["hidden"], init_scale=group["init_scale"], seed=group["seed"])
        else:
            w1, w2 = group["phi0"]
            if w1.shape[0] != d:
                raise ValueError(f"phi0: expected w1 [d, Dh] with d = {d} (the row width of a parameter of shape "
                                 f"{list(p.shape)}), got {list(w1.shape)}")
        state["w1"] = w1.to(device=p.device, dtype=dtype).clone()
        state["w2"] = w2.to(device=p.device, dtype=dtype).clone()
        if group["momentum"] is not None:
            state["s1"], state["s2"] = torch.zeros_like(state["w1"]), torch.zeros_like(state["w2"])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("DeepMomentum does not support sparse gradients")
                state = self.state[p]
                if "step" not in state:
                    state["step"] = torch.tensor(0.0)
                state["step"] += 1
                step = int(state["step"].item())
                if p.dim() < 2:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = p.grad.detach().clone()
                    else:
                        buf.mul_(group["fallback_momentum"]).add_(p.grad)
                    p.add_(buf, alpha=-group["lr"])
                    continue
                g = p.grad.reshape(p.shape[0], -1)
                if "w1" not in state:
                    self._init_matrix(state, group, p, g.shape[1])
                phi = MLPMemoryState(state["w1"], state["w2"], state.get("s1"), state.get("s2"))
                update, phi, sq = _matrix_step(
                    g, phi, state.get("exp_avg_sq"), step, lr=group["lr"], lr_inner=group["lr_inner"],
                    retention=group["retention"], momentum=group["momentum"], activation=group["activation"],
                    precondition=group["precondition"], beta2=group["beta2"], eps=group["eps"], backend="auto",
                )
                for key, value in zip(("w1", "w2", "s1", "s2"), phi):
                    if value is not None:
                        state[key].copy_(value)
                if sq is not None:
                    state["exp_avg_sq"] = sq
                p.sub_(update.reshape(p.shape))
        return loss

    def load_state_dict(self, state_dict):
        """As torch's, except that the memory's fp32 state keeps its dtype (torch casts state to
        the parameter's dtype, which would round it to bf16 for bf16 parameters)."""
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        kept = {i: {k: v for k, v in state_dict["state"].get(i, {}).items() if k in _MATRIX_KEYS}
                for i in saved_ids}
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(saved_ids, params):
            for key, value in kept[i].items():
                self.state[p][key] = value.to(device=p.device, copy=True)
