"""`mlp_memory` torch tier against the token-by-token reference (SPEC §3, §7)."""
import pytest
import torch

from nested_kernels import mlp_memory
from nested_kernels.mlp_memory import MLPMemoryState
from tests.helpers import F64, assert_all_close, gates, grads, leaves, loss_with_state, mlp_state, qkv, rms_ratio, state_leaves

NAMES = ("o", "w1", "w2", "s1", "s2")
GRAD_NAMES = ("dq", "dk", "dv", "dlr", "dretention", "dmomentum", "dw1", "dw2", "ds1", "ds2")


def run(backend, q, k, v, lr, ret, mom, h0, **kw):
    q, k, v, lr, ret, mom = leaves(q, k, v, lr, ret, mom)
    h0 = state_leaves(h0)
    o, ht = mlp_memory(q, k, v, lr, ret, mom, initial_state=h0, output_final_state=True, backend=backend, **kw)
    g = grads(loss_with_state(o, ht), [q, k, v, lr, ret, mom, *h0])
    return (o, *ht), g


def compare(q, k, v, lr, ret, mom, h0, **kw):
    ref_out, ref_grads = run("reference", q, k, v, lr, ret, mom, h0, **kw)
    out, out_grads = run("torch", q, k, v, lr, ret, mom, h0, **kw)
    assert_all_close(NAMES, ref_out, out)
    assert_all_close(GRAD_NAMES, ref_grads, out_grads)


CASES = [
    # B, T, H, K, Dh, chunk, momentum, dgd, self_target, read, activation, shared weights
    (2, 37, 2, 8, 16, 16, True, True, True, "current", "silu", True),
    (2, 37, 2, 8, 16, 16, True, True, True, "chunk_start", "gelu", False),
    (1, 50, 1, 6, 6, 8, False, False, False, "current", "gelu", False),
    (2, 19, 2, 5, 20, 1, True, False, True, "current", "silu", False),
    (1, 33, 3, 8, 24, 32, False, True, False, "chunk_start", "silu", True),
    (2, 1, 2, 4, 8, 16, True, True, True, "current", "silu", True),
    (1, 64, 2, 8, 8, 16, True, True, False, "current", "gelu", False),
]


@pytest.mark.parametrize(
    "B,T,H,K,Dh,C,use_mom,dgd,self_target,read,act,shared",
    [pytest.param(*c, id="B{}-T{}-H{}-K{}-Dh{}-C{}-mom{}-dgd{}-self{}-{}-{}-shared{}".format(*c)) for c in CASES],
)
def test_chunk(B, T, H, K, Dh, C, use_mom, dgd, self_target, read, act, shared):
    q, k, v = qkv(B, T, H, K, K)
    lr, ret, mom = gates(B, T, H, momentum=use_mom)
    h0 = mlp_state(B, H, K, Dh, K, momentum=use_mom, shared=shared)
    compare(q, k, v, lr, ret, mom, h0, dgd=dgd, self_target=self_target, read=read, activation=act, chunk_size=C)


@pytest.mark.parametrize("read", ["current", "chunk_start"])
def test_chunk_no_residual(read):
    """residual=False allows K != V."""
    B, T, H, K, Dh, V = 2, 21, 2, 6, 10, 9
    q, k, v = qkv(B, T, H, K, V)
    lr, ret, mom = gates(B, T, H)
    h0 = mlp_state(B, H, K, Dh, V)
    compare(q, k, v, lr, ret, mom, h0, residual=False, dgd=True, read=read, chunk_size=8)


@pytest.mark.parametrize("retention", [0.0, 1.0], ids=lambda r: f"retention{r}")
@pytest.mark.parametrize("lr", [0.0, 1.0], ids=lambda r: f"lr{r}")
def test_chunk_extreme_gates(retention, lr):
    B, T, H, K, Dh = 1, 13, 2, 4, 8
    q, k, v = qkv(B, T, H, K, K)
    full = lambda x: torch.full((B, T, H), x, dtype=F64)
    h0 = mlp_state(B, H, K, Dh, K)
    compare(q, k, v, full(lr), full(retention), full(0.5), h0, dgd=True, self_target=True, chunk_size=4)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_chunk_chaining(backend):
    B, T, H, K, Dh, C, split = 2, 40, 2, 6, 12, 8, 24
    q, k, v = qkv(B, T, H, K, K)
    lr, ret, mom = gates(B, T, H)
    h0 = mlp_state(B, H, K, Dh, K, shared=True)
    kw = dict(dgd=True, self_target=True, chunk_size=C, output_final_state=True, backend=backend)
    o, state = mlp_memory(q, k, v, lr, ret, mom, initial_state=h0, **kw)
    a, b = slice(0, split), slice(split, T)
    o1, s1 = mlp_memory(*(x[:, a] for x in (q, k, v, lr, ret, mom)), initial_state=h0, **kw)
    o2, s2 = mlp_memory(*(x[:, b] for x in (q, k, v, lr, ret, mom)), initial_state=s1, **kw)
    assert_all_close(NAMES, (o, *state), (torch.cat([o1, o2], 1), *s2))


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_chunk_varlen(backend):
    lengths, H, K, Dh, C = [3, 0, 30, 11], 2, 6, 12, 8
    T = sum(lengths)
    N = len(lengths)
    q, k, v = qkv(1, T, H, K, K)
    lr, ret, mom = gates(1, T, H)
    h0 = mlp_state(N, H, K, Dh, K)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist())
    kw = dict(dgd=True, self_target=True, chunk_size=C, output_final_state=True, backend=backend)
    o, state = mlp_memory(q, k, v, lr, ret, mom, initial_state=h0, cu_seqlens=cu, **kw)
    for n in range(N):
        sl = slice(cu[n].item(), cu[n + 1].item())
        h0_n = MLPMemoryState(*(x[n:n + 1] for x in h0))
        o_n, s_n = mlp_memory(*(x[:, sl] for x in (q, k, v, lr, ret, mom)), initial_state=h0_n, **kw)
        assert_all_close(NAMES, (o_n, *s_n), (o[:, sl], *(x[n:n + 1] for x in state)))


def test_chunk_varlen_gradients_shared_weights():
    """Packed sequences from one shared initial memory: its gradient sums over the sequences."""
    H, K, Dh = 1, 4, 8
    cu = torch.tensor([0, 5, 19, 26])
    q, k, v = qkv(1, 26, H, K, K)
    lr, ret, mom = gates(1, 26, H)
    h0 = mlp_state(3, H, K, Dh, K, shared=True)
    compare(q, k, v, lr, ret, mom, h0, dgd=True, self_target=True, chunk_size=4, cu_seqlens=cu)


@pytest.mark.parametrize("act", ["silu", "gelu"])
@pytest.mark.parametrize("read", ["current", "chunk_start"])
def test_chunk_gradcheck(act, read):
    """A second witness of the gradient-of-gradient (φ'') terms: finite differences."""
    B, T, H, K, Dh = 1, 5, 1, 3, 4
    q, k, v = qkv(B, T, H, K, K)
    lr, ret, mom = gates(B, T, H)
    h0 = mlp_state(B, H, K, Dh, K)
    inputs = leaves(q, k, v, lr, ret, mom, *h0)

    def fn(q, k, v, lr, ret, mom, *h):
        o, s = mlp_memory(q, k, v, lr, ret, mom, initial_state=MLPMemoryState(*h), activation=act, dgd=True,
                          self_target=True, read=read, chunk_size=2, output_final_state=True, backend="torch")
        return (o, *s)

    assert torch.autograd.gradcheck(fn, inputs)


def test_chunk_bf16():
    B, T, H, K, Dh = 2, 64, 2, 16, 32
    q, k, v = (x.bfloat16() for x in qkv(B, T, H, K, K, dtype=torch.float32))
    lr, ret, mom = gates(B, T, H, dtype=torch.float32, lr_max=0.2)
    h0 = mlp_state(B, H, K, Dh, K, dtype=torch.float32, shared=True)
    kw = dict(dgd=True, self_target=True, chunk_size=16)
    ref_out, ref_grads = run("reference", q.float(), k.float(), v.float(), lr, ret, mom, h0, **kw)
    out, out_grads = run("torch", q, k, v, lr, ret, mom, h0, **kw)
    assert out[0].dtype == torch.bfloat16 and all(s.dtype == torch.float32 for s in out[1:])
    for name, r, o in zip(NAMES, ref_out, out):
        assert not o.isnan().any(), name
        assert rms_ratio(r, o) <= 5e-3, (name, rms_ratio(r, o))
    for name, r, o in zip(GRAD_NAMES, ref_grads, out_grads):
        assert not o.isnan().any(), name
        assert rms_ratio(r, o) <= 1e-2, (name, rms_ratio(r, o))
