"""`linear_memory_step` (fused decoding) against the chunked `linear_memory` (SPEC §2): any split of
a stream into decode calls gives the outputs and final state of one chunked call."""
import itertools

import pytest
import torch

from nested_kernels import LinearMemoryDecodeState, LinearMemoryState, linear_memory, linear_memory_step
from nested_kernels._extension import build_info, has_cpp_op
from tests.helpers import F64, decode_in_steps, gates, linear_state, qkv, rms_ratio, split_sizes

HAS_OP = has_cpp_op("linear_memory_step")
needs_op = pytest.mark.skipif(not HAS_OP, reason=f"nested_kernels._C is not built: {build_info().get('error')}")
TOL = {torch.float64: 1e-10, torch.float32: 1e-4}


def make_case(N, T, H, K, V, has_mom, has_h0, dtype=F64):
    q, k, v = qkv(N, T, H, K, V, dtype=dtype)
    lr, ret, mom = gates(N, T, H, momentum=has_mom, dtype=dtype)
    h0 = linear_state(N, H, K, V, momentum=has_mom, dtype=dtype) if has_h0 else None
    return (q, k, v, lr, ret, mom), h0


def decode_state(h0, N, H, K, V, C, has_mom, dtype):
    if h0 is None:
        return LinearMemoryDecodeState.zeros(N, H, K, V, chunk_size=C, momentum=has_mom, dtype=dtype)
    return LinearMemoryDecodeState.from_state(h0, C)


def decode(inputs, state, sizes, **kw):
    return decode_in_steps(linear_memory_step, inputs, state, sizes, **kw)


def chunked(inputs, h0, C, dgd, scale):
    return linear_memory(*inputs, dgd=dgd, chunk_size=C, scale=scale, initial_state=h0, output_final_state=True,
                         backend="torch")


def assert_matches(o, state, ref, tol):
    o_ref, final = ref
    torch.testing.assert_close(o, o_ref.to(o.dtype), atol=tol, rtol=tol, msg=lambda m: f"o: {m}")
    torch.testing.assert_close(state.memory, final.memory.to(state.memory.dtype), atol=tol, rtol=tol,
                               msg=lambda m: f"final memory: {m}")
    if final.momentum is not None:
        torch.testing.assert_close(state.momentum, final.momentum.to(state.memory.dtype), atol=tol, rtol=tol,
                                   msg=lambda m: f"final momentum: {m}")


PATTERNS = {"ones": (1,), "mixed": (1, 3, None, 2, 5)}  # None: a whole chunk


def _case_params():
    for C, has_mom, dgd, has_h0, pattern in itertools.product(
        (16, 32, 64), (False, True), (False, True), (False, True), PATTERNS
    ):
        ids = (f"C{C}", "mom" if has_mom else "nomom", "dgd" if dgd else "nodgd", "h0" if has_h0 else "noh0", pattern)
        yield pytest.param(C, has_mom, dgd, has_h0, pattern, id="-".join(ids))


def run_case(backend, dtype, C, has_mom, dgd, has_h0, pattern):
    N, H, K, V = 2, 2, 8, 12
    T = 2 * C + 7                                                   # odd, ends mid-chunk
    inputs, h0 = make_case(N, T, H, K, V, has_mom, has_h0, dtype)
    ref = chunked(inputs, h0, C, dgd, K**-0.5)
    state = decode_state(h0, N, H, K, V, C, has_mom, torch.float64 if dtype == F64 else torch.float32)
    sizes = split_sizes(T, [C if n is None else n for n in PATTERNS[pattern]])
    o = decode(inputs, state, sizes, dgd=dgd, scale=K**-0.5, backend=backend)
    assert o.dtype == dtype
    assert_matches(o, state, ref, TOL[dtype])
    assert state.position.tolist() == [T % C] * N


CASES = list(_case_params())


@pytest.mark.parametrize("C,has_mom,dgd,has_h0,pattern", CASES)
def test_step_torch(C, has_mom, dgd, has_h0, pattern):
    run_case("torch", F64, C, has_mom, dgd, has_h0, pattern)


@needs_op
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("C,has_mom,dgd,has_h0,pattern", CASES)
def test_step_cpp(C, has_mom, dgd, has_h0, pattern, dtype):
    run_case("cpp", dtype, C, has_mom, dgd, has_h0, pattern)


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpp", marks=needs_op)])
@pytest.mark.parametrize("has_mom,dgd", [(False, False), (True, True)], ids=["nomom-nodgd", "mom-dgd"])
def test_step_batch_at_different_positions(has_mom, dgd, backend):
    """Sequences that sit at positions 0, 5 and C − 1 of their chunks decode together."""
    C, H, K, V, rest = 16, 2, 8, 12, 37
    prefixes = (0, 5, C - 1)
    states, refs, tails = [], [], []
    for p in prefixes:
        inputs, h0 = make_case(1, p + rest, H, K, V, has_mom, True)
        refs.append(chunked(inputs, h0, C, dgd, 1.0))
        state = LinearMemoryDecodeState.from_state(h0, C)
        decode([None if x is None else x[:, :p] for x in inputs], state, split_sizes(p, (2,)), dgd=dgd,
               backend="torch")
        states.append(state)
        tails.append([None if x is None else x[:, p:] for x in inputs])
    cat = lambda xs: None if xs[0] is None else torch.cat(xs, 0)  # noqa: E731
    state = LinearMemoryDecodeState(*(cat([getattr(s, f) for s in states]) for f in ("memory", "chunk_memory",
                                    "position")), C, cat([s.momentum for s in states]))
    assert state.position.tolist() == list(prefixes)
    inputs = [cat(list(xs)) for xs in zip(*tails)]
    o = decode(inputs, state, split_sizes(rest, (1, 3, C, 2)), dgd=dgd, backend=backend)
    for n, p in enumerate(prefixes):
        o_ref, final = refs[n]
        one = LinearMemoryDecodeState(state.memory[n:n + 1], state.chunk_memory[n:n + 1], state.position[n:n + 1],
                                      C, None if state.momentum is None else state.momentum[n:n + 1])
        assert_matches(o[n:n + 1], one, (o_ref[:, p:], final), TOL[F64])


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpp", marks=needs_op)])
def test_step_state_round_trip(backend):
    """At a chunk boundary the decode state is a LinearMemoryState, and back."""
    N, H, K, V, C = 2, 2, 8, 12, 16
    inputs, h0 = make_case(N, 3 * C, H, K, V, True, True)
    head = [x[:, :2 * C] for x in inputs]
    tail = [x[:, 2 * C:] for x in inputs]
    state = LinearMemoryDecodeState.from_state(h0, C)
    decode(head, state, split_sizes(2 * C, (3, 1)), dgd=True, backend=backend)
    assert state.at_chunk_boundary()
    boundary = state.to_state()
    _, final = chunked(head, h0, C, True, 1.0)
    torch.testing.assert_close(boundary.memory, final.memory, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(boundary.momentum, final.momentum, atol=1e-10, rtol=1e-10)
    o_ref, _ = chunked(tail, boundary, C, True, 1.0)       # linear_memory continues the decode
    o = decode(tail, LinearMemoryDecodeState.from_state(boundary, C), [C], dgd=True, backend=backend)
    torch.testing.assert_close(o, o_ref, atol=1e-10, rtol=1e-10)
    linear_memory_step(*(x[:, :1] for x in tail), state, dgd=True, backend=backend)
    with pytest.raises(ValueError, match="state.position: expected 0"):
        state.to_state()


def test_step_from_state_copies():
    h0 = linear_state(1, 1, 4, 4, momentum=True)
    before = [x.clone() for x in h0]
    state = LinearMemoryDecodeState.from_state(h0, 4)
    inputs, _ = make_case(1, 3, 1, 4, 4, True, False)
    linear_memory_step(*inputs, state, backend="torch")
    assert all(torch.equal(a, b) for a, b in zip(before, h0)), "from_state aliased the given state"


@needs_op
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_step_cpp_low_precision(dtype):
    N, T, H, K, V, C = 2, 41, 2, 16, 20, 16
    inputs, h0 = make_case(N, T, H, K, V, True, True, torch.float32)
    low = [x.to(dtype) for x in inputs[:3]] + list(inputs[3:])
    ref = chunked([x.float() for x in low[:3]] + low[3:], h0, C, True, 1.0)
    state = LinearMemoryDecodeState.from_state(h0, C)
    o = decode(low, state, split_sizes(T, (1, 4)), dgd=True, backend="cpp")
    assert o.dtype == dtype and state.memory.dtype == torch.float32
    for name, r, x in (("o", ref[0], o), ("memory", ref[1].memory, state.memory)):
        assert rms_ratio(r, x.float()) < 5e-3, f"{name}: rms ratio {rms_ratio(r, x.float()):.2e}"


@needs_op
@pytest.mark.parametrize("has_mom", [False, True], ids=["nomom", "mom"])
def test_step_opcheck(has_mom):
    N, T, H, K, V, C = 2, 5, 2, 8, 12, 4
    (q, k, v, lr, ret, mom), h0 = make_case(N, T, H, K, V, has_mom, True, torch.float32)
    state = LinearMemoryDecodeState.from_state(h0, C)
    state.position.copy_(torch.tensor([1, 3]))
    args = (q, k, v, lr, ret, mom, state.memory, state.chunk_memory, state.momentum, state.position, C, 0.5, True)
    torch.library.opcheck(torch.ops.nested_kernels.linear_memory_step.default, args)


def _overlapping_momentum(state):
    """`state` with memory and momentum as views of one buffer, the momentum one row past the memory."""
    n, row = state.memory.numel(), state.memory.shape[-1]
    buffer = torch.zeros(n + row, dtype=state.memory.dtype)
    memory, momentum = buffer[:n].view_as(state.memory), buffer[row:].view_as(state.memory)
    memory.copy_(state.memory)
    momentum.copy_(state.momentum)
    return state._replace(memory=memory, momentum=momentum)


BAD = {
    "state type": (lambda a, s: (a, s.to_state()), TypeError, "state: expected a LinearMemoryDecodeState"),
    "missing momentum state": (lambda a, s: (a, s._replace(momentum=None)), ValueError, "state.momentum"),
    "extra momentum state": (lambda a, s: (a[:5] + [None], s), ValueError, "state.momentum"),
    "memory shape": (lambda a, s: (a, s._replace(memory=s.memory[:1])), ValueError, r"state.memory: expected shape"),
    "chunk_memory dtype": (lambda a, s: (a, s._replace(chunk_memory=s.chunk_memory.float())), TypeError,
                           "state.chunk_memory: expected the dtype"),
    "position dtype": (lambda a, s: (a, s._replace(position=s.position.int())), TypeError, "state.position"),
    "position shape": (lambda a, s: (a, s._replace(position=s.position[:1])), ValueError, "state.position"),
    "chunk_size": (lambda a, s: (a, s._replace(chunk_size=0)), ValueError, "state.chunk_size"),
    "chunk_size beyond int64": (lambda a, s: (a, s._replace(chunk_size=2**63)), ValueError,
                                r"state.chunk_size: expected an int <= 2\^63 - 1"),
    "position beyond the chunk": (lambda a, s: (a, s._replace(position=s.position + 4)), ValueError,
                                  r"state.position: expected values in \[0, state.chunk_size = 4\), "
                                  r"got position\[0\] = 4 \(2 of 2 outside\)"),
    "position negative": (lambda a, s: (a, s._replace(position=s.position - 1)), ValueError,
                          r"state.position: expected values in \[0, state.chunk_size = 4\)"),
    "memory expanded": (lambda a, s: (a, s._replace(memory=s.memory[:1].expand_as(s.memory))), ValueError,
                        "state.memory: expected a tensor whose elements do not share memory"),
    "chunk_memory is memory": (lambda a, s: (a, s._replace(chunk_memory=s.memory)), ValueError,
                               "state.chunk_memory: expected memory of its own .* overlapping state.memory"),
    "momentum overlaps memory": (lambda a, s: (a, _overlapping_momentum(s)), ValueError,
                                 "state.momentum: expected memory of its own .* overlapping state.memory"),
    "v shape": (lambda a, s: ([a[0], a[1], a[2][:, :, :1]] + a[3:], s), ValueError, "v: expected shape"),
    "lr shape": (lambda a, s: (a[:3] + [a[3][:, :1]] + a[4:], s), ValueError, "lr: expected shape"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_step_errors(case):
    make, error, match = BAD[case]
    inputs, h0 = make_case(2, 3, 2, 4, 6, True, True)
    args, state = make(list(inputs), LinearMemoryDecodeState.from_state(h0, 4))
    with pytest.raises(error, match=match):
        linear_memory_step(*args, state, backend="torch")


def test_step_errors_flags():
    inputs, h0 = make_case(2, 3, 2, 4, 6, True, True)
    state = LinearMemoryDecodeState.from_state(h0, 4)
    with pytest.raises(TypeError, match="scale: expected a float"):
        linear_memory_step(*inputs, state, scale="1")
    with pytest.raises(TypeError, match="dgd: expected a bool"):
        linear_memory_step(*inputs, state, dgd=1)
    with pytest.raises(ValueError, match="backend: expected one of"):
        linear_memory_step(*inputs, state, backend="nope")
    with pytest.raises(TypeError, match="state: expected a LinearMemoryState"):
        LinearMemoryDecodeState.from_state(state, 4)


@needs_op
def test_step_cpp_checks():
    """The op's own TORCH_CHECKs name the argument, the expected and the given value."""
    (q, k, v, lr, ret, mom), h0 = make_case(2, 3, 2, 4, 6, True, True, torch.float32)
    s = LinearMemoryDecodeState.from_state(h0, 4)
    op = torch.ops.nested_kernels.linear_memory_step
    with pytest.raises(RuntimeError, match=r"linear_memory_step: chunk_memory must have shape \[N, H, K, V\]"):
        op(q, k, v, lr, ret, mom, s.memory, s.chunk_memory[:1], s.momentum, s.position, 4, 1.0, False)
    with pytest.raises(RuntimeError, match="linear_memory_step: position must be int64"):
        op(q, k, v, lr, ret, mom, s.memory, s.chunk_memory, s.momentum, s.position.int(), 4, 1.0, False)
    with pytest.raises(RuntimeError, match=r"linear_memory_step: position must be in \[0, chunk_size = 4\)"):
        op(q, k, v, lr, ret, mom, s.memory, s.chunk_memory, s.momentum, s.position + 4, 4, 1.0, False)
    with pytest.raises(RuntimeError, match="linear_memory_step: memory must be contiguous"):
        op(q, k, v, lr, ret, mom, s.memory.mT.contiguous().mT, s.chunk_memory, s.momentum, s.position, 4, 1.0, False)
    with pytest.raises(RuntimeError, match="linear_memory_step: memory must be float32"):
        op(q, k, v, lr, ret, mom, s.memory.double(), s.chunk_memory, s.momentum, s.position, 4, 1.0, False)


STATES_THE_OP_CANNOT_UPDATE = {
    "fp64 state, fp32 inputs": (torch.float32, lambda s: s._replace(memory=s.memory.double(),
                                                                    chunk_memory=s.chunk_memory.double(),
                                                                    momentum=s.momentum.double()),
                                "it keeps a torch.float32 state for torch.float32 inputs, got a torch.float64 state"),
    "fp32 state, fp64 inputs": (F64, lambda s: s,
                                "it keeps a torch.float64 state for torch.float64 inputs, got a torch.float32 state"),
    "transposed memory": (torch.float32, lambda s: s._replace(memory=s.memory.mT.contiguous().mT),
                          "it updates the state in place and needs contiguous state tensors"),
}


@needs_op
@pytest.mark.parametrize("case", list(STATES_THE_OP_CANNOT_UPDATE))
def test_step_cpp_refuses_states_it_cannot_update(case):
    """cpp says why (NotImplementedError, not the op's RuntimeError) and auto falls back to torch, whose
    numbers it then gives."""
    dtype, change, reason = STATES_THE_OP_CANNOT_UPDATE[case]
    inputs, h0 = make_case(2, 3, 2, 4, 6, True, True, dtype)
    fresh = lambda: change(LinearMemoryDecodeState.from_state(LinearMemoryState(*(x.float() for x in h0)), 4))
    with pytest.raises(NotImplementedError, match=reason):
        linear_memory_step(*inputs, fresh(), backend="cpp")
    auto, torch_state = fresh(), fresh()
    torch.testing.assert_close(linear_memory_step(*inputs, auto, backend="auto"),
                               linear_memory_step(*inputs, torch_state, backend="torch"), rtol=0, atol=0)
    torch.testing.assert_close(auto.memory, torch_state.memory, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.skipif(not build_info().get("cuda", False), reason="nested_kernels._C built without CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("has_mom,dgd", [(False, False), (True, True)], ids=["nomom-nodgd", "mom-dgd"])
def test_step_cuda(has_mom, dgd, dtype):
    N, T, H, K, V, C = 3, 71, 4, 64, 96, 32
    inputs, h0 = make_case(N, T, H, K, V, has_mom, True, torch.float32)
    sizes = split_sizes(T, (1, 3, C, 2))
    state_ref = LinearMemoryDecodeState.from_state(h0, C)
    o_ref = decode(inputs, state_ref, sizes, dgd=dgd, backend="torch")
    dev = [None if x is None else x.cuda() for x in inputs]
    dev[:3] = [x.to(dtype) for x in dev[:3]]
    state = LinearMemoryDecodeState.from_state(LinearMemoryState(*(None if x is None else x.cuda() for x in h0)), C)
    o = decode(dev, state, sizes, dgd=dgd, backend="cuda")
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(o.float().cpu(), o_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(state.memory.cpu(), state_ref.memory, atol=tol, rtol=tol)
    assert state.position.tolist() == state_ref.position.tolist()
    if has_mom:
        torch.testing.assert_close(state.momentum.cpu(), state_ref.momentum, atol=tol, rtol=tol)
    mid_chunk = state_ref.position > 0                                        # chunk_memory is stale at 0
    torch.testing.assert_close(state.chunk_memory.cpu()[mid_chunk], state_ref.chunk_memory[mid_chunk], atol=tol, rtol=tol)
