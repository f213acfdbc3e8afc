"""Every `nested_kernels::` custom op that a triton forward and backward call (the ops' own, the
gates', the DGD inverse's), checked by torch.library.opcheck on the arguments it was called with:
schema, fake kernel (shapes and dtypes of every output, the empty placeholders of absent ones
included) and autograd registration, in fp32 and bf16, with and without momentum. A fake kernel
that disagrees with the real one breaks torch.compile."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nested_kernels import cms_level, keep_chunk_states, linear_memory, mlp_memory
from nested_kernels.linear_memory import LinearMemoryState
from nested_kernels.mlp_memory import MLPMemoryState
from tests.helpers import gates, linear_state, mlp_state, qkv

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
B, T, H, K, V, DH = 1, 20, 1, 16, 16, 16


class RecordCustomOps(TorchDispatchMode):
    """The calls of `nested_kernels::` ops that reach the dispatcher (not those made inside another)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "nested_kernels":
            self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


def leaves(tensors, dtype):
    return [None if x is None else x.to(DEVICE, dtype).requires_grad_() for x in tensors]


def run_linear(dtype, use_momentum, dgd):
    q, k, v = leaves(qkv(B, T, H, K, V), dtype)
    lr, retention, momentum = leaves(gates(B, T, H, momentum=use_momentum), torch.float32)
    h0 = LinearMemoryState(*leaves(linear_state(B, H, K, V, momentum=use_momentum), torch.float32))
    o, final = linear_memory(q, k, v, lr, retention, momentum, dgd=dgd, chunk_size=16, initial_state=h0,
                             output_final_state=True, backend="triton")
    return o.float().sum() + final.memory.sum()


def run_linear_kept(dtype, use_momentum, dgd):
    """With the chunk states kept by the forward: the backward op takes them as inputs."""
    with keep_chunk_states():
        return run_linear(dtype, use_momentum, dgd)


def run_mlp(dtype, use_momentum, dgd):
    q, k, v = leaves(qkv(B, T, H, K, V), dtype)
    lr, retention, momentum = leaves(gates(B, T, H, momentum=use_momentum), torch.float32)
    h0 = MLPMemoryState(*leaves(mlp_state(B, H, K, DH, V, momentum=use_momentum), torch.float32))
    o, final = mlp_memory(q, k, v, lr, retention, momentum, dgd=dgd, chunk_size=16, initial_state=h0,
                          output_final_state=True, backend="triton")
    return o.float().sum() + final.w1.sum()


def run_cms(dtype, use_momentum, dgd):
    x, w1, w2 = leaves((torch.randn(B, T, K), torch.randn(B, K, DH) / 4, torch.randn(B, DH, K) / 4), dtype)
    y, final = cms_level(x, w1, w2, period=4, lr=0.1, target=x.detach(), output_final_state=True, backend="triton")
    return y.float().sum() + final.w1.float().sum()


RUNS = {"linear_memory": run_linear, "linear_memory-kept": run_linear_kept, "mlp_memory": run_mlp,
        "cms_level": run_cms}


def leaf_of(x, requires_grad):
    if not isinstance(x, torch.Tensor):
        return x
    return x.detach().requires_grad_(requires_grad and x.is_floating_point())


# (op, momentum, DGD): cms_level has neither
CASES = [("linear_memory", True, True), ("linear_memory", False, False), ("linear_memory-kept", True, True),
         ("linear_memory-kept", False, False), ("mlp_memory", True, True), ("mlp_memory", False, False),
         ("cms_level", False, False)]


DTYPE = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
CASE = pytest.mark.parametrize("op,use_momentum,dgd", CASES,
                               ids=[f"{op}-{'mom' if m else 'nomom'}-{'dgd' if d else 'nodgd'}" for op, m, d in CASES])


def check_custom_ops(op, use_momentum, dgd, dtype):
    with RecordCustomOps() as record:
        RUNS[op](dtype, use_momentum, dgd).backward()
    names = {func.name() for func, _, _ in record.calls}
    name = op.split("-")[0]
    assert f"nested_kernels::{name}_triton_fwd" in names and f"nested_kernels::{name}_triton_bwd" in names
    for func, args, kwargs in record.calls:
        # float inputs of the ops with a backward require grad, or opcheck checks no gradient
        with_grad = not func.name().endswith("_bwd")
        args = tuple(leaf_of(x, with_grad) for x in args)
        kwargs = {name: leaf_of(x, with_grad) for name, x in kwargs.items()}
        torch.library.opcheck(func, args, kwargs)


@DTYPE
@CASE
def test_custom_ops_opcheck(op, use_momentum, dgd, dtype):
    check_custom_ops(op, use_momentum, dgd, dtype)


@pytest.mark.gpu
@DTYPE
@CASE
def test_custom_ops_opcheck_gpu(op, use_momentum, dgd, dtype):
    """The same on the card, where bf16 runs the 16-bit (or converted) operands of the compiled kernels."""
    check_custom_ops(op, use_momentum, dgd, dtype)
