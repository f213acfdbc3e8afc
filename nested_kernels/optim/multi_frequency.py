"""Multi-frequency outer updates (SPEC §5): the outer-loop reading of the Continuum Memory System.

A CMS level ℓ is frozen for C^(ℓ) steps and then takes one step with the gradients it
collected meanwhile (paper eq. 71, SPEC §4). `MultiFrequencyOptimizer` applies that rule to
the outer (training) loop: parameter group g has a `period` C_g; `step()` runs every outer
step, adds each gradient into an fp32 accumulator, and lets the wrapped optimiser step group g
only on the outer steps that are multiples of C_g, with the accumulated gradient.

The accumulate / scale / zero of all groups is one fused multi-tensor launch
(`triton_kernels/optim/multi_frequency.py`) on CUDA, and a handful of `torch._foreach_*` calls
elsewhere (see `fused`).
"""
import importlib.util
import numbers
from collections import defaultdict
from typing import Callable, Dict, List, Optional, Sequence

import torch

REDUCTIONS = ("sum", "mean")
FUSED_GRAD_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_period(period, where: str) -> int:
    if isinstance(period, bool) or not isinstance(period, numbers.Integral) or period < 1:
        raise ValueError(f"period: expected an integer >= 1, got {period!r} ({where})")
    return int(period)


def _check_reduction(reduction, where: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r} ({where})")
    return reduction


def _accumulator_dtype(p: torch.Tensor) -> torch.dtype:
    """fp32 for fp32 / bf16 / fp16 parameters; fp64 and complex parameters keep their own precision."""
    return torch.promote_types(p.dtype, torch.float32)


def accumulate_foreach(grads: List[torch.Tensor], accs: List[torch.Tensor], due: List[bool],
                       divisors: List[int]) -> None:
    """The unfused tier, same result as the kernel: `s = accs[i] + grads[i]` (in the accumulator's
    dtype), then `grads[i] = s / divisors[i]`, `accs[i] = 0` if `due[i]`, else `accs[i] = s`, `grads[i] = 0`."""
    if not grads:
        return
    torch._foreach_add_(accs, grads)
    idle = [g for g, d in zip(grads, due) if not d]
    if idle:
        torch._foreach_zero_(idle)
    scaled = [(a, float(q)) for a, d, q in zip(accs, due, divisors) if d and q != 1]
    if scaled:
        torch._foreach_div_([a for a, _ in scaled], [q for _, q in scaled])
    due_accs = [a for a, d in zip(accs, due) if d]
    if due_accs:
        torch._foreach_copy_([g for g, d in zip(grads, due) if d], due_accs)
        torch._foreach_zero_(due_accs)


def _fused_unsupported(grads: Sequence[torch.Tensor], accs: Sequence[torch.Tensor]) -> Optional[str]:
    """Why the Triton kernel cannot take these tensors, or None."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    for g, a in zip(grads, accs):
        if g.dtype not in FUSED_GRAD_DTYPES:
            return f"it takes fp32/bf16/fp16 gradients, got {g.dtype}"
        if a.dtype != torch.float32:
            return f"it takes fp32 accumulators, got {a.dtype}"
        if not (g.is_contiguous() and a.is_contiguous()):
            return "it takes contiguous gradients"
    return None


def accumulate_fused(grads: List[torch.Tensor], accs: List[torch.Tensor], due: List[bool],
                     divisors: List[int]) -> None:
    """`accumulate_foreach` as one Triton launch (per device); interpreted on CPU tensors."""
    from ..triton_kernels.optim.multi_frequency import multi_frequency_accumulate

    by_device = defaultdict(list)
    for item in zip(grads, accs, due, divisors):
        by_device[item[0].device].append(item)
    for items in by_device.values():
        multi_frequency_accumulate(*(list(column) for column in zip(*items)))


class MultiFrequencyOptimizer:
    r"""Wraps a `torch.optim.Optimizer` so that each parameter group steps only every `period`
    outer steps, with the gradient accumulated over those steps (SPEC §5, paper eq. 71).

    Call `step()` once per outer step, as with any optimiser. For every group g, with its own
    counter n_g (steps seen since the start or since the group was added):
    ```
    n_g += 1
    acc_p += p.grad  (fp32),  p.grad = 0                        for p in g
    if n_g % period_g == 0:                                     # g is due
        p.grad = acc_p            ("sum")                       for p in g
        p.grad = acc_p / period_g ("mean", the default)
        acc_p = 0
        the wrapped optimiser steps g (and only the due groups, in one call)
    ```
    A group not due is not stepped at all: its parameters and the wrapped optimiser's state for
    them (momenta, Adam's step count) stay as they are. To step only the due groups, `step()`
    sets `.grad = None` on the parameters of the other groups for the duration of the wrapped
    `step()` and then puts their (zeroed) gradients back: torch.optim optimisers skip a
    parameter whose `.grad` is None entirely (no update, no weight decay, no state change), in
    their for-loop, foreach and fused forms alike. The wrapped optimiser must honour that
    convention; optimisers that need a closure (LBFGS) are not supported.

    Reduction: the default is **"mean"**. Eq. 71 writes the level's step as the sum
    Σ_{t in chunk} η_t ∇ℓ_t; with one learning rate for the chunk this is "sum" with η, or
    "mean" with C·η. "mean" is the default because it keeps the applied gradient on the scale of
    one step's gradient (an average over C mini-batches, like a C× larger batch), so the
    learning rate, gradient clipping and weight decay tuned for period 1 carry over to any
    period, and changing a period does not rescale a level's update. "sum" is eq. 71 read
    literally with a constant learning rate (for SGD, "mean" with lr·C). For Adam, whose update
    does not depend on the gradient's scale, the two differ only through eps and through L2
    weight decay (`weight_decay` added to the gradient weighs C times less against a sum).

    After `step()` the gradients of the due groups hold the gradient the wrapped optimiser used
    (as after a plain optimiser's step: call `zero_grad()` before the next backward); those of
    the other groups are zero (consumed into the accumulators). A parameter whose `.grad` is
    None on every step of a period gets no gradient at its due step (the wrapped optimiser skips
    it, as torch does for unused parameters); one that had a gradient on some steps of the
    period gets the accumulation of those, and "mean" still divides by the period. Groups with
    period 1 and nothing accumulated bypass the accumulators: the wrapper then is the wrapped
    optimiser exactly, and allocates no memory for them. Memory: one accumulator per parameter
    of the groups with period > 1 (fp32; fp64 and complex parameters keep their dtype),
    allocated at the first step and kept.

    Args:
        optimizer (torch.optim.Optimizer):
            The optimiser to step; it keeps its own state and its `param_groups` (shared with
            this wrapper). Attach learning-rate schedulers to it, not to the wrapper.
        periods (Sequence[int], Optional):
            One period per parameter group of `optimizer`, stored as the groups' `"period"`
            key. Groups may instead carry a `"period"` key themselves (giving both with
            different values is an error). Default: `None` (a group's `"period"` key, else 1).
        reduction (str, Optional):
            `"mean"` or `"sum"`, for groups without a `"reduction"` key. Default: `"mean"`.
        fused (bool, Optional):
            `True`: the Triton kernel (one launch per device; interpreted on CPU tensors, which
            is slow and meant for tests); `False`: `torch._foreach_*`; `None`: the kernel when
            every gradient is on CUDA, fp32/bf16/fp16 and contiguous, else foreach. Both give
            bitwise identical results. Default: `None`.

    Examples::
        >>> model = torch.nn.ModuleDict(dict(fast=torch.nn.Linear(8, 8), slow=torch.nn.Linear(8, 8)))
        >>> inner = torch.optim.AdamW([
        ...     dict(params=model.fast.parameters()),
        ...     dict(params=model.slow.parameters(), period=4)])
        >>> opt = MultiFrequencyOptimizer(inner)          # or periods=[1, 4]
        >>> for x in torch.randn(8, 2, 8):
        ...     model.slow(model.fast(x)).square().mean().backward()
        ...     opt.step()                                 # slow steps on outer steps 4 and 8
        ...     opt.zero_grad()
    """

    def __init__(self, optimizer: torch.optim.Optimizer, periods: Optional[Sequence[int]] = None,
                 reduction: str = "mean", fused: Optional[bool] = None):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if fused not in (True, False, None):
            raise ValueError(f"fused: expected True, False or None, got {fused!r}")
        if fused and importlib.util.find_spec("triton") is None:
            raise RuntimeError("fused=True needs triton, which is not installed")
        self.default_reduction = _check_reduction(reduction, "reduction argument")
        groups = optimizer.param_groups
        if periods is not None:
            if isinstance(periods, (str, bytes)) or not isinstance(periods, Sequence) or len(periods) != len(groups):
                raise ValueError(f"periods: expected one period per param group ({len(groups)}), got {periods!r}")
            for i, (group, period) in enumerate(zip(groups, periods)):
                period = _check_period(period, f"periods[{i}]")
                if "period" in group and group["period"] != period:
                    raise ValueError(f"periods: expected periods[{i}] to equal param group {i}'s period "
                                     f"{group['period']!r}, got {period}")
                group["period"] = period
        self.optimizer = optimizer
        self.fused = fused
        self._group_steps: List[int] = []
        self._accumulators: Dict[torch.Tensor, torch.Tensor] = {}
        self._pending: Dict[torch.Tensor, bool] = {}        # parameters with a gradient in the current period
        self._sync_groups()

    # -- what the wrapped optimiser holds ---------------------------------------------------

    @property
    def param_groups(self) -> List[dict]:
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    @property
    def defaults(self) -> dict:
        return self.optimizer.defaults

    def __repr__(self) -> str:
        periods = [g["period"] for g in self.param_groups]
        return f"MultiFrequencyOptimizer(periods={periods}, fused={self.fused}, optimizer={self.optimizer!r})"

    def _sync_groups(self) -> None:
        """Default and check every group's period and reduction; a counter per group (groups added to
        the wrapped optimiser directly start at 0)."""
        for i, group in enumerate(self.param_groups):
            group["period"] = _check_period(group.setdefault("period", 1), f"param group {i}")
            _check_reduction(group.setdefault("reduction", self.default_reduction), f"param group {i}")
        self._group_steps += [0] * (len(self.param_groups) - len(self._group_steps))

    def add_param_group(self, param_group: dict) -> None:
        """Adds a group to the wrapped optimiser (its `"period"` defaults to 1); its counter starts at 0."""
        where = f"param group {len(self.param_groups)}"
        _check_period(param_group.get("period", 1), where)
        _check_reduction(param_group.get("reduction", self.default_reduction), where)
        self.optimizer.add_param_group(param_group)
        self._sync_groups()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    # -- the step -----------------------------------------------------------------------------

    def _accumulator(self, p: torch.Tensor) -> torch.Tensor:
        acc = self._accumulators.get(p)
        if acc is None:
            acc = torch.zeros_like(p, dtype=_accumulator_dtype(p), memory_format=torch.contiguous_format)
            self._accumulators[p] = acc
        return acc

    def _use_fused(self, grads, accs) -> bool:
        if self.fused is False:
            return False
        reason = _fused_unsupported(grads, accs)
        if self.fused and reason is not None:
            raise RuntimeError(f"MultiFrequencyOptimizer(fused=True): the Triton kernel cannot run: {reason}")
        return self.fused or (reason is None and all(g.device.type == "cuda" for g in grads))

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None):
        """One outer step: accumulate every group's gradients, step the due groups. Returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._sync_groups()
        grads, accs, due, divisors = [], [], [], []
        due_groups = []
        for i, group in enumerate(self.param_groups):
            self._group_steps[i] += 1
            period = group["period"]
            is_due = self._group_steps[i] % period == 0
            divisor = period if group["reduction"] == "mean" else 1
            due_groups.append(is_due)
            for p in group["params"]:
                pending = p in self._pending
                if period == 1 and not pending:
                    continue                                                  # the wrapped optimiser, as is
                if p.grad is None:
                    if not (is_due and pending):
                        continue
                    p.grad = torch.zeros_like(p)
                elif p.grad.is_sparse:
                    raise RuntimeError("MultiFrequencyOptimizer does not support sparse gradients")
                grads.append(p.grad)
                accs.append(self._accumulator(p))
                due.append(is_due)
                divisors.append(divisor)
                if is_due:
                    self._pending.pop(p, None)
                else:
                    self._pending[p] = True
        if grads:
            accumulate = accumulate_fused if self._use_fused(grads, accs) else accumulate_foreach
            accumulate(grads, accs, due, divisors)
        if any(due_groups):
            self._step_due(due_groups)
        return loss

    def _step_due(self, due_groups: List[bool]) -> None:
        """The wrapped optimiser's step on the due groups only: the others' gradients are hidden (None)."""
        hidden = []
        for group, is_due in zip(self.param_groups, due_groups):
            if not is_due:
                for p in group["params"]:
                    if p.grad is not None:
                        hidden.append((p, p.grad))
                        p.grad = None
        try:
            self.optimizer.step()
        finally:
            for p, grad in hidden:
                p.grad = grad

    # -- checkpoints --------------------------------------------------------------------------

    def _params(self) -> List[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self) -> dict:
        """The wrapped optimiser's state dict (its groups carry "period" and "reduction"), the group
        counters, and the accumulators and pending flags by parameter index (in group order, as
        torch.optim numbers them). Tensors are references, as in torch.optim."""
        self._sync_groups()
        index = {p: i for i, p in enumerate(self._params())}
        return {
            "optimizer": self.optimizer.state_dict(),
            "group_steps": list(self._group_steps),
            "accumulators": {index[p]: acc for p, acc in self._accumulators.items() if p in index},
            "pending": sorted(index[p] for p in self._pending if p in index),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Loads `state_dict()` of a wrapper around an optimiser with the same groups; periods and
        reductions come back with the wrapped optimiser's groups."""
        missing = {"optimizer", "group_steps", "accumulators", "pending"} - set(state_dict)
        if missing:
            raise ValueError(f"state_dict: expected a MultiFrequencyOptimizer state dict, missing {sorted(missing)}")
        steps = list(state_dict["group_steps"])
        if len(steps) != len(self.param_groups):
            raise ValueError(f"state_dict: expected group_steps for {len(self.param_groups)} param groups, "
                             f"got {len(steps)}")
        params = self._params()
        indices = list(state_dict["accumulators"]) + list(state_dict["pending"])
        if any(not 0 <= i < len(params) for i in indices):
            raise ValueError(f"state_dict: expected parameter indices below {len(params)}, got {sorted(indices)}")
        for i, saved in state_dict["accumulators"].items():
            if saved.numel() != params[i].numel():
                raise ValueError(f"state_dict: expected {params[i].numel()} elements in accumulator {i} "
                                 f"(its parameter's), got {saved.numel()}")
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self._accumulators = {}
        for i, saved in state_dict["accumulators"].items():
            acc = self._accumulator(params[i])
            acc.copy_(saved.reshape(acc.shape))
        self._group_steps = steps
        self._pending = {params[i]: True for i in state_dict["pending"]}
        self._sync_groups()
