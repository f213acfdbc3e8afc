import pytest
import torch

from nested_kernels.mlp_memory import MLPMemoryDecodeState, MLPMemoryState
from nested_kernels.self_modifying import (
    SelfModifyingState, self_modifying_step, self_modifying_titans, split_memories, stack_memories,
)
from tests.helpers import split_sizes


def assert_close(name, actual, expected, atol=1e-10):
    err = (actual - expected).abs().max().item() if actual.numel() else 0.0
    assert err <= atol, f"{name}: max abs error {err:.3e} > {atol:.1e}"


def make_states(H, D, Dh, momentum, requires_grad=True):
    mems = []
    for _ in range(4):
        w1 = (torch.randn(1, H, D, Dh, dtype=torch.float64) / D**0.5).requires_grad_(requires_grad)
        w2 = (torch.randn(1, H, Dh, D, dtype=torch.float64) * 0.3).requires_grad_(requires_grad)
        mems.append(MLPMemoryState(w1, w2))
    return SelfModifyingState(*mems)


@pytest.mark.parametrize("B,T,H,D,Dh,C,momentum,dgd,activation", [
    (2, 23, 2, 8, 12, 5, True, True, "silu"),
    (1, 17, 3, 6, 6, 4, False, True, "gelu"),
    (2, 9, 1, 5, 7, 16, True, False, "silu"),
    (1, 13, 2, 4, 4, 1, True, True, "silu"),
], ids=lambda x: str(x))
def test_chunk(B, T, H, D, Dh, C, momentum, dgd, activation):
    x = torch.randn(B, T, H, D, dtype=torch.float64, requires_grad=True)
    states = make_states(H, D, Dh, momentum)
    mu = torch.rand(H, dtype=torch.float64, requires_grad=True) if momentum else None
    b_eta = torch.randn(H, dtype=torch.float64, requires_grad=True)
    kwargs = dict(chunk_size=C, lr_max=0.5, momentum=mu, dgd=dgd, activation=activation, lr_bias=b_eta)
    ref = self_modifying_titans(x, states, backend="reference", **kwargs)
    tri = self_modifying_titans(x, states, backend="torch", **kwargs)
    for name, a, b in zip(("k", "v", "lr", "retention"), tri[:4], ref[:4]):
        assert_close(name, a, b)
    flat_ref = [t for s in ref[4] for t in s if t is not None]
    flat_tri = [t for s in tri[4] for t in s if t is not None]
    assert len(flat_ref) == len(flat_tri) == (16 if momentum else 8)
    for i, (a, b) in enumerate(zip(flat_tri, flat_ref)):
        assert_close(f"state[{i}]", a, b)

    leaves = [x, b_eta, *(t for s in states for t in s if t is not None)] + ([mu] if momentum else [])
    outs_ref = list(ref[:4]) + flat_ref
    weights = [torch.randn_like(o) for o in outs_ref]

    def grads(outs):
        loss = sum((o * w).sum() for o, w in zip(outs, weights))
        return torch.autograd.grad(loss, leaves)

    g_ref, g_tri = grads(outs_ref), grads(list(tri[:4]) + flat_tri)
    for i, (a, b) in enumerate(zip(g_tri, g_ref)):
        assert a.abs().max() > 0, f"grad[{i}] is zero"
        assert_close(f"grad[{i}]", a, b)


def test_chunk_split_equals_one_call():
    B, T, H, D, C = 2, 20, 2, 6, 4
    x = torch.randn(B, T, H, D, dtype=torch.float64)
    states = make_states(H, D, D, True, requires_grad=False)
    mu = torch.rand(H, dtype=torch.float64)
    full = self_modifying_titans(x, states, chunk_size=C, momentum=mu)
    a = self_modifying_titans(x[:, :8], states, chunk_size=C, momentum=mu)
    b = self_modifying_titans(x[:, 8:], a[4], chunk_size=C, momentum=mu)
    for i in range(4):
        assert_close(f"out[{i}]", torch.cat([a[i], b[i]], 1), full[i])
    for x1, x2 in zip(b[4], full[4]):
        for t1, t2 in zip(x1, x2):
            assert_close("state", t1, t2)


@pytest.mark.parametrize("momentum", [False, True], ids=["no_momentum", "momentum"])
@pytest.mark.parametrize("pattern", [(1,), (3, 1, 6, 9)], ids=str)
def test_step_any_split_equals_one_call(momentum, pattern):
    B, T, H, D, Dh, C = 2, 19, 2, 4, 6, 4
    x = torch.randn(B, T, H, D, dtype=torch.float64)
    states = make_states(H, D, Dh, momentum, requires_grad=False)
    kwargs = dict(lr_max=0.3, momentum=torch.rand(H, dtype=torch.float64) if momentum else None, dgd=True,
                  lr_bias=torch.randn(H, dtype=torch.float64), retention_bias=torch.randn(H, dtype=torch.float64) + 2)
    *ref, final = self_modifying_titans(x, states, chunk_size=C, **kwargs)
    state = MLPMemoryDecodeState.from_state(stack_memories(states, torch.float64), C, batch_size=B, momentum=momentum)
    outs, t = [], 0
    for n in split_sizes(T, pattern):
        outs.append(self_modifying_step(x[:, t:t + n], state, backend="torch", **kwargs))
        t += n
    for name, parts, expected in zip(("k", "v", "lr", "retention"), zip(*outs), ref):
        assert_close(name, torch.cat(parts, 1), expected)
    assert int(state.position[0]) == T % C
    for mem, expected in zip(split_memories(MLPMemoryState(state.w1, state.w2, state.s1, state.s2), H), final):
        for a, b in zip(mem, expected):
            assert (a is None) == (b is None) and (a is None or (a - b).abs().max() < 1e-12)


def test_errors():
    x = torch.randn(1, 4, 2, 4)
    states = make_states(2, 4, 4, False, requires_grad=False)
    with pytest.raises(ValueError, match="backend"):
        self_modifying_titans(x.double(), states, backend="cuda")
    with pytest.raises(ValueError, match="momentum"):
        self_modifying_titans(x.double(), states, momentum=torch.rand(3))
    state = MLPMemoryDecodeState.from_state(stack_memories(states, torch.float64), 4, batch_size=1)
    with pytest.raises(ValueError, match=r"state.w1: expected \[B, 4·H, D, Dh\]"):
        self_modifying_step(x.double()[:, :, :1], state)
    with pytest.raises(TypeError, match="state: expected an MLPMemoryDecodeState"):
        self_modifying_step(x.double(), states)
