"""The Triton backward of one chunk of `mlp_memory` (nested_kernels/mlp_memory/chunk_backward_triton.py)
against autograd through the torch tier on that chunk (SPEC §3, §7). Without a GPU the kernels run
in Triton's interpreter on small shapes; the `gpu` tests run the contract's shapes."""
import itertools

import pytest
import torch

from nested_kernels.mlp_memory import MLPMemoryState
from nested_kernels.mlp_memory.chunk_backward_triton import GRAD_NAMES, mlp_memory_chunk_backward_triton
from nested_kernels.mlp_memory.chunked import mlp_memory_chunked
from tests.helpers import gates, mlp_state, qkv, rms_ratio

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
F64 = torch.float64

pytestmark = pytest.mark.usefixtures("interpreter_memcheck")   # tests/conftest.py


def chunk_inputs(B, C, H, K, Dh, V, use_mom, dtype=F64, seed=0):
    """One chunk's inputs and the cotangents of its outputs and end state (fp64 on the CPU)."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = qkv(B, C, H, K, V)
    lr, ret, mom = gates(B, C, H, momentum=use_mom)
    state = mlp_state(B, H, K, Dh, V, momentum=use_mom)
    rand = lambda x: None if x is None else torch.randn(x.shape, generator=gen, dtype=F64)
    cot = (rand(v), *(rand(x) for x in state))
    return (q.to(dtype).double(), k.to(dtype).double(), v.to(dtype).double(), lr, ret, mom), state, cot


def oracle(inputs, state, cot, **flags):
    """torch.autograd.grad through `mlp_memory_chunked` on one chunk (chunk_size = C), in fp64."""
    q, k, v, lr, ret, mom = (None if x is None else x.detach().clone().requires_grad_() for x in inputs)
    st = MLPMemoryState(*(None if x is None else x.detach().clone().requires_grad_() for x in state))
    o, final = mlp_memory_chunked(q, k, v, lr, ret, mom, initial_state=st, chunk_size=q.shape[1],
                                  output_final_state=True, **flags)
    outs, grads_out = zip(*[(x, c) for x, c in zip((o, *final), cot) if x is not None])
    wrt = [q, k, v, lr, ret, mom, *st]
    got = iter(torch.autograd.grad(outs, [x for x in wrt if x is not None], grads_out))
    return [None if x is None else next(got) for x in wrt]


def kernel(inputs, state, cot, dtype=torch.float32, **flags):
    """The Triton chunk backward on q, k, v, do in `dtype`, gates and states in fp32."""
    q, k, v, lr, ret, mom = inputs
    to = lambda x, dt=torch.float32: None if x is None else x.to(DEVICE, dt)
    return mlp_memory_chunk_backward_triton(
        to(q, dtype), to(k, dtype), to(v, dtype), to(lr), to(ret), to(mom), *(to(x) for x in state),
        to(cot[0], dtype), *(to(x) for x in cot[1:]), **flags)


def check(B, C, H, K, Dh, V, use_mom, dtype=torch.float32, bound=None, **flags):
    flags = dict(dict(activation="silu", residual=True, dgd=False, self_target=False, read="current"), **flags)
    inputs, state, cot = chunk_inputs(B, C, H, K, Dh, V, use_mom, dtype)
    ref = oracle(inputs, state, cot, **flags)
    out = kernel(inputs, state, cot, dtype, **flags)
    bound = bound or (2e-6 if dtype == torch.float32 else 1e-2)
    for name, r, o, x in zip(GRAD_NAMES, ref, out, (*inputs, *state)):
        if r is None:
            assert o is None, name
            continue
        assert o.shape == x.shape, name
        assert o.dtype == (dtype if name in ("dq", "dk", "dv") else torch.float32), name   # like the input
        assert not o.isnan().any(), name
        err = rms_ratio(r, o.cpu())
        assert err <= bound, (name, err)


FLAGS = [
    # activation, residual, read, momentum, self_target
    ("silu", True, "chunk_start", False, False),
    ("gelu", True, "chunk_start", False, False),
    ("silu", False, "chunk_start", False, False),
    ("silu", True, "current", False, False),
    ("gelu", False, "current", False, False),
    ("silu", True, "current", True, False),
    ("gelu", True, "chunk_start", True, False),
    ("silu", True, "current", True, True),
    ("gelu", False, "current", False, True),
    ("silu", False, "chunk_start", True, True),
]


@pytest.mark.parametrize("act,residual,read,use_mom,self_target",
                         [pytest.param(*c, id="{}-res{}-{}-mom{}-self{}".format(*c)) for c in FLAGS])
def test_chunk_backward(act, residual, read, use_mom, self_target):
    check(2, 16, 2, 16, 32, 16, use_mom, activation=act, residual=residual, read=read, self_target=self_target)
