"""Input factories and comparisons shared by the op tests (SPEC §7)."""
import importlib.util
import itertools
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from nested_kernels.linear_memory import LinearMemoryState
from nested_kernels.mlp_memory import MLPMemoryState

F64 = torch.float64


def gates(B, T, H, *, momentum=True, dtype=F64, lr_max=0.5):
    """Gates in their stable ranges: η ∈ [0, lr_max], α ∈ [0.5, 1], μ ∈ [0, 0.9]."""
    lr = torch.rand(B, T, H, dtype=dtype) * lr_max
    retention = 0.5 + 0.5 * torch.rand(B, T, H, dtype=dtype)
    mom = 0.9 * torch.rand(B, T, H, dtype=dtype) if momentum else None
    return lr, retention, mom


def qkv(B, T, H, K, V, dtype=F64):
    q = torch.randn(B, T, H, K, dtype=dtype)
    k = F.normalize(torch.randn(B, T, H, K, dtype=dtype), dim=-1)
    v = torch.randn(B, T, H, V, dtype=dtype)
    return q, k, v


def linear_state(N, H, K, V, *, momentum=True, dtype=F64):
    return LinearMemoryState(
        0.3 * torch.randn(N, H, K, V, dtype=dtype),
        0.1 * torch.randn(N, H, K, V, dtype=dtype) if momentum else None,
    )


def mlp_state(N, H, K, Dh, V, *, momentum=True, shared=False, dtype=F64):
    lead = 1 if shared else N
    return MLPMemoryState(
        torch.randn(lead, H, K, Dh, dtype=dtype) / K**0.5,
        torch.randn(lead, H, Dh, V, dtype=dtype) / Dh**0.5,
        0.05 * torch.randn(N, H, K, Dh, dtype=dtype) if momentum else None,
        0.05 * torch.randn(N, H, Dh, V, dtype=dtype) if momentum else None,
    )


def leaves(*xs):
    """Detached copies that require grad (None and floats pass through)."""
    return [x.detach().clone().requires_grad_(True) if isinstance(x, torch.Tensor) else x for x in xs]


def state_leaves(state):
    return None if state is None else type(state)(*leaves(*state))


def loss_with_state(o, state, seed=7):
    """⟨o, do⟩ + Σ ⟨h_T, dh_T⟩ with fixed random cotangents, so gradients flow through the final state."""
    gen = torch.Generator().manual_seed(seed)
    total = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
    for h in state:
        if h is not None:
            total = total + (h * torch.randn(h.shape, generator=gen, dtype=h.dtype)).sum()
    return total


def grads(loss, tensors):
    tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
    return torch.autograd.grad(loss, tensors, allow_unused=True)


def assert_all_close(names, expected, actual, atol=1e-10, rtol=1e-10):
    for name, e, a in zip(names, expected, actual):
        if e is None and a is None:
            continue
        assert e is not None and a is not None, f"{name}: one side is None"
        torch.testing.assert_close(a, e, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def rms_ratio(ref: torch.Tensor, out: torch.Tensor) -> float:
    """fla's error ratio rms(ref − out) / rms(ref), computed in fp64 on the CPU (either side may be
    on a GPU: the references of the gpu tests run there too)."""
    ref, out = ref.detach().double().cpu(), out.detach().double().cpu()
    return ((ref - out).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def split_sizes(T, pattern):
    """Step sizes summing to T, cycling through `pattern` (decode tests)."""
    sizes, it = [], itertools.cycle(pattern)
    while sum(sizes) < T:
        sizes.append(min(next(it), T - sum(sizes)))
    return sizes


def decode_in_steps(step, inputs, state, sizes, **kw):
    """Feed `inputs` (q, k, v, gates: [N, T, ...] or None) to a `*_step` op in calls of `sizes` tokens."""
    outs, t = [], 0
    for n in sizes:
        outs.append(step(*(None if x is None else x[:, t:t + n] for x in inputs), state, **kw))
        t += n
    return torch.cat(outs, 1) if outs else None


def record_launches(monkeypatch):
    """(kernel name, grid, launch keywords) of every Triton kernel launch from here on (each still runs)."""
    from nested_kernels.triton_kernels.utils import launch as launch_module

    calls, real = [], launch_module.launch

    def recording(kernel, grid, device, *args, **kwargs):
        calls.append((kernel.__name__, tuple(grid), kwargs))
        return real(kernel, grid, device, *args, **kwargs)
    monkeypatch.setattr(launch_module, "launch", recording)
    return calls


def cuda_fault(nodeid: str, cuda=torch.cuda) -> Optional[str]:
    """Why the CUDA context is unusable after the test `nodeid` (a sticky error such as an illegal
    memory access), or None; None too where CUDA was never used (`cuda`: torch.cuda, or a fake)."""
    if not cuda.is_available() or not cuda.is_initialized():
        return None
    try:
        cuda.synchronize()
    except Exception as e:  # noqa: BLE001 (AcceleratorError on recent torch, RuntimeError before)
        return f"CUDA context poisoned during {nodeid}: {str(e).splitlines()[0] if str(e) else repr(e)}"
    return None


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark_script(name: str):
    """`benchmarks/<name>.py` loaded as a module of that name (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
