"""`nested-kernels check`: every op × every backend this machine can run, against the
reference on fresh random inputs, forward and backward (the final state in the loss)."""
from typing import Callable, List, NamedTuple, Optional

import torch
import torch.nn.functional as F

from .cms import BACKENDS as CMS_BACKENDS, cms_level
from .linear_memory import BACKENDS as LINEAR_BACKENDS, LinearMemoryState, linear_memory
from .linear_memory.decode import STEP_BACKENDS, LinearMemoryDecodeState, linear_memory_step
from .mlp_memory import BACKENDS as MLP_BACKENDS, MLPMemoryState, mlp_memory
from .mlp_memory.decode import STEP_BACKENDS as MLP_STEP_BACKENDS, MLPMemoryDecodeState, mlp_memory_step

TOLERANCE = 1e-4    # max |out − ref| / max |ref| per tensor, backend in fp32 vs reference in fp64


class Case(NamedTuple):
    op: str
    name: str
    backends: object                      # the op's OpBackends registry
    make: Callable[[], tuple]             # () -> (tensors, options) in fp64; tensors are differentiable
    call: Callable                        # (backend, *tensors, **options) -> (output, final_state)
    facts: dict                           # what backends decide support on: K, V, chunk_size

    def backend_call(self, device: torch.device, requires_grad: bool) -> dict:
        """The call description the op's backends judge (backends run the check in fp32)."""
        return {"device": device, "requires_grad": requires_grad, "dtype": torch.float32, **self.facts}


def _qkv_gates(B, T, H, K, V):
    return [
        torch.randn(B, T, H, K), F.normalize(torch.randn(B, T, H, K), dim=-1), torch.randn(B, T, H, V),
        0.5 * torch.rand(B, T, H), 0.5 + 0.5 * torch.rand(B, T, H), 0.9 * torch.rand(B, T, H),
    ]


def _linear_case(varlen: bool):
    def make():
        B, T, H, K, V = (1, 90, 2, 16, 16) if varlen else (2, 100, 2, 32, 24)
        N = 3 if varlen else B
        tensors = _qkv_gates(B, T, H, K, V) + [0.3 * torch.randn(N, H, K, V), 0.1 * torch.randn(N, H, K, V)]
        options = dict(dgd=True, chunk_size=32, scale=0.5)
        if varlen:
            options["cu_seqlens"] = torch.tensor([0, 10, 75, 90])
        return tensors, options

    def call(backend, q, k, v, lr, ret, mom, m0, s0, **options):
        return linear_memory(q, k, v, lr, ret, mom, initial_state=LinearMemoryState(m0, s0),
                                     output_final_state=True, backend=backend, **options)

    facts = dict(K=16, V=16, chunk_size=32) if varlen else dict(K=32, V=24, chunk_size=32)
    return Case("linear_memory", "varlen" if varlen else "mom+dgd", LINEAR_BACKENDS, make, call, facts)


def _linear_step_case():
    """Decoding in steps of 1, 3, a chunk and 2 tokens against the reference on the whole stream."""
    B, T, H, K, V, C = 2, 75, 2, 16, 24, 32

    def make():
        tensors = _qkv_gates(B, T, H, K, V) + [0.3 * torch.randn(B, H, K, V), 0.1 * torch.randn(B, H, K, V)]
        return tensors, dict(dgd=True, scale=0.5)

    def call(backend, q, k, v, lr, ret, mom, m0, s0, **options):
        if backend == "reference":
            return linear_memory(q, k, v, lr, ret, mom, initial_state=LinearMemoryState(m0, s0), chunk_size=C,
                                 output_final_state=True, backend="reference", **options)
        state = LinearMemoryDecodeState.from_state(LinearMemoryState(m0, s0), C)
        o = _decode_in_steps(linear_memory_step, (q, k, v, lr, ret, mom), state, backend=backend, **options)
        return o, LinearMemoryState(state.memory, state.momentum)

    return Case("linear_memory_step", "mom+dgd", STEP_BACKENDS, make, call, dict(K=K, V=V, chunk_size=C))


def _mlp_step_case():
    """Decoding in steps of 1, 3, a chunk and 2 tokens against the reference on the whole stream."""
    B, T, H, D, Dh, C = 2, 41, 2, 16, 32, 16

    def make():
        tensors = _qkv_gates(B, T, H, D, D) + [
            torch.randn(1, H, D, Dh) / D**0.5, torch.randn(1, H, Dh, D) / Dh**0.5,
            0.05 * torch.randn(B, H, D, Dh), 0.05 * torch.randn(B, H, Dh, D),
        ]
        return tensors, dict(dgd=True, self_target=True)

    def call(backend, q, k, v, lr, ret, mom, *state, **options):
        if backend == "reference":
            return mlp_memory(q, k, v, lr, ret, mom, initial_state=MLPMemoryState(*state), chunk_size=C,
                              output_final_state=True, backend="reference", **options)
        decode_state = MLPMemoryDecodeState.from_state(MLPMemoryState(*state), C)
        o = _decode_in_steps(mlp_memory_step, (q, k, v, lr, ret, mom), decode_state, backend=backend, **options)
        return o, MLPMemoryState(decode_state.w1, decode_state.w2, decode_state.s1, decode_state.s2)

    return Case("mlp_memory_step", "mom+dgd+self_target", MLP_STEP_BACKENDS, make, call,
                dict(K=D, V=D, chunk_size=C))


def _decode_in_steps(step, inputs, state, **options):
    """`step` over the stream in calls of 1, 3, a chunk and 2 tokens, cycling; the outputs joined."""
    T, C = inputs[0].shape[1], state.chunk_size
    outs, t, sizes = [], 0, [1, 3, C, 2] * T
    while t < T:
        n = min(sizes.pop(0), T - t)
        outs.append(step(*(x[:, t:t + n] for x in inputs), state, **options))
        t += n
    return torch.cat(outs, 1)


def _mlp_case(read: str, varlen: bool):
    def make():
        B, T, H, D, Dh = (1, 50, 2, 8, 16) if varlen else (2, 45, 2, 16, 32)
        N = 2 if varlen else B
        tensors = _qkv_gates(B, T, H, D, D) + [
            torch.randn(1, H, D, Dh) / D**0.5, torch.randn(1, H, Dh, D) / Dh**0.5,
            0.05 * torch.randn(N, H, D, Dh), 0.05 * torch.randn(N, H, Dh, D),
        ]
        options = dict(dgd=True, self_target=True, read=read, chunk_size=16)
        if varlen:
            options["cu_seqlens"] = torch.tensor([0, 7, 50])
        return tensors, options

    def call(backend, q, k, v, lr, ret, mom, *state, **options):
        return mlp_memory(q, k, v, lr, ret, mom, initial_state=MLPMemoryState(*state),
                               output_final_state=True, backend=backend, **options)

    name = f"{read}{'+varlen' if varlen else ''}"
    facts = dict(K=8, V=8, Dh=16, chunk_size=16) if varlen else dict(K=16, V=16, Dh=32, chunk_size=16)
    return Case("mlp_memory", name, MLP_BACKENDS, make, call, facts)


def _cms_case(signal: str):
    def make():
        B, T, D, Dh = 2, 70, 16, 32
        x = torch.randn(B, T, D)
        # lr ≤ 0.03: at 0.1 the target loss's inner steps nearly diverge, and fp32 rounding grows to
        # 1e-5 (CPU) / 2e-4 (H100) of the result — a test of conditioning, not of the backend.
        tensors = [x, torch.randn(D, Dh) / D**0.5, torch.randn(Dh, D) / Dh**0.5, 0.03 * torch.rand(B, T),
                   torch.randn(B, T, D)]
        return tensors, dict(period=16, signal=signal, activation="gelu")

    def call(backend, x, w1, w2, lr, signal_tensor, signal, **options):
        return cms_level(x, w1, w2, lr=lr, retention=0.9, output_final_state=True, backend=backend,
                              **{signal: signal_tensor}, **options)

    return Case("cms_level", signal, CMS_BACKENDS, make, call, dict(period=16, T=70, D=16, Dh=32))


CASES: List[Case] = [
    _linear_case(False), _linear_case(True), _linear_step_case(),
    _mlp_case("current", False), _mlp_case("chunk_start", True), _mlp_step_case(),
    _cms_case("target"), _cms_case("grad_y"),
]


def _relative_error(ref: torch.Tensor, out: torch.Tensor) -> float:
    return ((out.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def _run(case: Case, backend: str, tensors, options, dtype, with_grad: bool):
    leaves = [t.detach().to(dtype).requires_grad_(with_grad) for t in tensors]
    with torch.set_grad_enabled(with_grad):
        out, state = case.call(backend, *leaves, **options)
        outputs = [out] + [s for s in state if s is not None]
        if not with_grad:
            return outputs, None
        gen = torch.Generator().manual_seed(0)
        loss = sum((o.double() * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device)).sum()
                   for o in outputs)
        return outputs, torch.autograd.grad(loss, leaves, allow_unused=True)


class Row(NamedTuple):
    op: str
    case: str
    backend: str
    forward_error: float
    backward_error: Optional[float]       # None: the backend is forward-only
    passed: bool
    note: str = ""


def check_case(case: Case, backend: str, device: torch.device) -> Row:
    torch.manual_seed(0)
    tensors, options = case.make()
    tensors = [t.to(device, torch.float64) for t in tensors]
    options = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in options.items()}
    trainable = backend in case.backends.available(case.backend_call(device, requires_grad=True))
    try:
        ref_out, ref_grads = _run(case, "reference", tensors, options, torch.float64, trainable)
        out, grads = _run(case, backend, tensors, options, torch.float32, trainable)
    except Exception as e:  # a crashing backend is a failed row, not a crashed check
        return Row(case.op, case.name, backend, float("nan"), None, False, f"{type(e).__name__}: {e}")
    fwd = max(_relative_error(r, o) for r, o in zip(ref_out, out))
    bwd = None
    if trainable:
        bwd = max(_relative_error(r, g) for r, g in zip(ref_grads, grads) if r is not None)
    passed = fwd <= TOLERANCE and (bwd is None or bwd <= TOLERANCE)
    return Row(case.op, case.name, backend, fwd, bwd, passed, "" if trainable else "forward-only")


def plan(device: torch.device, ops: Optional[List[str]] = None):
    """(case, backend) pairs to check: every backend other than the reference that runs here."""
    pairs = []
    for case in CASES:
        if ops and case.op not in ops:
            continue
        for backend in case.backends.available(case.backend_call(device, requires_grad=False)):
            if backend != "reference":
                pairs.append((case, backend))
    return pairs


def format_table(rows: List[Row]) -> str:
    header = ("op", "case", "backend", "fwd rel err", "bwd rel err", "result", "note")
    lines = [header]
    for r in rows:
        bwd = "n/a" if r.backward_error is None else f"{r.backward_error:.1e}"
        lines.append((r.op, r.case, r.backend, f"{r.forward_error:.1e}", bwd, "pass" if r.passed else "FAIL", r.note))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    fmt = lambda line: "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(lines[0]), sep] + [fmt(line) for line in lines[1:]])
