"""`torch.compile(fullgraph=True)` traces the ops without graph breaks and matches eager."""
import pytest
import torch

from nested_kernels import linear_memory, mlp_memory
from nested_kernels._extension import has_cpp_op
from nested_kernels.cms import cms_level
from nested_kernels.mlp_memory import MLPMemoryState
from tests.helpers import gates, qkv

B, T, H, K = 2, 32, 2, 8


def memory_inputs():
    return (*qkv(B, T, H, K, K, dtype=torch.float32), *gates(B, T, H, dtype=torch.float32))


def linear_torch(q, k, v, lr, ret, mom):
    o, s = linear_memory(q, k, v, lr, ret, mom, dgd=True, chunk_size=16, output_final_state=True, backend="torch")
    return o, s.memory, s.momentum


def linear_cpp(q, k, v, lr, ret, mom):
    o, s = linear_memory(q, k, v, lr, ret, mom, dgd=True, chunk_size=16, output_final_state=True, backend="cpp")
    return o, s.memory, s.momentum


def test_compile_linear_memory_torch_inductor():
    """The torch tier under the default (inductor) compiler, forward and backward."""
    inputs = [x.requires_grad_() for x in memory_inputs()]
    compiled = torch.compile(linear_torch, fullgraph=True)
    expected, actual = linear_torch(*inputs), compiled(*inputs)
    for e, a in zip(expected, actual):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)
    g_expected = torch.autograd.grad(expected[0].sum(), inputs)
    g_actual = torch.autograd.grad(actual[0].sum(), inputs)
    for e, a in zip(g_expected, g_actual):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


def test_compile_mlp_memory_torch():
    q, k, v, lr, ret, mom = memory_inputs()
    state = MLPMemoryState(torch.randn(1, H, K, 16) / 3, torch.randn(1, H, 16, K) / 4)

    def fn(q, k, v, lr, ret, mom):
        return mlp_memory(q, k, v, lr, ret, mom, initial_state=state, dgd=True, self_target=True,
                          chunk_size=16, backend="torch")[0]

    torch.testing.assert_close(torch.compile(fn, fullgraph=True, backend="aot_eager")(q, k, v, lr, ret, mom),
                               fn(q, k, v, lr, ret, mom))


def test_compile_cms_level_torch():
    x = torch.randn(B, T, 8)
    w1, w2 = torch.randn(8, 16) / 3, torch.randn(16, 8) / 4

    def fn(x):
        return cms_level(x, w1, w2, period=8, lr=0.01, target=x, backend="torch")[0]

    torch.testing.assert_close(torch.compile(fn, fullgraph=True, backend="aot_eager")(x), fn(x))


@pytest.mark.skipif(not has_cpp_op("linear_memory_recurrent"), reason="compiled extension not built")
def test_compile_linear_memory_cpp_inductor():
    """The compiled op is opaque to the compiler: its fake kernel gives the output metadata."""
    inputs = memory_inputs()
    expected, actual = linear_cpp(*inputs), torch.compile(linear_cpp, fullgraph=True)(*inputs)
    for e, a in zip(expected, actual):
        torch.testing.assert_close(a, e, atol=0, rtol=0)
