"""The kernels' custom ops called in plain eager mode without torch.library's dispatch.

A `torch.library.custom_op` call goes through the dispatcher, an autograd wrapper, a
`torch._dynamo.disable` frame and a pytree pass over its arguments: on the CPU that took about 75 µs
per call for the chunk-gates op (six outputs, autograd registered) against 11 µs for its launch
code, and the triton forward + backward of `linear_memory` made six such calls then (without DGD;
two since its ops took the gates and the DGD inverse inside, `linear_memory/triton.py`);
its host time went from 974 to 661 µs (B1 T128 H2 D16, bf16, 200 calls on this project's CPU
machine with the Triton launches stubbed; on an H100 that call was host-bound at D64,
benchmarks/results/h100-2026-11-27.md).

Where nothing traces or transforms the call (no torch.compile, no fake or subclass tensors, no
dispatch or function mode — `torch.device(...)` as a context is one —, no functorch transform),
`eager_op` runs the op's implementation directly, or, where an input needs a gradient, an
`autograd.Function` with the op's own setup_context and backward. Every other call goes to the
custom op, which keeps torch.compile, opcheck and the fake kernels."""
import typing
from typing import Callable, Optional, Tuple

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


def plain_eager(args) -> bool:
    """Whether a call on `args` runs outside every tracing and transform, on plain tensors."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch._C._are_functorch_transforms_active():
        return False
    if torch._C._is_torch_function_mode_enabled() or _get_current_dispatch_mode() is not None:
        return False
    return all(type(a) in _PLAIN_TYPES for a in args if isinstance(a, torch.Tensor))


def eager_op(name: str, impl: Callable, *, fake: Callable, setup_context: Optional[Callable] = None,
             backward: Optional[Callable] = None) -> Tuple[Callable, "torch.library.CustomOpDef"]:
    """(a function equal to the custom op, the custom op): `impl` as the custom op `name` with the
    fake kernel `fake` and, where given, the autograd formula `backward` with `setup_context`. A
    list output (`List[Tensor]` in `impl`'s annotation) reaches `backward` as one list of
    gradients, as torch.library passes it. In plain eager calls the backward is first-order, as
    the custom op's: a double backward through it raises instead of treating the kernels as
    constants."""
    op = torch.library.custom_op(name, impl, mutates_args=())
    op.register_fake(fake)
    if backward is not None:
        op.register_autograd(backward, setup_context=setup_context)
    return _eager_call(name, op, impl, setup_context, backward), op


def _eager_call(name: str, op, impl: Callable, setup_context: Optional[Callable],
                backward: Optional[Callable]) -> Callable:
    if backward is None:                 # an op without autograd: where a gradient is asked of it, the op raises
        def call(*args):
            return impl(*args) if plain_eager(args) and not _needs_grad(args) else op(*args)
        return call
    returns_list = typing.get_origin(typing.get_type_hints(impl)["return"]) in (list, typing.List)

    def forward(ctx, *args):
        out = impl(*args)
        setup_context(ctx, args, out)
        return tuple(out) if returns_list else out

    def backward_first_order(ctx, *grads):
        with torch.no_grad():
            result = backward(ctx, list(grads)) if returns_list else backward(ctx, *grads)
        return _raise_if_differentiated(result, name) if torch.is_grad_enabled() else result

    Function = type(f"{impl.__name__}_eager", (torch.autograd.Function,),
                    {"forward": staticmethod(forward), "backward": staticmethod(backward_first_order)})

    def call(*args):
        if not plain_eager(args):
            return op(*args)
        if not _needs_grad(args):
            return impl(*args)
        out = Function.apply(*args)
        return list(out) if returns_list else out
    return call


def _needs_grad(args) -> bool:
    return torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)


def _raise_if_differentiated(grads: tuple, name: str) -> tuple:
    """`grads` (of a backward run with create_graph) as tensors whose own backward raises, like a
    custom op without an autograd formula; a double backward would otherwise see the kernels as
    constants and drop their second-order terms (`once_differentiable` does the same only where
    the incoming gradients require grad)."""
    present = [i for i, g in enumerate(grads) if isinstance(g, torch.Tensor)]
    if not present:
        return grads
    error = torch._C._functions.DelayedError(f"{name}: the Triton backward is first-order; a double "
                                             f"backward needs backend='torch'", len(present))
    wrapped = error(*(grads[i].detach().requires_grad_() for i in present))
    wrapped = wrapped if isinstance(wrapped, tuple) else (wrapped,)
    out = list(grads)
    for i, g in zip(present, wrapped):
        out[i] = g
    return tuple(out)
