"""`common/eager_ops.py`: plain eager calls skip torch.library's dispatch with the same numbers and
gradients; traced, faked or mode-wrapped calls go to the custom op; the backward stays first-order."""
from typing import List, Optional

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from nested_kernels.common.eager_ops import eager_op, plain_eager


def _impl(x: torch.Tensor, y: Optional[torch.Tensor], scale: float) -> List[torch.Tensor]:
    return [x * scale, x.new_empty(0) if y is None else x * y]


def _fake(x, y, scale):
    return [torch.empty_like(x), x.new_empty(0) if y is None else torch.empty_like(x)]


def _setup_context(ctx, inputs, output):
    x, y, ctx.scale = inputs
    ctx.save_for_backward(x, x.new_empty(0) if y is None else y)
    ctx.has_y = y is not None


def _backward(ctx, grads):
    x, y = ctx.saved_tensors
    g_scaled, g_prod = grads
    dx = g_scaled * ctx.scale
    if ctx.has_y and g_prod is not None:
        return dx + g_prod * y, g_prod * x, None
    return dx, None, None


call, op = eager_op("nested_kernels_test::scaled_and_product", _impl, fake=_fake, setup_context=_setup_context,
                    backward=_backward)


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _inputs():
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(5, 3, generator=gen, dtype=torch.float64).requires_grad_(),
            torch.randn(5, 3, generator=gen, dtype=torch.float64).requires_grad_())


def test_eager_call_matches_the_custom_op():
    x, y = _inputs()
    fast, slow = call(x, y, 1.5), op(x, y, 1.5)
    assert isinstance(fast, list) and len(fast) == 2
    assert "eager" in type(fast[0].grad_fn).__name__ and "eager" not in type(slow[0].grad_fn).__name__
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    weights = [torch.randn_like(t) for t in fast]
    grads_fast = torch.autograd.grad(sum((w * t).sum() for w, t in zip(weights, fast)), (x, y))
    grads_slow = torch.autograd.grad(sum((w * t).sum() for w, t in zip(weights, slow)), (x, y))
    for a, b in zip(grads_fast, grads_slow):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.autograd.gradcheck(lambda x, y: tuple(call(x, y, 1.5)), (x, y))


def test_eager_call_without_gradients_runs_the_implementation():
    x, y = _inputs()
    with torch.no_grad():
        out = call(x, y, 2.0)
    assert out[0].grad_fn is None and not out[0].requires_grad
    out = call(x.detach(), None, 2.0)
    assert out[1].numel() == 0 and out[0].grad_fn is None


def test_double_backward_raises():
    x, y = _inputs()
    (dx,) = torch.autograd.grad(call(x, y, 1.5)[1].sum(), x, create_graph=True)
    assert dx.requires_grad
    with pytest.raises(RuntimeError, match="first-order"):
        dx.sum().backward()


def test_modes_and_fake_tensors_take_the_custom_op():
    x, y = _inputs()
    assert plain_eager((x, y, 1.0)) and plain_eager((torch.nn.Parameter(x.detach()), None))
    recorder = _Recorder()
    with recorder:
        assert not plain_eager((x,))
        call(x, y, 1.5)
    assert any("scaled_and_product" in name for name in recorder.ops)     # the op reached the dispatcher
    mode = FakeTensorMode()
    fx = mode.from_tensor(x.detach())
    with mode:
        out = call(fx, None, 1.5)
    assert out[0].shape == x.shape and out[1].numel() == 0


def test_compiling_takes_the_custom_op(monkeypatch):
    x, y = _inputs()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not plain_eager((x, y))
    assert "eager" not in type(call(x, y, 1.5)[0].grad_fn).__name__


def test_op_without_autograd_keeps_raising_where_a_gradient_is_asked():
    """An op registered without a backward (the kernels' backward ops) runs its implementation in
    plain eager only where no gradient is asked of it; otherwise the custom op raises, as before,
    rather than returning results that silently do not require grad."""
    no_grad_call, _ = eager_op("nested_kernels_test::scaled_no_autograd", _impl, fake=_fake)
    x, y = _inputs()
    with torch.no_grad():
        out = no_grad_call(x, y, 2.0)
    torch.testing.assert_close(out[0], 2.0 * x.detach(), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="autograd"):
        no_grad_call(x, y, 2.0)[0].sum().backward()
