"""`linear_memory` torch tier against the token-by-token reference (SPEC §2, §7)."""
import pytest
import torch

from nested_kernels import linear_memory
from nested_kernels.linear_memory import LinearMemoryState
from tests.helpers import (
    F64, assert_all_close, gates, grads, leaves, linear_state, loss_with_state, qkv, rms_ratio, state_leaves,
)

NAMES = ("o", "memory", "momentum")
GRAD_NAMES = ("dq", "dk", "dv", "dlr", "dretention", "dmomentum", "dh0_memory", "dh0_momentum")


def run(backend, q, k, v, lr, ret, mom, h0, **kw):
    """Forward + backward with the final state in the loss; returns outputs, state, gradients."""
    q, k, v, lr, ret, mom = leaves(q, k, v, lr, ret, mom)
    h0 = state_leaves(h0)
    o, ht = linear_memory(q, k, v, lr, ret, mom, initial_state=h0, output_final_state=True, backend=backend, **kw)
    inputs = [q, k, v, lr, ret, mom] + ([] if h0 is None else list(h0))
    g = grads(loss_with_state(o, ht), inputs)
    return (o, *ht), g


def compare(q, k, v, lr, ret, mom, h0, **kw):
    ref_out, ref_grads = run("reference", q, k, v, lr, ret, mom, h0, **kw)
    out, out_grads = run("torch", q, k, v, lr, ret, mom, h0, **kw)
    assert_all_close(NAMES, ref_out, out)
    assert_all_close(GRAD_NAMES, ref_grads, out_grads)


CASES = [
    # B, T, H, K, V, chunk, momentum, dgd, initial state
    (2, 63, 3, 16, 16, 16, True, True, True),
    (2, 100, 1, 20, 36, 32, True, False, True),
    (1, 100, 2, 16, 12, 64, False, True, True),
    (2, 1, 2, 8, 8, 16, True, True, False),
    (1, 37, 2, 12, 20, 1, False, False, False),
    (1, 37, 2, 12, 20, 1, True, True, True),
    (2, 64, 2, 16, 16, 64, False, False, True),
    (3, 50, 4, 7, 9, 16, True, False, False),
]


@pytest.mark.parametrize(
    "B,T,H,K,V,C,use_mom,dgd,use_h0",
    [pytest.param(*c, id="B{}-T{}-H{}-K{}-V{}-C{}-mom{}-dgd{}-h0{}".format(*c)) for c in CASES],
)
def test_chunk(B, T, H, K, V, C, use_mom, dgd, use_h0):
    q, k, v = qkv(B, T, H, K, V)
    lr, ret, mom = gates(B, T, H, momentum=use_mom)
    h0 = linear_state(B, H, K, V, momentum=use_mom) if use_h0 else None
    compare(q, k, v, lr, ret, mom, h0, dgd=dgd, chunk_size=C, scale=0.5)


@pytest.mark.parametrize("retention", [0.0, 1.0], ids=lambda r: f"retention{r}")
@pytest.mark.parametrize("lr", [0.0, 1.0], ids=lambda r: f"lr{r}")
@pytest.mark.parametrize("momentum", [None, 0.0, 1.0], ids=lambda m: f"mom{m}")
def test_chunk_extreme_gates(retention, lr, momentum):
    """Gate tensors pinned at their bounds: exact products, finite gradients at α = 0."""
    B, T, H, K, V = 1, 21, 2, 8, 8
    q, k, v = qkv(B, T, H, K, V)
    full = lambda x: torch.full((B, T, H), x, dtype=F64)
    mom = None if momentum is None else full(momentum)
    h0 = linear_state(B, H, K, V, momentum=momentum is not None)
    compare(q, k, v, full(lr), full(retention), mom, h0, dgd=True, chunk_size=8)


def test_chunk_float_gates():
    """Python floats broadcast as gates and give the tensor-gate result."""
    B, T, H, K, V = 2, 20, 2, 8, 8
    q, k, v = qkv(B, T, H, K, V)
    full = lambda x: torch.full((B, T, H), x, dtype=F64)
    o_float, s_float = linear_memory(q, k, v, 0.3, 0.9, 0.5, chunk_size=8, output_final_state=True, backend="torch")
    o_tensor, s_tensor = linear_memory(q, k, v, full(0.3), full(0.9), full(0.5), chunk_size=8,
                                       output_final_state=True, backend="torch")
    assert_all_close(NAMES, (o_tensor, *s_tensor), (o_float, *s_float))


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_chunk_size_one_is_gated_delta_rule(backend):
    """momentum=None, dgd=False, chunk_size=1: M_t = (α_t I − η_t k_tᵀk_t) M_{t−1} + η_t k_tᵀ v_t."""
    B, T, H, K, V = 2, 30, 2, 8, 6
    q, k, v = qkv(B, T, H, K, V)
    lr, ret, _ = gates(B, T, H, momentum=False)
    o, state = linear_memory(q, k, v, lr, ret, chunk_size=1, output_final_state=True, backend=backend)
    M = torch.zeros(B, H, K, V, dtype=F64)
    eye = torch.eye(K, dtype=F64)
    expected = []
    for t in range(T):
        kt = k[:, t, :, :, None]                                               # column k_tᵀ
        A = ret[:, t, :, None, None] * eye - lr[:, t, :, None, None] * kt @ kt.transpose(-1, -2)
        M = A @ M + lr[:, t, :, None, None] * kt @ v[:, t, :, None, :]
        expected.append((q[:, t, :, None, :] @ M)[:, :, 0])
    assert_all_close(("o", "memory"), (torch.stack(expected, 1), M), (o, state.memory))


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("use_mom,dgd", [(True, True), (False, False)], ids=["mom-dgd", "plain"])
def test_chunk_chaining(backend, use_mom, dgd):
    """Splitting at a multiple of chunk_size and passing final_state reproduces one call (SPEC §1)."""
    B, T, H, K, V, C, split = 2, 50, 2, 8, 8, 16, 32
    q, k, v = qkv(B, T, H, K, V)
    lr, ret, mom = gates(B, T, H, momentum=use_mom)
    kw = dict(dgd=dgd, chunk_size=C, output_final_state=True, backend=backend)
    o, state = linear_memory(q, k, v, lr, ret, mom, **kw)
    parts = [slice(0, split), slice(split, T)]
    o1, s1 = linear_memory(*(x[:, parts[0]] for x in (q, k, v, lr, ret)), None if mom is None else mom[:, parts[0]], **kw)
    o2, s2 = linear_memory(*(x[:, parts[1]] for x in (q, k, v, lr, ret)), None if mom is None else mom[:, parts[1]],
                           initial_state=s1, **kw)
    assert_all_close(NAMES, (o, *state), (torch.cat([o1, o2], 1), *s2))


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_chunk_varlen(backend):
    """Packed sequences (one shorter than a chunk, one empty) equal per-sequence calls."""
    lengths, H, K, V, C = [5, 0, 40, 17], 2, 8, 8, 16
    T = sum(lengths)
    q, k, v = qkv(1, T, H, K, V)
    lr, ret, mom = gates(1, T, H)
    h0 = linear_state(len(lengths), H, K, V)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist())
    kw = dict(dgd=True, chunk_size=C, output_final_state=True, backend=backend)
    o, state = linear_memory(q, k, v, lr, ret, mom, initial_state=h0, cu_seqlens=cu, **kw)
    for n in range(len(lengths)):
        sl = slice(cu[n].item(), cu[n + 1].item())
        h0_n = LinearMemoryState(h0.memory[n:n + 1], h0.momentum[n:n + 1])
        o_n, s_n = linear_memory(q[:, sl], k[:, sl], v[:, sl], lr[:, sl], ret[:, sl], mom[:, sl], initial_state=h0_n, **kw)
        assert_all_close(NAMES, (o_n, *s_n), (o[:, sl], state.memory[n:n + 1], state.momentum[n:n + 1]))


def test_chunk_varlen_gradients():
    lengths, H, K, V = [3, 20, 9], 1, 6, 5
    T = sum(lengths)
    q, k, v = qkv(1, T, H, K, V)
    lr, ret, mom = gates(1, T, H)
    h0 = linear_state(len(lengths), H, K, V)
    cu = torch.tensor([0, 3, 23, 32])
    compare(q, k, v, lr, ret, mom, h0, dgd=True, chunk_size=4, cu_seqlens=cu)


@pytest.mark.parametrize("use_mom,dgd", [(True, True), (False, False), (True, False)])
def test_chunk_gradcheck(use_mom, dgd):
    B, T, H, K, V = 1, 7, 1, 3, 2
    q, k, v = qkv(B, T, H, K, V)
    lr, ret, mom = gates(B, T, H, momentum=use_mom)
    h0 = linear_state(B, H, K, V, momentum=use_mom)
    inputs = leaves(q, k, v, lr, ret, *h0) if use_mom else leaves(q, k, v, lr, ret, h0.memory)
    mom = leaves(mom)[0] if use_mom else None

    def fn(q, k, v, lr, ret, *h):
        state = LinearMemoryState(h[0], h[1] if len(h) > 1 else None)
        o, s = linear_memory(q, k, v, lr, ret, mom, dgd=dgd, chunk_size=3, initial_state=state,
                             output_final_state=True, backend="torch")
        return (o, *(x for x in s if x is not None))

    assert torch.autograd.gradcheck(fn, inputs)


def test_chunk_bf16():
    """bf16 inputs against the fp32 reference on the same (rounded) inputs: fla's error ratios (SPEC §7)."""
    B, T, H, K, V = 2, 100, 2, 32, 32
    q, k, v = (x.bfloat16() for x in qkv(B, T, H, K, V, dtype=torch.float32))
    lr, ret, mom = gates(B, T, H, dtype=torch.float32)
    kw = dict(dgd=True, chunk_size=32)
    ref_out, ref_grads = run("reference", q.float(), k.float(), v.float(), lr, ret, mom, None, **kw)
    out, out_grads = run("torch", q, k, v, lr, ret, mom, None, **kw)
    assert out[0].dtype == torch.bfloat16 and out[1].dtype == torch.float32
    for name, r, o in zip(NAMES, ref_out, out):
        assert not o.isnan().any(), name
        assert rms_ratio(r, o) <= 5e-3, (name, rms_ratio(r, o))
    for name, r, o in zip(GRAD_NAMES, ref_grads, out_grads):
        assert not o.isnan().any(), name
        assert rms_ratio(r, o) <= 1e-2, (name, rms_ratio(r, o))


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_chunk_nan_propagates(backend):
    """A NaN value poisons every later read; earlier chunks stay finite (inside its own chunk a
    NaN may also reach earlier reads through the masked products)."""
    B, T, H, K, V = 1, 20, 1, 4, 4
    q, k, v = qkv(B, T, H, K, V)
    v[0, 10, 0, 0] = float("nan")
    o, _ = linear_memory(q, k, v, 0.1, 1.0, chunk_size=8, backend=backend)
    assert o[0, 10:].isnan().any(dim=-1).all() and not o[0, :8].isnan().any()
