"""Property tests (hypothesis) of the conventions every op shares (SPEC §1): chunk-aligned
chaining equals one call, and packed sequences equal separate calls, for random shapes."""
import torch
from hypothesis import given, settings, strategies as st

from nested_kernels import linear_memory, mlp_memory
from nested_kernels.linear_memory import LinearMemoryState
from nested_kernels.mlp_memory import MLPMemoryState
from tests.helpers import F64, gates, mlp_state, qkv

SETTINGS = settings(max_examples=20, deadline=None)


def _slices(lengths):
    bounds = torch.tensor([0] + lengths).cumsum(0).tolist()
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])], torch.tensor(bounds)


@SETTINGS
@given(chunk=st.integers(1, 9), chunks_first=st.integers(0, 4), rest=st.integers(0, 20),
       dgd=st.booleans(), seed=st.integers(0, 2**16))
def test_linear_memory_chaining_property(chunk, chunks_first, rest, dgd, seed):
    torch.manual_seed(seed)
    split, T = chunk * chunks_first, chunk * chunks_first + rest
    x = (*qkv(1, T, 2, 4, 3), *gates(1, T, 2))
    h0 = LinearMemoryState(torch.randn(1, 2, 4, 3, dtype=F64), torch.randn(1, 2, 4, 3, dtype=F64))
    kw = dict(dgd=dgd, chunk_size=chunk, initial_state=h0, output_final_state=True, backend="torch")
    o, state = linear_memory(*x, **kw)
    kw.pop("initial_state")
    o1, s1 = linear_memory(*(t[:, :split] for t in x), initial_state=h0, **kw)
    o2, s2 = linear_memory(*(t[:, split:] for t in x), initial_state=s1, **kw)
    torch.testing.assert_close(torch.cat([o1, o2], 1), o, atol=1e-10, rtol=1e-10)
    for a, b in zip(s2, state):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@SETTINGS
@given(lengths=st.lists(st.integers(0, 12), min_size=1, max_size=4), chunk=st.integers(1, 6),
       self_target=st.booleans(), seed=st.integers(0, 2**16))
def test_mlp_memory_varlen_property(lengths, chunk, self_target, seed):
    torch.manual_seed(seed)
    T, N = sum(lengths), len(lengths)
    x = (*qkv(1, T, 1, 3, 3), *gates(1, T, 1))
    h0 = mlp_state(N, 1, 3, 5, 3)
    slices, cu = _slices(lengths)
    kw = dict(dgd=True, self_target=self_target, chunk_size=chunk, output_final_state=True, backend="torch")
    o, state = mlp_memory(*x, initial_state=h0, cu_seqlens=cu, **kw)
    for n, sl in enumerate(slices):
        h0_n = MLPMemoryState(*(t[n:n + 1] for t in h0))
        o_n, s_n = mlp_memory(*(t[:, sl] for t in x), initial_state=h0_n, **kw)
        torch.testing.assert_close(o[:, sl], o_n, atol=1e-10, rtol=1e-10)
        for a, b in zip(s_n, state):
            torch.testing.assert_close(a, b[n:n + 1], atol=1e-10, rtol=1e-10)
