"""Calls without a single token of any head (T = 0, B = 0, H = 0, or `cu_seqlens` [0, 0]) on the
reference, torch and triton backends, forward and backward, on the CPU in CI and on a card with
`-m gpu`, where linear_memory's cuda tier joins them (cpp is forward-only: not covered): an empty
output of the right shape and dtype, the initial state returned as the final state, and gradients
that pass the final state's cotangent to the initial state. The triton backends launched their
kernels on no chunks and took the gate kernel's empty outputs for absent ones (an AttributeError)
until 2026-11-27."""
import pytest
import torch

from nested_kernels import linear_memory, mlp_memory
from nested_kernels.linear_memory import LinearMemoryState
from nested_kernels.mlp_memory import MLPMemoryState
from tests.helpers import gates, linear_state, mlp_state, qkv

pytest.importorskip("triton")

BACKENDS = ("reference", "torch", "triton")
# case -> (B, T, H, cu_seqlens)
CASES = {"T0": (2, 0, 2, None), "B0": (0, 20, 2, None), "H0": (1, 20, 0, None), "cu00": (1, 0, 2, [0, 0])}
K = V = DH = 16
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def leaf(x):
    return None if x is None else x.to(DEVICE, torch.float32).requires_grad_()


def check_tokenless(op, state_type, state, B, T, H, cu_seqlens, use_momentum, **kw):
    """Run `op` on no tokens from `state` (a state of fp64 leaves); check o, the final state and
    every gradient."""
    q, k, v = (leaf(x) for x in qkv(B, T, H, K, V))
    lr, retention, momentum = (leaf(x) for x in gates(B, T, H, momentum=use_momentum))
    h0 = state_type(*(leaf(x) for x in state))
    cu = None if cu_seqlens is None else torch.tensor(cu_seqlens, device=DEVICE)
    o, final = op(q, k, v, lr, retention, momentum, initial_state=h0, output_final_state=True, cu_seqlens=cu,
                  chunk_size=16, **kw)
    assert o.shape == (B, T, H, V) and o.dtype == v.dtype
    present = [(x0, x) for x0, x in zip(h0, final) if x0 is not None]
    for x0, x in present:                                                     # nothing updated them
        torch.testing.assert_close(x, x0.detach(), rtol=0, atol=0)
    gen = torch.Generator().manual_seed(1)
    cotangents = [torch.randn(x.shape, generator=gen).to(x) for _, x in present]
    loss = sum((x * c).sum() for (_, x), c in zip(present, cotangents)) + o.sum()
    inputs = [q, k, v, lr, retention] + ([momentum] if use_momentum else [])
    if not loss.requires_grad:                                                # B = 0: no state either
        assert all(x.numel() == 0 for x in inputs + [x0 for x0, _ in present])
        return
    grads = torch.autograd.grad(loss, inputs + [x0 for x0, _ in present], allow_unused=True)
    for x, g in zip(inputs, grads):                                           # empty: nothing to read
        assert g is None or g.shape == x.shape
    for (x0, _), c, g in zip(present, cotangents, grads[len(inputs):]):     # d initial = d final
        if g is None:                                                         # allowed where nothing to read
            assert c.numel() == 0
        else:
            torch.testing.assert_close(g, c, rtol=0, atol=0)


DGD = pytest.mark.parametrize("dgd", [False, True], ids=["nodgd", "dgd"])
MOMENTUM = pytest.mark.parametrize("use_momentum", [True, False], ids=["mom", "nomom"])
CASE = pytest.mark.parametrize("case", list(CASES))
BACKEND = pytest.mark.parametrize("backend", BACKENDS)


def check_linear_memory(backend, case, use_momentum, dgd):
    B, T, H, cu_seqlens = CASES[case]
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    state = linear_state(N, H, K, V, momentum=use_momentum)
    check_tokenless(linear_memory, LinearMemoryState, state, B, T, H, cu_seqlens, use_momentum, dgd=dgd,
                    backend=backend)


def check_mlp_memory(backend, case, use_momentum):
    B, T, H, cu_seqlens = CASES[case]
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    state = mlp_state(N, H, K, DH, V, momentum=use_momentum)
    check_tokenless(mlp_memory, MLPMemoryState, state, B, T, H, cu_seqlens, use_momentum, backend=backend)


@DGD
@MOMENTUM
@CASE
@BACKEND
def test_linear_memory_tokenless(backend, case, use_momentum, dgd):
    check_linear_memory(backend, case, use_momentum, dgd)


@pytest.mark.gpu
@DGD
@MOMENTUM
@CASE
@pytest.mark.parametrize("backend", BACKENDS + ("cuda",))
def test_linear_memory_tokenless_gpu(backend, case, use_momentum, dgd):
    """The same on the card (the launchers' zero grids, empty CUDA tensors), the cuda tier included."""
    check_linear_memory(backend, case, use_momentum, dgd)


@MOMENTUM
@CASE
@BACKEND
def test_mlp_memory_tokenless(backend, case, use_momentum):
    check_mlp_memory(backend, case, use_momentum)


@pytest.mark.gpu
@MOMENTUM
@CASE
@BACKEND
def test_mlp_memory_tokenless_gpu(backend, case, use_momentum):
    check_mlp_memory(backend, case, use_momentum)
