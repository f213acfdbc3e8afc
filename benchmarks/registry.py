"""Op registry of the CPU benchmarks: named shapes per op and one input builder per op.

Every op has CPU-sized named shapes (`SHAPES`) and a builder that makes fp32 inputs in stable
ranges (L2-normalised keys, lr ≤ 0.1, retention ∈ [0.9, 1], momentum ≤ 0.9) and returns a
zero-argument callable for one (backend, mode):

* ``"fwd"``: the forward under ``torch.no_grad()``, inputs not requiring grad (what an
  inference / decoding call sees; the only mode of forward-only backends such as ``cpp``).
* ``"fwd+bwd"``: the forward on leaf inputs that require grad (q, k, v or x, the gates,
  the initial state / weights, the target), then the gradient of
  ``(o * do).sum() + Σ (final_state_i * dstate_i).sum()`` with respect to all of them.

The callable returns tensors (outputs and final state for ``"fwd"``, the gradients for
``"fwd+bwd"``), so a runner can check every tier against the reference on the same inputs.
`cases()` enumerates op × shape × mode × backend, asking each op's backend registry which
tiers can run the call on this device; the reference tier is listed but marked "not run"
above `REFERENCE_MAX_T` tokens (its Python token loop takes minutes there).

Used by `test_bench_cpu.py` (pytest-benchmark) and `cpu_table.py` (markdown/JSON table).
"""
import importlib
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

try:
    import nested_kernels  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import nested_kernels
from nested_kernels import LinearMemoryState, MLPMemoryState
from nested_kernels.backends import OpBackends
from nested_kernels.cms import cms_level as _cms_level

__all__ = [
    "MODES", "OPS", "REFERENCE_MAX_T", "SHAPES", "Shape", "Case", "BUILDERS", "op_backends", "backend_call",
    "build_linear_memory", "build_mlp_memory", "build_cms_level", "cases",
]

MODES = ("fwd", "fwd+bwd")
OPS = ("linear_memory", "mlp_memory", "cms_level")
# The reference tier (token loops, the oracle) is not timed above this many tokens per sequence.
REFERENCE_MAX_T = 1024
NOT_RUN_REFERENCE = f"not run: the reference tier (token loop) is too slow at T > {REFERENCE_MAX_T}"
# Tiers that can run on a CPU but whose CPU time means nothing: listed as not run there.
NOT_TIMED_ON_CPU = {
    "triton": "not run: Triton on a CPU is its interpreter (a correctness tool); GPU benchmarks time it",
    "cuda": "not run: CUDA tier, GPU benchmarks time it",
}

Fn = Callable[[], Tuple[torch.Tensor, ...]]


@dataclass(frozen=True)
class Shape:
    """One named problem size of one op. `dims` holds the op's sizes and flags."""

    op: str
    name: str                      # full name, e.g. "B2-T1024-H4-K64-V64-C64-mom-dgd"
    tag: str                       # the variant within a T, used in ids: "dgd", "nodgd", "Dh64", ...
    B: int
    T: int
    dims: Dict[str, object] = field(default_factory=dict, compare=False, hash=False)

    @property
    def tokens(self) -> int:
        return self.B * self.T


def _linear_memory_shapes() -> List[Shape]:
    B, H, K, V, C = 2, 4, 64, 64, 64
    out = []
    for T in (256, 512, 1024, 2048):
        for dgd in (False, True):
            name = f"B{B}-T{T}-H{H}-K{K}-V{V}-C{C}-mom" + ("-dgd" if dgd else "")
            out.append(Shape("linear_memory", name, "dgd" if dgd else "nodgd", B, T,
                             dict(H=H, K=K, V=V, chunk_size=C, momentum=True, dgd=dgd)))
    return out


def _mlp_memory_shapes() -> List[Shape]:
    B, H, K, V, C = 2, 4, 32, 32, 16
    out = []
    for T in (256, 1024):
        for Dh in (64, 128):
            name = f"B{B}-T{T}-H{H}-K{K}-V{V}-Dh{Dh}-C{C}-mom-dgd-self"
            out.append(Shape("mlp_memory", name, f"Dh{Dh}", B, T,
                             dict(H=H, K=K, V=V, Dh=Dh, chunk_size=C, momentum=True, dgd=True,
                                  self_target=True, activation="silu", residual=True, read="current")))
    return out


def _cms_level_shapes() -> List[Shape]:
    B, D, Dh, P = 2, 64, 256, 16
    return [
        Shape("cms_level", f"B{B}-T{T}-D{D}-Dh{Dh}-P{P}", f"Dh{Dh}-P{P}", B, T,
              dict(D=D, Dh=Dh, period=P, activation="silu"))
        for T in (256, 1024)
    ]


SHAPES: Dict[str, List[Shape]] = {
    "linear_memory": _linear_memory_shapes(),
    "mlp_memory": _mlp_memory_shapes(),
    "cms_level": _cms_level_shapes(),
}


def op_backends(op: str) -> OpBackends:
    """The backend registry of an op (an `OpBackends`)."""
    # The package's `linear_memory` / `mlp_memory` attributes are the functions: take the modules.
    module = importlib.import_module({"cms_level": "nested_kernels.cms"}.get(op, f"nested_kernels.{op}"))
    registry = getattr(module, "BACKENDS", None)
    if not isinstance(registry, OpBackends):
        raise LookupError(f"{op}: no OpBackends registry `BACKENDS` in {module.__name__}")
    return registry


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

def _gates(B: int, T: int, H: int, gen: torch.Generator, device) -> Tuple[torch.Tensor, ...]:
    """lr ∈ (0, 0.1], retention ∈ [0.9, 1], momentum ∈ [0, 0.9], all `[B, T, H]` fp32."""
    lr = 0.1 * torch.rand(B, T, H, generator=gen).clamp_min(1e-3)
    retention = 0.9 + 0.1 * torch.rand(B, T, H, generator=gen)
    momentum = 0.9 * torch.rand(B, T, H, generator=gen)
    return tuple(t.to(device) for t in (lr, retention, momentum))


def _leaves(tensors: Sequence[Optional[torch.Tensor]], requires_grad: bool) -> List[Optional[torch.Tensor]]:
    return [None if t is None else t.detach().clone().requires_grad_(requires_grad) for t in tensors]


def _runner(mode: str, forward: Callable[[], Tuple[torch.Tensor, Sequence[torch.Tensor]]],
            leaves: Sequence[torch.Tensor], gen: torch.Generator) -> Fn:
    """Wrap `forward() -> (out, final_state_tensors)` into the timed callable of `mode`."""
    if mode == "fwd":
        def fwd():
            with torch.no_grad():
                out, state = forward()
            return (out, *state)
        return fwd

    if mode != "fwd+bwd":
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    with torch.no_grad():                                      # cotangents of the loss, fixed per case
        out, state = forward()
    d_out = torch.randn(out.shape, generator=gen).to(out)
    d_state = [torch.randn(s.shape, generator=gen).to(s) for s in state]
    inputs = [t for t in leaves if t is not None and t.requires_grad]

    def fwd_bwd():
        out, state = forward()
        loss = (out * d_out).sum() + sum((s * ds).sum() for s, ds in zip(state, d_state))
        grads = torch.autograd.grad(loss, inputs, allow_unused=True)
        return tuple(g for g in grads if g is not None)
    return fwd_bwd


def build_linear_memory(shape: Shape, backend: str, mode: str, *, device="cpu", seed: int = 0) -> Fn:
    d = shape.dims
    B, T, H, K, V = shape.B, shape.T, d["H"], d["K"], d["V"]
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen)
    lr, retention, momentum = _gates(B, T, H, gen, "cpu")
    m0 = 0.1 * torch.randn(B, H, K, V, generator=gen)
    s0 = 0.01 * torch.randn(B, H, K, V, generator=gen) if d["momentum"] else None
    if not d["momentum"]:
        momentum = None
    tensors = [q, k, v, lr, retention, momentum, m0, s0]
    tensors = [None if t is None else t.to(device) for t in tensors]
    leaves = _leaves(tensors, mode == "fwd+bwd")
    q, k, v, lr, retention, momentum, m0, s0 = leaves
    scale = K ** -0.5

    def forward():
        o, final = nested_kernels.linear_memory(
            q, k, v, lr, retention, momentum, dgd=d["dgd"], chunk_size=d["chunk_size"], scale=scale,
            initial_state=LinearMemoryState(m0, s0), output_final_state=True, backend=backend,
        )
        return o, [t for t in final if t is not None]
    return _runner(mode, forward, leaves, gen)


def build_mlp_memory(shape: Shape, backend: str, mode: str, *, device="cpu", seed: int = 0) -> Fn:
    d = shape.dims
    B, T, H, K, V, Dh = shape.B, shape.T, d["H"], d["K"], d["V"], d["Dh"]
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen)
    lr, retention, momentum = _gates(B, T, H, gen, "cpu")
    w1 = torch.randn(1, H, K, Dh, generator=gen) * K ** -0.5          # shared meta-learned init
    w2 = torch.randn(1, H, Dh, V, generator=gen) * 0.02
    s1 = torch.zeros(B, H, K, Dh) if d["momentum"] else None
    s2 = torch.zeros(B, H, Dh, V) if d["momentum"] else None
    if not d["momentum"]:
        momentum = None
    tensors = [q, k, v, lr, retention, momentum, w1, w2, s1, s2]
    tensors = [None if t is None else t.to(device) for t in tensors]
    leaves = _leaves(tensors, mode == "fwd+bwd")
    q, k, v, lr, retention, momentum, w1, w2, s1, s2 = leaves

    def forward():
        o, final = nested_kernels.mlp_memory(
            q, k, v, lr, retention, momentum, initial_state=MLPMemoryState(w1, w2, s1, s2),
            activation=d["activation"], residual=d["residual"], dgd=d["dgd"], self_target=d["self_target"],
            read=d["read"], chunk_size=d["chunk_size"], output_final_state=True, backend=backend,
        )
        return o, [t for t in final if t is not None]
    return _runner(mode, forward, leaves, gen)


def build_cms_level(shape: Shape, backend: str, mode: str, *, device="cpu", seed: int = 0) -> Fn:
    d = shape.dims
    B, T, D, Dh = shape.B, shape.T, d["D"], d["Dh"]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=gen)
    w1 = torch.randn(D, Dh, generator=gen) * D ** -0.5                # shared meta-learned init
    w2 = torch.randn(Dh, D, generator=gen) * Dh ** -0.5 * 0.1
    lr = 0.01 * torch.rand(B, T, generator=gen)
    target = torch.randn(B, T, D, generator=gen)
    tensors = [t.to(device) for t in (x, w1, w2, lr, target)]
    leaves = _leaves(tensors, mode == "fwd+bwd")
    x, w1, w2, lr, target = leaves

    def forward():
        y, final = _cms_level(
            x, w1, w2, period=d["period"], lr=lr, retention=0.99, target=target,
            activation=d["activation"], output_final_state=True, backend=backend,
        )
        return y, list(final)
    return _runner(mode, forward, leaves, gen)


BUILDERS: Dict[str, Callable[..., Fn]] = {
    "linear_memory": build_linear_memory,
    "mlp_memory": build_mlp_memory,
    "cms_level": build_cms_level,
}


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One timed configuration: op × shape × backend × mode."""

    shape: Shape
    backend: str
    mode: str
    skip: Optional[str] = None     # why it is listed but not run (e.g. the reference at large T)

    @property
    def op(self) -> str:
        return self.shape.op

    @property
    def id(self) -> str:
        return f"{self.op}-{self.backend}-{self.mode}-T{self.shape.T}-{self.shape.tag}"

    def build(self, *, device="cpu", seed: int = 0) -> Fn:
        return BUILDERS[self.op](self.shape, self.backend, self.mode, device=device, seed=seed)


def backend_call(shape: Shape, mode: str, device="cpu") -> dict:
    """The `call` dict the op hands its registry for this shape and mode (fp32 inputs).

    The keys the ops' `supports` functions read, for every op (unused keys are ignored).
    """
    d = shape.dims
    return {
        "device": torch.device(device), "dtype": torch.float32, "requires_grad": mode == "fwd+bwd",
        "B": shape.B, "T": shape.T, "H": d.get("H"), "K": d.get("K", d.get("D")), "V": d.get("V", d.get("D")),
        "D": d.get("D"), "Dh": d.get("Dh"), "chunk_size": d.get("chunk_size", d.get("period")),
        "period": d.get("period"),
    }


def cases(ops: Optional[Sequence[str]] = None, *, device="cpu",
          shape_filter: Optional[Callable[[Shape], bool]] = None) -> List[Case]:
    """Every op × shape × mode × backend the op's registry can run on `device`.

    Forward-only tiers (registry refuses `requires_grad=True`) appear only with mode "fwd".
    Listed but not run (`Case.skip`): the reference above `REFERENCE_MAX_T`, and on a CPU the
    GPU tiers (`NOT_TIMED_ON_CPU`).
    """
    device = torch.device(device)
    out = []
    for op in ops or OPS:
        registry = op_backends(op)
        for shape in SHAPES[op]:
            if shape_filter is not None and not shape_filter(shape):
                continue
            for mode in MODES:
                for backend in registry.available(backend_call(shape, mode, device)):
                    skip = None
                    if backend == "reference" and shape.T > REFERENCE_MAX_T:
                        skip = NOT_RUN_REFERENCE
                    elif device.type == "cpu" and backend in NOT_TIMED_ON_CPU:
                        skip = NOT_TIMED_ON_CPU[backend]
                    out.append(Case(shape, backend, mode, skip))
    return out
