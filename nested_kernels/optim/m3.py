"""M3, multi-scale momentum Muon (Nested Learning, arXiv 2512.24695, Algorithm 1; BACKGROUND.md §1)."""
from typing import Callable, Iterable, Optional

import torch

from .newton_schulz import newton_schulz

__all__ = ["M3"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_hyperparameters(group: dict) -> None:
    """Raise ValueError naming the first bad hyper-parameter of a param group (torch.optim style)."""
    lr = group["lr"]
    if not _is_number(lr) or lr < 0:
        raise ValueError(f"lr: expected a float >= 0, got {lr!r}")
    for name in ("beta1", "beta2", "beta3"):
        beta = group[name]
        if not _is_number(beta) or not 0.0 <= beta < 1.0:
            raise ValueError(f"{name}: expected a float in [0, 1), got {beta!r}")
    alpha = group["alpha"]
    if not _is_number(alpha) or alpha < 0:
        raise ValueError(f"alpha: expected a float >= 0, got {alpha!r}")
    eps = group["eps"]
    if not _is_number(eps) or not eps > 0:
        raise ValueError(f"eps: expected a float > 0, got {eps!r}")
    wd = group["weight_decay"]
    if not _is_number(wd) or wd < 0:
        raise ValueError(f"weight_decay: expected a float >= 0, got {wd!r}")
    for name, low in (("slow_period", 1), ("ns_steps", 0)):
        value = group[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    if group["ns_dtype"] not in _FLOAT_DTYPES:
        raise ValueError(f"ns_dtype: expected one of {[str(d) for d in _FLOAT_DTYPES]}, got {group['ns_dtype']!r}")
    if group["precondition"] not in ("after", "before"):
        raise ValueError(f"precondition: expected one of ['after', 'before'], got {group['precondition']!r}")
    if not isinstance(group["ema"], bool):
        raise ValueError(f"ema: expected a bool, got {group['ema']!r}")
    ortho = group["orthogonalize"]
    if ortho is not None and not isinstance(ortho, bool):
        raise ValueError(f"orthogonalize: expected None (auto: tensors with >= 2 dims) or a bool, got {ortho!r}")
    if ortho:
        flat = [tuple(p.shape) for p in group["params"] if p.dim() < 2]
        if flat:
            raise ValueError(f"orthogonalize: expected only params with >= 2 dims when True, got shapes {flat}")


class M3(torch.optim.Optimizer):
    r"""Multi-scale Momentum Muon (Nested Learning, Algorithm 1): a fast and a slow momentum, each
    orthogonalised by Newton–Schulz, combined and divided by an accumulated second moment.

    Per parameter, with gradient `g_t` at step `t = 1, 2, …` (counted per parameter), slow period
    `f`, `k = ⌊t / f⌋` slow updates done after step t, and `NS` = `newton_schulz(·, ns_steps)`:

    ```
    M1_t = M1_{t−1} + β1 g_t                                    fast momentum (every step)
    V_t  = V_{t−1}  + β2 g_t²                                   second moment (every step)
    O1_t = NS(M1_t)
    Θ_t  = (1 − η λ) Θ_{t−1} − η (O1_t + α O2) / (√V_t + ε)     O2: the slow direction cached below
    if t ≡ 0 (mod f):                                           slow level (CMS), after the step:
        M2 ← M2 + β3 Σ_{i=t−f+1..t} g_i                         the f gradients since the last slow update
        O2 ← NS(M2)                                             used by steps t+1 … t+f
    ```
    All buffers start at zero, so `O2 = 0` for the first `f` steps. With `ema=True` every
    accumulator becomes a bias-corrected exponential average instead (Adam's convention):
    `M1_t = β1 M1_{t−1} + (1 − β1) g_t`, `V_t = β2 V_{t−1} + (1 − β2) g_t²`,
    `M2_k = β3 M2_{k−1} + (1 − β3) (Σ_block g) / f`, and M1, V, M2 enter the equations above as
    `M1_t / (1 − β1^t)`, `V_t / (1 − β2^t)`, `M2_k / (1 − β3^k)`. With `precondition="before"` the
    second moment divides inside the orthogonalisation instead:
    `O1_t = NS(M1_t / (√V_t + ε))`, `O2 ← NS(M2 / (√V_t + ε))` (V of the refresh step) and
    `Θ_t = (1 − η λ) Θ_{t−1} − η (O1_t + α O2)`.

    Params with fewer than 2 dims (biases, norm gains), and any param in a group with
    `orthogonalize=False`, take the Adam-style branch: the same equations with `NS` replaced by the
    identity, e.g. `Θ ← (1 − η λ) Θ − η (M1 + α M2) / (√V + ε)` (Muon setups hand such params to
    Adam; this keeps one optimiser and the multi-scale momentum). Params with more than 2 dims
    (conv filters) are orthogonalised as the matrix `[shape[0], prod(shape[1:])]`, as Muon does.

    Decisions where the public text of Algorithm 1 leaves room:
    * [decision] Accumulators are literal sums (`M ← M + β g`, `V ← V + β2 g²`) by default, as
      Algorithm 1 writes them. Consequences: NS divides by the Frobenius norm, so β1 and β3 do not
      change O1, O2 (up to NS's eps) and matter only in the Adam branch; V is AdaGrad's sum, so the
      step shrinks like 1/√t. `ema=True` gives the bounded, forgetting variant.
    * [decision] V divides after orthogonalisation, elementwise, as Algorithm 1 writes it
      (`precondition="after"`, the default). O is not aligned elementwise with g, so the ratio
      `O / (√V + ε)` is bounded only by ε where a gradient entry is tiny, and the step scales like
      1/|g|. Measured on a 16-32-4 tanh MLP (50 steps, η = 1e-3): with ε = 1e-8, single entries
      moved by up to 29 in one step and 2 of 20 seeds ended above their initial loss; with
      ε = 1e-4, all 30 seeds ended below 0.45× their initial loss. So raise ε towards the gradient scale
      (it caps the step at η |O| / ε), or use `precondition="before"` (scale-free, Muon-like steps;
      take η about 10× larger).
    * [decision] The slow sum holds exactly the f gradients of the finished block (the paper's
      index range `(k−1)f … kf` would count the boundary gradient twice), and M2/O2 are refreshed
      at the end of the step that finishes the block. The trajectory is the one of Algorithm 1,
      where the refresh opens the next block.
    * [decision] O2 is cached in the state (NS runs once per step for M1 and once per f steps for
      M2) at the cost of one more buffer: state per param is M1, M2, O2, V and the gradient sum.
    * [decision] Weight decay is decoupled (AdamW) and is not part of Algorithm 1 (λ = 0 by default).
      Defaults are ours; the paper states none.

    Args:
        params (Iterable):
            Parameters or param groups; every hyper-parameter below can be set per group.
        lr (float):
            η. Default: `1e-3`.
        beta1 (float, Optional):
            Coefficient of the fast momentum M1, in [0, 1). Default: `0.9`.
        beta2 (float, Optional):
            Coefficient of the second moment V, in [0, 1). Default: `0.999`.
        beta3 (float, Optional):
            Coefficient of the slow momentum M2, in [0, 1). Default: `0.9`.
        alpha (float, Optional):
            Weight α of the slow direction O2 against the fast one O1. Default: `1.0`.
        slow_period (int, Optional):
            f: M2 takes one update every f steps from the f gradients summed since its last one.
            Default: `10`.
        eps (float, Optional):
            ε added to √V; with `precondition="after"` it also caps the step (see above). Default: `1e-8`.
        weight_decay (float, Optional):
            λ of the decoupled decay `Θ ← (1 − η λ) Θ`. Default: `0.0`.
        ns_steps (int, Optional):
            Newton–Schulz iterations (quintic, Muon's coefficients). Default: `5`.
        ns_dtype (torch.dtype, Optional):
            Dtype of the Newton–Schulz iteration. Default: `torch.bfloat16` (as Muon).
        ema (bool, Optional):
            Exponential, bias-corrected accumulators instead of Algorithm 1's sums. Default: `False`.
        precondition (str, Optional):
            Where √V + ε divides: `"after"` the orthogonalisation (Algorithm 1) or `"before"` it.
            Default: `"after"`.
        orthogonalize (bool, Optional):
            `None`: params with >= 2 dims are orthogonalised, the rest take the Adam branch;
            `False`: the whole group takes the Adam branch (embeddings, output heads);
            `True`: like `None`, but every param of the group must have >= 2 dims. Default: `None`.

    Examples::
        >>> model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
        >>> opt = M3(model.parameters(), lr=1e-3, slow_period=10)
        >>> loss = model(torch.randn(8, 16)).pow(2).mean()
        >>> loss.backward(); opt.step(); opt.zero_grad()
        >>> # per-group settings: a slower level for the hidden weights, the head on the Adam branch
        >>> opt = M3([{"params": [model[0].weight], "slow_period": 50},
        ...           {"params": [model[0].bias, model[2].weight, model[2].bias], "orthogonalize": False}])
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        beta3: float = 0.9,
        alpha: float = 1.0,
        slow_period: int = 10,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        ns_steps: int = 5,
        ns_dtype: torch.dtype = torch.bfloat16,
        ema: bool = False,
        precondition: str = "after",
        orthogonalize: Optional[bool] = None,
    ):
        defaults = dict(lr=lr, beta1=beta1, beta2=beta2, beta3=beta3, alpha=alpha, slow_period=slow_period,
                        eps=eps, weight_decay=weight_decay, ns_steps=ns_steps, ns_dtype=ns_dtype, ema=ema,
                        precondition=precondition, orthogonalize=orthogonalize)
        _check_hyperparameters(dict(defaults, params=[]))
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        _check_hyperparameters(self.param_groups[-1])

    @staticmethod
    def _direction(m: torch.Tensor, orthogonal: bool, group: dict) -> torch.Tensor:
        """O = NS(m) on the [shape[0], -1] view for matrix params; m itself on the Adam branch."""
        if not orthogonal:
            return m
        o = newton_schulz(m.reshape(m.shape[0], -1), group["ns_steps"], dtype=group["ns_dtype"])
        return o.view_as(m)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None):
        """Take one M3 step for every param with a gradient; returns the closure's loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            orthogonalize = group["orthogonalize"] is not False
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("M3: sparse gradients are not supported")
                self._update(p, group, orthogonalize and p.dim() >= 2)
        return loss

    def _update(self, p: torch.Tensor, group: dict, orthogonal: bool) -> None:
        g = p.grad
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["slow_step"] = 0
            for name in ("fast_momentum", "slow_momentum", "slow_direction", "second_moment", "grad_sum"):
                state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
        lr, eps, alpha, f = group["lr"], group["eps"], group["alpha"], group["slow_period"]
        b1, b2, b3 = group["beta1"], group["beta2"], group["beta3"]
        state["step"] += 1
        t = state["step"]
        m1, v, s = state["fast_momentum"], state["second_moment"], state["grad_sum"]

        if group["ema"]:
            m1.mul_(b1).add_(g, alpha=1.0 - b1)
            v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
            m1_hat, v_hat = m1 / (1.0 - b1 ** t), v / (1.0 - b2 ** t)
        else:
            m1.add_(g, alpha=b1)                     # M1 ← M1 + β1 g
            v.addcmul_(g, g, value=b2)               # V ← V + β2 g²
            m1_hat, v_hat = m1, v
        s.add_(g)

        denom = v_hat.sqrt().add_(eps)
        if group["weight_decay"] != 0:
            p.mul_(1.0 - lr * group["weight_decay"])
        if group["precondition"] == "after":         # Θ ← Θ − η (O1 + α O2) / (√V + ε)
            update = self._direction(m1_hat, orthogonal, group) + alpha * state["slow_direction"]
            p.sub_(lr * (update / denom))
        else:                                        # Θ ← Θ − η (NS(M1 / (√V + ε)) + α O2)
            update = self._direction(m1_hat / denom, orthogonal, group) + alpha * state["slow_direction"]
            p.sub_(lr * update)

        if t % f == 0:                               # slow level: one update per f steps
            state["slow_step"] += 1
            k = state["slow_step"]
            m2 = state["slow_momentum"]
            if group["ema"]:
                m2.mul_(b3).add_(s, alpha=(1.0 - b3) / f)
                m2_hat = m2 / (1.0 - b3 ** k)
            else:
                m2.add_(s, alpha=b3)                 # M2 ← M2 + β3 Σ_block g
                m2_hat = m2
            if group["precondition"] == "before":
                m2_hat = m2_hat / denom
            state["slow_direction"].copy_(self._direction(m2_hat, orthogonal, group))
            s.zero_()
