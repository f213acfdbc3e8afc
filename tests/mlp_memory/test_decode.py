"""`mlp_memory_step` (decoding) against the chunked `mlp_memory` (SPEC §3): any split of a
stream into decode calls gives the outputs and final state of one chunked call."""
import itertools

import pytest
import torch

from nested_kernels import MLPMemoryDecodeState, MLPMemoryState, mlp_memory, mlp_memory_step
from tests.helpers import F64, gates, mlp_state, qkv

TOL = 1e-10
FIELDS = ("w1", "w2", "s1", "s2")


def make_case(N, T, H, D, Dh, has_mom, shared, dtype=F64):
    q, k, v = qkv(N, T, H, D, D, dtype=dtype)
    lr, ret, mom = gates(N, T, H, momentum=has_mom, dtype=dtype)
    h0 = mlp_state(N, H, D, Dh, D, momentum=has_mom, shared=shared, dtype=dtype)
    return (q, k, v, lr, ret, mom), h0


def split_sizes(T, pattern):
    """Step sizes summing to T, cycling through `pattern`."""
    sizes, it = [], itertools.cycle(pattern)
    while sum(sizes) < T:
        sizes.append(min(next(it), T - sum(sizes)))
    return sizes


def decode(inputs, state, sizes, **kw):
    outs, t = [], 0
    for n in sizes:
        outs.append(mlp_memory_step(*(None if x is None else x[:, t:t + n] for x in inputs), state, **kw))
        t += n
    return torch.cat(outs, 1) if outs else None


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


@pytest.mark.parametrize("C,has_mom,mode,pattern", list(_case_params()))
def test_step_torch(C, has_mom, mode, pattern):
    N, H, D, Dh = 2, 2, 6, 10
    T = 2 * C + 7                                                   # odd, ends mid-chunk
    inputs, h0 = make_case(N, T, H, D, Dh, has_mom, shared=(C == 16))
    ref = chunked(inputs, h0, C, **MODES[mode])
    state = MLPMemoryDecodeState.from_state(h0, C, batch_size=N, momentum=has_mom)
    o = decode(inputs, state, split_sizes(T, [C if n is None else n for n in PATTERNS[pattern]]), **MODES[mode])
    assert o.dtype == F64
    assert_matches(o, state, ref)
    assert state.position.tolist() == [T % C] * N


def test_step_zero_tokens():
    inputs, h0 = make_case(2, 0, 2, 4, 8, True, False)
    state = MLPMemoryDecodeState.from_state(h0, 4)
    before = [x.clone() for x in state[:5]]
    o = mlp_memory_step(*inputs, state)
    assert o.shape == (2, 0, 2, 4)
    assert all(torch.equal(a, b) for a, b in zip(before, state[:5]))


@pytest.mark.parametrize("mode", ["default", "all"])
def test_step_batch_at_different_positions(mode):
    """Sequences that sit at positions 0, 5 and C − 1 of their chunks decode together."""
    C, H, D, Dh, rest = 16, 2, 6, 10, 37
    prefixes = (0, 5, C - 1)
    states, refs, tails = [], [], []
    for p in prefixes:
        inputs, h0 = make_case(1, p + rest, H, D, Dh, True, False)
        refs.append(chunked(inputs, h0, C, **MODES[mode]))
        state = MLPMemoryDecodeState.from_state(h0, C)
        decode([x[:, :p] for x in inputs], state, split_sizes(p, (2,)), **MODES[mode])
        states.append(state)
        tails.append([x[:, p:] for x in inputs])
    fields = MLPMemoryDecodeState._fields
    state = MLPMemoryDecodeState(*(C if f == "chunk_size" else torch.cat([getattr(s, f) for s in states], 0)
                                   for f in fields))
    assert state.position.tolist() == list(prefixes)
    o = decode([torch.cat(xs, 0) for xs in zip(*tails)], state, split_sizes(rest, (1, 3, C, 2)), **MODES[mode])
    for n, p in enumerate(prefixes):
        o_ref, final = refs[n]
        one = MLPMemoryDecodeState(*(C if f == "chunk_size" else getattr(state, f)[n:n + 1] for f in fields))
        assert_matches(o[n:n + 1], one, (o_ref[:, p:], final))


def test_step_state_round_trip():
    """At a chunk boundary the decode state is an MLPMemoryState, and back (shared weights expanded)."""
    N, H, D, Dh, C = 2, 2, 6, 10, 16
    mode = MODES["all"]
    inputs, h0 = make_case(N, 3 * C, H, D, Dh, True, True)
    head, tail = [x[:, :2 * C] for x in inputs], [x[:, 2 * C:] for x in inputs]
    state = MLPMemoryDecodeState.from_state(h0, C)
    assert state.w1.shape[0] == N                                   # N from s1
    decode(head, state, split_sizes(2 * C, (3, 1)), **mode)
    assert state.at_chunk_boundary()
    boundary = state.to_state()
    _, final = chunked(head, h0, C, **mode)
    for name in FIELDS:
        torch.testing.assert_close(getattr(boundary, name), getattr(final, name), atol=TOL, rtol=TOL)
    o_ref, _ = chunked(tail, boundary, C, **mode)                   # mlp_memory continues the decode
    o = decode(tail, MLPMemoryDecodeState.from_state(boundary, C), [C], **mode)
    torch.testing.assert_close(o, o_ref, atol=TOL, rtol=TOL)
    mlp_memory_step(*(x[:, :1] for x in tail), state, **mode)
    with pytest.raises(ValueError, match="state.position: expected 0"):
        state.to_state()


def test_step_from_state():
    """Copies, never aliases; shared weights expand to batch_size; zero momenta on request."""
    h0 = mlp_state(1, 1, 4, 8, 4, momentum=True)
    before = [x.clone() for x in h0]
    state = MLPMemoryDecodeState.from_state(h0, 4)
    inputs, _ = make_case(1, 3, 1, 4, 8, True, False)
    mlp_memory_step(*inputs, state)
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
