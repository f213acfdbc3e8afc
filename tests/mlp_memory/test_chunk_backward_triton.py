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


def chunk_inputs(B, C, H, K, Dh, V, use_mom, dtype=F64, seed=0, shared=False):
    """One chunk's inputs and the cotangents of its outputs and end state (fp64 on the CPU)."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = qkv(B, C, H, K, V)
    lr, ret, mom = gates(B, C, H, momentum=use_mom)
    state = mlp_state(B, H, K, Dh, V, momentum=use_mom, shared=shared)
    rand = lambda x: None if x is None else torch.randn(x.shape, generator=gen, dtype=F64)
    end_state = (x if x is None else x.expand(B, *x.shape[1:]) for x in state)   # the end state is per sequence
    cot = (rand(v), *(rand(x) for x in end_state))
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


def check(B, C, H, K, Dh, V, use_mom, dtype=torch.float32, bound=None, shared=False, edit=None, **flags):
    """Every gradient of the kernel against the oracle (rms ratio); `edit(inputs, state, cot)` may
    change the inputs first."""
    flags = dict(dict(activation="silu", residual=True, dgd=False, self_target=False, read="current"), **flags)
    inputs, state, cot = chunk_inputs(B, C, H, K, Dh, V, use_mom, dtype, shared=shared)
    if edit is not None:
        inputs, state, cot = edit(inputs, state, cot)
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
    # activation, residual, read, momentum, self_target, dgd
    ("silu", True, "chunk_start", False, False, False),
    ("gelu", True, "chunk_start", False, False, False),
    ("silu", False, "chunk_start", False, False, False),
    ("silu", True, "current", False, False, False),
    ("gelu", False, "current", False, False, False),
    ("silu", True, "current", True, False, False),
    ("gelu", True, "chunk_start", True, False, False),
    ("silu", True, "current", True, True, False),
    ("gelu", False, "current", False, True, False),
    ("silu", False, "chunk_start", True, True, False),
    ("silu", True, "chunk_start", False, False, True),
    ("gelu", True, "current", False, False, True),
    ("silu", True, "current", True, False, True),
    ("gelu", False, "chunk_start", True, True, True),
    ("silu", True, "current", True, True, True),
]


@pytest.mark.parametrize("act,residual,read,use_mom,self_target,dgd",
                         [pytest.param(*c, id="{}-res{}-{}-mom{}-self{}-dgd{}".format(*c)) for c in FLAGS])
def test_chunk_backward(act, residual, read, use_mom, self_target, dgd):
    check(2, 16, 2, 16, 32, 16, use_mom, activation=act, residual=residual, read=read, self_target=self_target,
          dgd=dgd)


@pytest.mark.parametrize("C", [1, 5, 8, 20, 40], ids=lambda C: f"C{C}")
def test_chunk_backward_partial(C):
    """Chunks of any length up to 64 (a partial last chunk is a short one): padded to 16, 32 or 64 rows."""
    check(1, C, 2, 16, 32, 16, True, read="current", self_target=C % 2 == 0, dgd=C != 8)


def test_chunk_backward_tiles(monkeypatch):
    """K, V and Dh wider than their tiles (16), Dh not a multiple of the tile (48), K != V without
    residual: products over K, V and Dh summed across tiles, partial tiles masked."""
    from nested_kernels.triton_kernels.mlp_memory import configs_bwd

    monkeypatch.setattr(configs_bwd, "TABLE", {part: {BT: (16, 16, 16 if cfg[2] else 0, *cfg[3:]) for BT, cfg in rows.items()}
                                               for part, rows in configs_bwd.TABLE.items()})
    check(1, 12, 1, 32, 48, 40, True, residual=False, read="current", activation="gelu", dgd=True)
    check(1, 12, 1, 32, 48, 32, True, residual=True, self_target=True, read="current")


def test_chunk_backward_shared_weights():
    """w1, w2 with a leading 1 (the meta-learned initial memory): their gradients summed over the batch."""
    check(2, 16, 2, 16, 32, 16, True, shared=True, dgd=True)


def test_chunk_backward_extreme_gates():
    """retention 0 and 1, lr 0 (the gate op's products are exact at α = 0)."""
    def edit(inputs, state, cot):
        q, k, v, lr, ret, mom = inputs
        ret, lr = ret.clone(), lr.clone()
        ret[:, 3], ret[:, 7:9], lr[:, 5] = 0.0, 1.0, 0.0
        return (q, k, v, lr, ret, mom), state, cot

    check(2, 16, 2, 16, 32, 16, True, edit=edit, dgd=True)


def test_chunk_backward_no_end_state_gradient():
    """dw1_next … ds2_next given as None mean zero."""
    inputs, state, cot = chunk_inputs(1, 10, 2, 16, 32, 16, True)
    flags = dict(activation="silu", residual=True, dgd=False, self_target=False, read="current")
    ref = oracle(inputs, state, (cot[0], *(torch.zeros_like(x) for x in cot[1:])), **flags)
    out = kernel(inputs, state, (cot[0], None, None, None, None), **flags)
    for name, r, o in zip(GRAD_NAMES, ref, out):
        assert rms_ratio(r, o.cpu()) <= 2e-6, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_chunk_backward_half(dtype):
    """16-bit q, k, v, do (gates and states fp32): fp32 accumulation; dq, dk, dv come back in the input dtype."""
    check(2, 16, 2, 16, 32, 16, True, dtype=dtype, self_target=True, dgd=True)


def test_chunk_backward_nan_propagates():
    """A NaN in one (sequence, head) reaches that pair's gradients and no other pair's."""
    inputs, state, cot = chunk_inputs(2, 16, 2, 16, 32, 16, True)
    do = cot[0].clone()
    do[0, 4, 1, 3] = float("nan")
    flags = dict(activation="silu", residual=True, dgd=True, self_target=False, read="current")
    out = dict(zip(GRAD_NAMES, kernel(inputs, state, (do, *cot[1:]), **flags)))
    for name in ("dq", "dk", "dv", "dlr", "dretention", "dmomentum"):
        assert out[name][0, :, 1].isnan().any(), name
        assert not out[name][1].isnan().any() and not out[name][:, :, 0].isnan().any(), name
    for name in ("dw1", "dw2", "ds1", "ds2"):
        assert out[name][0, 1].isnan().any(), name
        assert not out[name][1].isnan().any() and not out[name][:, 0].isnan().any(), name


def test_chunk_backward_long_chunk_not_implemented():
    inputs, state, cot = chunk_inputs(1, 65, 1, 16, 16, 16, False)
    with pytest.raises(NotImplementedError, match="chunks of 1 to 64 tokens, got C = 65"):
        kernel(inputs, state, cot, activation="silu", residual=True, dgd=False, self_target=False, read="current")


GPU_MATRIX = [
    (D, D * m, C, read, use_mom, self_target, dgd)
    for D, m, C in itertools.product((32, 64, 128), (1, 2, 4), (8, 16, 32, 64))
    for read, use_mom, self_target, dgd in (("current", True, True, True), ("chunk_start", False, False, False),
                                            ("current", False, False, True))
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("D,Dh,C,read,use_mom,self_target,dgd",
                         [pytest.param(*c, id="D{}-Dh{}-C{}-{}-mom{}-self{}-dgd{}".format(*c)) for c in GPU_MATRIX])
def test_chunk_backward_gpu(D, Dh, C, read, use_mom, self_target, dgd, dtype):
    # fp32 inputs run tf32-free ("ieee") products; the bound leaves room for fp32 sums over Dh ≤ 512
    check(4, C, 4, D, Dh, D, use_mom, dtype=dtype, bound=1e-5 if dtype == torch.float32 else 1e-2,
          read=read, self_target=self_target, dgd=dgd, activation="gelu" if C == 32 else "silu")
