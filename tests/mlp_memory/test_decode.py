"""`mlp_memory_step` (decoding) against the chunked `mlp_memory` (SPEC §3): any split of a
stream into decode calls gives the outputs and final state of one chunked call."""
import itertools

import pytest
import torch

from nested_kernels import MLPMemoryDecodeState, MLPMemoryState, mlp_memory, mlp_memory_step
from nested_kernels._extension import build_info, has_cpp_op
from tests.helpers import F64, decode_in_steps, gates, mlp_state, qkv, rms_ratio, split_sizes

HAS_OP = has_cpp_op("mlp_memory_step")
needs_op = pytest.mark.skipif(not HAS_OP, reason=f"nested_kernels._C is not built: {build_info().get('error')}")
TOL = 1e-10
TOLS = {torch.float64: TOL, torch.float32: 1e-4}
BACKENDS = ["torch", pytest.param("cpp", marks=needs_op)]
FIELDS = ("w1", "w2", "s1", "s2")


def make_case(N, T, H, D, Dh, has_mom, shared, dtype=F64):
    q, k, v = qkv(N, T, H, D, D, dtype=dtype)
    lr, ret, mom = gates(N, T, H, momentum=has_mom, dtype=dtype)
    h0 = mlp_state(N, H, D, Dh, D, momentum=has_mom, shared=shared, dtype=dtype)
    return (q, k, v, lr, ret, mom), h0


def decode(inputs, state, sizes, **kw):
    return decode_in_steps(mlp_memory_step, inputs, state, sizes, **kw)


def chunked(inputs, h0, C, **kw):
    return mlp_memory(*inputs, initial_state=h0, chunk_size=C, output_final_state=True, backend="torch", **kw)


def assert_matches(o, state, ref, tol=TOL):
    o_ref, final = ref
    torch.testing.assert_close(o, o_ref.to(o.dtype), atol=tol, rtol=tol, msg=lambda m: f"o: {m}")
    for name in FIELDS:
        if getattr(final, name) is not None:
            torch.testing.assert_close(getattr(state, name), getattr(final, name), atol=tol, rtol=tol,
                                       msg=lambda m, name=name: f"final {name}: {m}")


PATTERNS = {"ones": (1,), "mixed": (1, 3, None, 2, 5)}  # None: a whole chunk
MODES = {  # every switch of the op, each flipped from the default at least once
    "default": dict(),
    "dgd": dict(dgd=True),
    "self_target-gelu": dict(self_target=True, activation="gelu"),
    "chunk_start": dict(read="chunk_start"),
    "no_residual-dgd-chunk_start": dict(residual=False, dgd=True, read="chunk_start"),
    "all": dict(dgd=True, self_target=True, read="chunk_start", activation="gelu"),
}


def _case_params():
    for C, has_mom, mode, pattern in itertools.product((16, 32), (False, True), MODES, PATTERNS):
        ids = (f"C{C}", "mom" if has_mom else "nomom", mode, pattern)
        yield pytest.param(C, has_mom, mode, pattern, id="-".join(ids))


def run_case(backend, dtype, C, has_mom, mode, pattern):
    N, H, D, Dh = 2, 2, 6, 10
    T = 2 * C + 7                                                   # odd, ends mid-chunk
    inputs, h0 = make_case(N, T, H, D, Dh, has_mom, shared=(C == 16), dtype=dtype)
    ref = chunked(inputs, h0, C, **MODES[mode])
    state = MLPMemoryDecodeState.from_state(h0, C, batch_size=N, momentum=has_mom)
    sizes = split_sizes(T, [C if n is None else n for n in PATTERNS[pattern]])
    o = decode(inputs, state, sizes, backend=backend, **MODES[mode])
    assert o.dtype == dtype
    assert_matches(o, state, ref, TOLS[dtype])
    assert state.position.tolist() == [T % C] * N


CASES = list(_case_params())


@pytest.mark.parametrize("C,has_mom,mode,pattern", CASES)
def test_step_torch(C, has_mom, mode, pattern):
    run_case("torch", F64, C, has_mom, mode, pattern)


@needs_op
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("C,has_mom,mode,pattern", CASES)
def test_step_cpp(C, has_mom, mode, pattern, dtype):
    run_case("cpp", dtype, C, has_mom, mode, pattern)


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_zero_tokens(backend):
    inputs, h0 = make_case(2, 0, 2, 4, 8, True, False)
    state = MLPMemoryDecodeState.from_state(h0, 4)
    before = [x.clone() for x in state[:5]]
    o = mlp_memory_step(*inputs, state, backend=backend)
    assert o.shape == (2, 0, 2, 4)
    assert all(torch.equal(a, b) for a, b in zip(before, state[:5]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["default", "all"])
def test_step_batch_at_different_positions(mode, backend):
    """Sequences that sit at positions 0, 5 and C − 1 of their chunks decode together."""
    C, H, D, Dh, rest = 16, 2, 6, 10, 37
    prefixes = (0, 5, C - 1)
    states, refs, tails = [], [], []
    for p in prefixes:
        inputs, h0 = make_case(1, p + rest, H, D, Dh, True, False)
        refs.append(chunked(inputs, h0, C, **MODES[mode]))
        state = MLPMemoryDecodeState.from_state(h0, C)
        decode([x[:, :p] for x in inputs], state, split_sizes(p, (2,)), backend="torch", **MODES[mode])
        states.append(state)
        tails.append([x[:, p:] for x in inputs])
    fields = MLPMemoryDecodeState._fields
    state = MLPMemoryDecodeState(*(C if f == "chunk_size" else torch.cat([getattr(s, f) for s in states], 0)
                                   for f in fields))
    assert state.position.tolist() == list(prefixes)
    o = decode([torch.cat(xs, 0) for xs in zip(*tails)], state, split_sizes(rest, (1, 3, C, 2)), backend=backend,
               **MODES[mode])
    for n, p in enumerate(prefixes):
        o_ref, final = refs[n]
        one = MLPMemoryDecodeState(*(C if f == "chunk_size" else getattr(state, f)[n:n + 1] for f in fields))
        assert_matches(o[n:n + 1], one, (o_ref[:, p:], final))


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_state_round_trip(backend):
    """At a chunk boundary the decode state is an MLPMemoryState, and back (shared weights expanded)."""
    N, H, D, Dh, C = 2, 2, 6, 10, 16
    mode = MODES["all"]
    inputs, h0 = make_case(N, 3 * C, H, D, Dh, True, True)
    head, tail = [x[:, :2 * C] for x in inputs], [x[:, 2 * C:] for x in inputs]
    state = MLPMemoryDecodeState.from_state(h0, C)
    assert state.w1.shape[0] == N                                   # N from s1
    decode(head, state, split_sizes(2 * C, (3, 1)), backend=backend, **mode)
    assert state.at_chunk_boundary()
    boundary = state.to_state()
    _, final = chunked(head, h0, C, **mode)
    for name in FIELDS:
        torch.testing.assert_close(getattr(boundary, name), getattr(final, name), atol=TOL, rtol=TOL)
    o_ref, _ = chunked(tail, boundary, C, **mode)                   # mlp_memory continues the decode
    o = decode(tail, MLPMemoryDecodeState.from_state(boundary, C), [C], backend=backend, **mode)
    torch.testing.assert_close(o, o_ref, atol=TOL, rtol=TOL)
    mlp_memory_step(*(x[:, :1] for x in tail), state, backend=backend, **mode)
    with pytest.raises(ValueError, match="state.position: expected 0"):
        state.to_state()


def test_step_from_state():
    """Copies, never aliases; shared weights expand to batch_size; zero momenta on request."""
    h0 = mlp_state(1, 1, 4, 8, 4, momentum=True)
    before = [x.clone() for x in h0]
    state = MLPMemoryDecodeState.from_state(h0, 4)
    inputs, _ = make_case(1, 3, 1, 4, 8, True, False)
    mlp_memory_step(*inputs, state, backend="torch")
    assert all(torch.equal(a, b) for a, b in zip(before, h0)), "from_state aliased the given state"
    shared = MLPMemoryState(h0.w1, h0.w2)
    state = MLPMemoryDecodeState.from_state(shared, 4, batch_size=3, momentum=True)
    assert state.w1.shape == (3, 1, 4, 8) and state.w1.is_contiguous() and torch.equal(state.w1[2], h0.w1[0])
    assert torch.count_nonzero(state.s2) == 0 and state.s2.shape == (3, 1, 8, 4)
    assert MLPMemoryDecodeState.from_state(shared, 4).s1 is None


def test_step_gradients_match_chunked():
    """The torch step is differentiable: gradients through a decode equal the chunked forward's."""
    N, T, H, D, Dh, C = 2, 11, 1, 4, 6, 4
    inputs, h0 = make_case(N, T, H, D, Dh, True, True)
    leaves = [x.clone().requires_grad_() for x in inputs]
    h0_leaves = MLPMemoryState(*(x.clone().requires_grad_() for x in h0))
    o_ref, _ = chunked(leaves, h0_leaves, C, dgd=True, self_target=True)
    g_ref = torch.autograd.grad(o_ref.square().sum(), leaves + list(h0_leaves))
    state = MLPMemoryDecodeState.from_state(h0_leaves, C)
    o = decode(leaves, state, split_sizes(T, (1, 3)), dgd=True, self_target=True)
    g = torch.autograd.grad(o.square().sum(), leaves + list(h0_leaves))
    for name, a, b in zip(("q", "k", "v", "lr", "retention", "momentum", *FIELDS), g, g_ref):
        torch.testing.assert_close(a, b, atol=TOL, rtol=TOL, msg=lambda m, name=name: f"d{name}: {m}")


BAD = {
    "state type": (lambda a, s: (a, s.to_state()), TypeError, "state: expected an MLPMemoryDecodeState"),
    "missing momentum state": (lambda a, s: (a, s._replace(s1=None, s2=None)), ValueError, "state.s1/s2"),
    "extra momentum state": (lambda a, s: (a[:5] + [None], s), ValueError, "state.s1/s2"),
    "w1 shape": (lambda a, s: (a, s._replace(w1=s.w1[:1])), ValueError, r"state.w1: expected shape"),
    "w2 shape": (lambda a, s: (a, s._replace(w2=s.w2[..., :1])), ValueError, r"state.w2: expected shape"),
    "chunk_w1 dtype": (lambda a, s: (a, s._replace(chunk_w1=s.chunk_w1.float())), TypeError,
                       "state.chunk_w1: expected the dtype"),
    "s2 shape": (lambda a, s: (a, s._replace(s2=s.s2[:, :1])), ValueError, "state.s2: expected shape"),
    "position dtype": (lambda a, s: (a, s._replace(position=s.position.int())), TypeError, "state.position"),
    "position shape": (lambda a, s: (a, s._replace(position=s.position[:1])), ValueError, "state.position"),
    "chunk_size": (lambda a, s: (a, s._replace(chunk_size=0)), ValueError, "state.chunk_size"),
    "position beyond the chunk": (lambda a, s: (a, s._replace(position=s.position + 4)), ValueError,
                                  r"state.position: expected values in \[0, state.chunk_size = 4\)"),
    "w1 expanded": (lambda a, s: (a, s._replace(w1=s.w1[:1].expand_as(s.w1))), ValueError,
                    "state.w1: expected a tensor whose elements do not share memory"),
    "chunk_w2 is w2": (lambda a, s: (a, s._replace(chunk_w2=s.w2)), ValueError,
                       "state.chunk_w2: expected memory of its own .* overlapping state.w2"),
    "v shape": (lambda a, s: ([a[0], a[1], a[2][:, :1]] + a[3:], s), ValueError, "v: expected shape"),
    "lr shape": (lambda a, s: (a[:3] + [a[3][:, :1]] + a[4:], s), ValueError, "lr: expected shape"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_step_errors(case):
    make, error, match = BAD[case]
    inputs, h0 = make_case(2, 3, 2, 4, 8, True, False)
    args, state = make(list(inputs), MLPMemoryDecodeState.from_state(h0, 4))
    with pytest.raises(error, match=match):
        mlp_memory_step(*args, state, backend="torch")


OPTION_ERRORS = {
    "activation": (dict(activation="relu"), ValueError, "activation: expected one of"),
    "read": (dict(read="end"), ValueError, "read: expected one of"),
    "dgd": (dict(dgd=1), TypeError, "dgd: expected a bool"),
    "self_target": (dict(self_target="yes"), TypeError, "self_target: expected a bool"),
    "backend": (dict(backend="nope"), ValueError, "backend: expected one of"),
}


@pytest.mark.parametrize("case", list(OPTION_ERRORS))
def test_step_errors_options(case):
    kw, error, match = OPTION_ERRORS[case]
    inputs, h0 = make_case(2, 3, 2, 4, 8, True, False)
    with pytest.raises(error, match=match):
        mlp_memory_step(*inputs, MLPMemoryDecodeState.from_state(h0, 4), **kw)


def test_step_errors_residual_and_from_state():
    q, k, v = qkv(1, 2, 1, 4, 6)
    lr, ret, _ = gates(1, 2, 1, momentum=False)
    state = MLPMemoryDecodeState.from_state(mlp_state(1, 1, 4, 8, 6, momentum=False), 4)
    with pytest.raises(ValueError, match="residual: expected K == V"):
        mlp_memory_step(q, k, v, lr, ret, None, state)
    with pytest.raises(ValueError, match="self_target: expected K == V"):
        mlp_memory_step(q, k, v, lr, ret, None, state, residual=False, self_target=True)
    with pytest.raises(TypeError, match="state: expected an MLPMemoryState"):
        MLPMemoryDecodeState.from_state(state, 4)
    with pytest.raises(ValueError, match="state.w1/w2: expected a leading dim of 1 or N = 3"):
        MLPMemoryDecodeState.from_state(mlp_state(2, 1, 4, 8, 4, momentum=False), 4, batch_size=3)


@needs_op
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_step_cpp_low_precision(dtype):
    N, T, H, D, Dh, C = 2, 41, 2, 16, 32, 16
    inputs, h0 = make_case(N, T, H, D, Dh, True, True, torch.float32)
    low = [x.to(dtype) for x in inputs[:3]] + list(inputs[3:])
    ref = chunked([x.float() for x in low[:3]] + low[3:], h0, C, dgd=True)
    state = MLPMemoryDecodeState.from_state(h0, C)
    o = decode(low, state, split_sizes(T, (1, 4)), backend="cpp", dgd=True)
    assert o.dtype == dtype and state.w1.dtype == torch.float32
    for name, r, x in (("o", ref[0], o), ("w1", ref[1].w1, state.w1), ("w2", ref[1].w2, state.w2)):
        assert rms_ratio(r, x.float()) < 5e-3, f"{name}: rms ratio {rms_ratio(r, x.float()):.2e}"


def _op_args(state, inputs, **kw):
    q, k, v, lr, ret, mom = inputs
    opts = {**dict(activation="silu", residual=True, dgd=False, self_target=False, read="current"), **kw}
    return (q, k, v, lr, ret, mom, *state[:4], state.s1, state.s2, state.position, state.chunk_size,
            opts["activation"], opts["residual"], opts["dgd"], opts["self_target"], opts["read"])


@needs_op
@pytest.mark.parametrize("has_mom", [False, True], ids=["nomom", "mom"])
def test_step_opcheck(has_mom):
    N, T, H, D, Dh, C = 2, 5, 2, 4, 8, 4
    inputs, h0 = make_case(N, T, H, D, Dh, has_mom, False, torch.float32)
    state = MLPMemoryDecodeState.from_state(h0, C, momentum=has_mom)
    state.position.copy_(torch.tensor([1, 3]))
    args = _op_args(state, inputs, activation="gelu", dgd=True, self_target=True, read="chunk_start")
    torch.library.opcheck(torch.ops.nested_kernels.mlp_memory_step.default, args)


@needs_op
def test_step_cpp_checks():
    """The op's own TORCH_CHECKs name the argument, the expected and the given value."""
    inputs, h0 = make_case(2, 3, 2, 4, 8, True, False, torch.float32)
    s = MLPMemoryDecodeState.from_state(h0, 4)
    op = torch.ops.nested_kernels.mlp_memory_step
    cases = [
        (s._replace(chunk_w2=s.chunk_w2[:1]), {}, r"mlp_memory_step: chunk_w2 must have shape \[N, H, Dh, V\]"),
        (s._replace(position=s.position.int()), {}, "mlp_memory_step: position must be int64"),
        (s._replace(position=s.position + 4), {}, r"mlp_memory_step: position must be in \[0, chunk_size = 4\)"),
        (s._replace(w1=s.w1.mT.contiguous().mT), {}, "mlp_memory_step: w1 must be contiguous"),
        (s._replace(s2=s.s2.double()), {}, "mlp_memory_step: s2 must be float32"),
        (s._replace(s1=None), {}, "mlp_memory_step: s1 and s2 must be given exactly when momentum is"),
        (s, dict(activation="relu"), 'mlp_memory_step: activation must be "silu" or "gelu"'),
        (s, dict(read="end"), 'mlp_memory_step: read must be "current" or "chunk_start"'),
    ]
    for state, kw, match in cases:
        with pytest.raises(RuntimeError, match=match):
            op(*_op_args(state, inputs, **kw))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.skipif(not build_info().get("cuda", False), reason="nested_kernels._C built without CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["default", "all"])
def test_step_cuda(mode, dtype):
    N, T, H, D, Dh, C = 3, 71, 4, 64, 256, 32
    inputs, h0 = make_case(N, T, H, D, Dh, True, True, torch.float32)
    sizes = split_sizes(T, (1, 3, C, 2))
    state_ref = MLPMemoryDecodeState.from_state(h0, C)
    o_ref = decode(inputs, state_ref, sizes, backend="torch", **MODES[mode])
    dev = [x.cuda() for x in inputs]
    dev[:3] = [x.to(dtype) for x in dev[:3]]
    state = MLPMemoryDecodeState.from_state(MLPMemoryState(*(x.cuda() for x in h0)), C)
    o = decode(dev, state, sizes, backend="cuda", **MODES[mode])
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(o.float().cpu(), o_ref, atol=tol, rtol=tol)
    for name in FIELDS:
        torch.testing.assert_close(getattr(state, name).cpu(), getattr(state_ref, name), atol=tol, rtol=tol)
    assert state.position.tolist() == state_ref.position.tolist()


def test_in_chunk_rejects_a_position_outside_the_chunk():
    w = MLPMemoryState(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="position: expected 0 <= position < chunk_size = 4, got 4"):
        MLPMemoryDecodeState.in_chunk(w, w, 4, 4, batch_size=2)
    state = MLPMemoryDecodeState.in_chunk(w, w, 3, 4, batch_size=2)
    assert state.position.tolist() == [3, 3] and not state.at_chunk_boundary()
