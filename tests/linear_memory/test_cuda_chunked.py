"""`torch.ops.nested_kernels.linear_memory_chunked_fwd`, the chunked forward shared by the CPU
kernel and the CUDA kernel (csrc/linear_memory/linear_memory_chunk.h), against the torch tier
and the token-by-token reference (SPEC §2, §7). The CPU kernel runs the same tiles and the same
algorithm as the CUDA kernel with loops for products, so these tests check the algorithm without
a GPU; the `gpu` tests check the CUDA kernel itself."""
import itertools

import pytest
import torch

from nested_kernels import linear_memory
from nested_kernels._extension import build_info, has_cpp_op
from nested_kernels.linear_memory import BACKENDS, LinearMemoryState
from nested_kernels.linear_memory.cuda import linear_memory_cuda
from nested_kernels.linear_memory.chunked import linear_memory_chunked
from nested_kernels.linear_memory.reference import linear_memory_reference
from tests.helpers import F64, gates, linear_state, qkv, rms_ratio

if not has_cpp_op("linear_memory_chunked_fwd"):
    pytest.skip(
        f"the compiled extension nested_kernels._C is not built: {build_info().get('error')}",
        allow_module_level=True,
    )

op = torch.ops.nested_kernels.linear_memory_chunked_fwd
TOL = {torch.float64: 1e-10, torch.float32: 1e-4}
NAMES = ("o", "final memory", "final momentum", "chunk memory", "chunk momentum")
CUDA_OK = torch.cuda.is_available() and bool(build_info().get("cuda"))


def run_op(q, k, v, lr, ret, mom, h0, *, chunk_size, dgd=False, scale=1.0, cu_seqlens=None):
    return op(
        q, k, v, lr, ret, mom,
        None if h0 is None else h0.memory,
        None if h0 is None else h0.momentum,
        cu_seqlens, chunk_size, scale, dgd,
    )


def run_torch(q, k, v, lr, ret, mom, h0, *, chunk_size, dgd=False, scale=1.0):
    """The torch tier's outputs and, for every chunk, its state at the start of the chunk: the
    stream run chunk by chunk, each call starting from the previous one's final state (SPEC §1:
    the end of a call is a chunk boundary)."""
    kw = dict(chunk_size=chunk_size, dgd=dgd, scale=scale, output_final_state=True)
    o, final = linear_memory_chunked(q, k, v, lr, ret, mom, initial_state=h0, **kw)
    B, T, H, K = q.shape
    V = v.shape[-1]
    state = h0 if h0 is not None else LinearMemoryState(
        q.new_zeros(B, H, K, V), None if mom is None else q.new_zeros(B, H, K, V))
    starts = []
    for t in range(0, T, chunk_size):
        starts.append(state)
        sl = slice(t, t + chunk_size)
        _, state = linear_memory_chunked(q[:, sl], k[:, sl], v[:, sl], lr[:, sl], ret[:, sl],
                                         None if mom is None else mom[:, sl], initial_state=state, **kw)
    stack = lambda xs: torch.stack(xs, 2) if xs else q.new_zeros(B, H, 0, K, V)
    chunk_memory = stack([s.memory for s in starts])
    chunk_momentum = None if mom is None else stack([s.momentum for s in starts])
    return o, final.memory, final.momentum, chunk_memory, chunk_momentum


def assert_matches(out, ref, tol, has_momentum):
    for name, a, e in zip(NAMES, out, ref):
        if e is None:
            assert not has_momentum and a.shape == (0,), f"{name} without momentum: expected shape (0,), got {a.shape}"
            continue
        torch.testing.assert_close(a, e.to(a.dtype), atol=tol, rtol=tol, msg=lambda m: f"{name}: {m}")


def make_case(B, T, H, K, V, N, has_mom, has_h0, dtype):
    q, k, v = qkv(B, T, H, K, V, dtype=dtype)
    lr, ret, mom = gates(B, T, H, momentum=has_mom, dtype=dtype)
    h0 = linear_state(N, H, K, V, momentum=has_mom, dtype=dtype) if has_h0 else None
    return q, k, v, lr, ret, mom, h0


def case_params():
    params = []
    for T, (K, V), C, has_mom, dgd, has_h0 in itertools.product(
        (1, 63, 100), ((16, 16), (20, 36), (64, 72)), (1, 16, 20, 32, 64), (False, True), (False, True), (False, True)
    ):
        B, H = 2, 2
        params.append(pytest.param(B, T, H, K, V, C, has_mom, dgd, has_h0,
                                   id=f"B{B}-T{T}-H{H}-K{K}-V{V}-C{C}-{'mom' if has_mom else 'nomom'}-"
                                      f"{'dgd' if dgd else 'nodgd'}-{'h0' if has_h0 else 'noh0'}"))
    return params


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("B,T,H,K,V,chunk_size,has_mom,dgd,has_h0", case_params())
def test_chunked_cpu(B, T, H, K, V, chunk_size, has_mom, dgd, has_h0, dtype):
    q, k, v, lr, ret, mom, h0 = make_case(B, T, H, K, V, B, has_mom, has_h0, dtype)
    kw = dict(chunk_size=chunk_size, dgd=dgd, scale=K**-0.5)
    out = run_op(q, k, v, lr, ret, mom, h0, **kw)
    assert out[0].dtype == dtype and out[1].dtype == dtype and out[3].dtype == dtype
    assert out[3].shape == (B, H, -(-T // chunk_size), K, V), out[3].shape
    assert_matches(out, run_torch(q, k, v, lr, ret, mom, h0, **kw), TOL[dtype], has_mom)


@pytest.mark.parametrize("dgd", [False, True], ids=["nodgd", "dgd"])
@pytest.mark.parametrize("K,V", [(128, 128), (256, 40)], ids=["K128-V128", "K256-V40"])
def test_chunked_cpu_wide(K, V, dgd):
    """The widest tiles: BK = 128 with BV = 32, BK = 256 with BV = 16."""
    q, k, v, lr, ret, mom, h0 = make_case(1, 70, 1, K, V, 1, True, True, F64)
    kw = dict(chunk_size=32, dgd=dgd, scale=K**-0.5)
    assert_matches(run_op(q, k, v, lr, ret, mom, h0, **kw), run_torch(q, k, v, lr, ret, mom, h0, **kw), 1e-10, True)


SMEM_BUDGET = "NESTED_KERNELS_CHUNK_SMEM_BUDGET"


def split_params():
    """64-token chunks with a first workspace level of 0 bytes, 16 KiB and 64 KiB (the middle of
    these layouts): everything, most, or part of the workspace in the second level."""
    return [pytest.param(K, has_mom, dgd, budget,
                         id=f"C64-K{K}-{'mom' if has_mom else 'nomom'}-{'dgd' if dgd else 'nodgd'}-budget{budget}")
            for K, (has_mom, dgd), budget in itertools.product(
                (64, 130), ((False, False), (True, False), (False, True), (True, True)), (0, 16384, 65536))]


@pytest.mark.parametrize("K,has_mom,dgd,budget", split_params())
def test_chunked_cpu_split_workspace(K, has_mom, dgd, budget, monkeypatch):
    """NESTED_KERNELS_CHUNK_SMEM_BUDGET splits the workspace between two levels as the CUDA kernel
    splits it between shared and global memory: the same arithmetic, so the same bits."""
    q, k, v, lr, ret, mom, h0 = make_case(1, 130, 1, K, 40, 1, has_mom, True, F64)
    kw = dict(chunk_size=64, dgd=dgd, scale=K**-0.5)
    monkeypatch.delenv(SMEM_BUDGET, raising=False)
    whole = run_op(q, k, v, lr, ret, mom, h0, **kw)
    monkeypatch.setenv(SMEM_BUDGET, str(budget))
    split = run_op(q, k, v, lr, ret, mom, h0, **kw)
    for name, a, b in zip(NAMES, whole, split):
        assert torch.equal(a, b), f"{name}: the split workspace changed the result"
    assert_matches(split, run_torch(q, k, v, lr, ret, mom, h0, **kw), 1e-10, has_mom)


def test_chunked_bad_smem_budget(monkeypatch):
    q, k, v, lr, ret, mom, h0 = make_case(1, 8, 1, 4, 4, 1, False, False, F64)
    monkeypatch.setenv(SMEM_BUDGET, "-1")
    with pytest.raises(RuntimeError, match="NESTED_KERNELS_CHUNK_SMEM_BUDGET must be a number of bytes >= 0"):
        run_op(q, k, v, lr, ret, mom, h0, chunk_size=4)


@pytest.mark.parametrize("dgd", [False, True], ids=["nodgd", "dgd"])
def test_chunked_against_reference(dgd):
    """The token-by-token oracle itself, beside the torch tier used everywhere else."""
    q, k, v, lr, ret, mom, h0 = make_case(2, 50, 2, 20, 12, 2, True, True, F64)
    o, memory, momentum, _, _ = run_op(q, k, v, lr, ret, mom, h0, chunk_size=16, dgd=dgd, scale=0.5)
    ref_o, ref = linear_memory_reference(q, k, v, lr, ret, mom, dgd=dgd, chunk_size=16, scale=0.5, initial_state=h0,
                                         output_final_state=True)
    assert_matches((o, memory, momentum), (ref_o, ref.memory, ref.momentum), 1e-10, True)


@pytest.mark.parametrize("cu_dtype", [torch.int32, torch.int64], ids=["cu32", "cu64"])
@pytest.mark.parametrize("has_mom,dgd", [(False, False), (True, True), (True, False), (False, True)],
                         ids=["nomom-nodgd", "mom-dgd", "mom-nodgd", "nomom-dgd"])
def test_chunked_varlen(has_mom, dgd, cu_dtype):
    # sequences of 5 (shorter than a chunk), 0, 40 and 55 tokens, chunk 16
    offsets, C = [0, 5, 5, 45, 100], 16
    H, K, V, N = 2, 20, 36, len(offsets) - 1
    q, k, v, lr, ret, mom, h0 = make_case(1, offsets[-1], H, K, V, N, has_mom, True, F64)
    out = run_op(q, k, v, lr, ret, mom, h0, chunk_size=C, dgd=dgd, cu_seqlens=torch.tensor(offsets, dtype=cu_dtype))
    NC = offsets[-1] // C + N
    assert out[3].shape == (1, H, NC, K, V), out[3].shape
    slot = 0
    for n in range(N):  # each sequence alone, as a dense call of the op, gives the same
        s, e = offsets[n], offsets[n + 1]
        seq = [x[:, s:e] if x is not None else None for x in (q, k, v, lr, ret, mom)]
        h0_n = LinearMemoryState(*(None if x is None else x[n:n + 1] for x in h0))
        one = run_op(*seq, h0_n, chunk_size=C, dgd=dgd)
        assert_matches(one, run_torch(*seq, h0_n, chunk_size=C, dgd=dgd), 1e-10, has_mom)
        torch.testing.assert_close(out[0][:, s:e], one[0], atol=0, rtol=0, msg=lambda m: f"o of sequence {n}: {m}")
        nc = -(-(e - s) // C)
        for i, name in ((1, "final memory"), (2, "final momentum")):
            if has_mom or i == 1:
                torch.testing.assert_close(out[i][n:n + 1], one[i], atol=0, rtol=0,
                                           msg=lambda m: f"{name} of sequence {n}: {m}")
        for i, name in ((3, "chunk memory"), (4, "chunk momentum")):
            if has_mom or i == 3:
                torch.testing.assert_close(out[i][:, :, slot:slot + nc], one[i], atol=0, rtol=0,
                                           msg=lambda m: f"{name} of sequence {n}: {m}")
        slot += nc
    assert (out[3][:, :, slot:] == 0).all(), "chunk slots past the last chunk must stay zero"


def test_chunked_stream_in_pieces():
    """SPEC §1: the final state of one call, as the next call's initial state, continues a stream
    cut at a multiple of the chunk size exactly."""
    q, k, v, lr, ret, mom, h0 = make_case(2, 96, 2, 16, 24, 2, True, True, F64)
    whole = run_op(q, k, v, lr, ret, mom, h0, chunk_size=32, dgd=True)
    a = run_op(*(x[:, :64] for x in (q, k, v, lr, ret, mom)), h0, chunk_size=32, dgd=True)
    b = run_op(*(x[:, 64:] for x in (q, k, v, lr, ret, mom)), LinearMemoryState(a[1], a[2]), chunk_size=32, dgd=True)
    torch.testing.assert_close(torch.cat([a[0], b[0]], 1), whole[0], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(b[1], whole[1], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(torch.cat([a[3], b[3]], 2), whole[3], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dgd", [False, True], ids=["nodgd", "dgd"])
@pytest.mark.parametrize("gate", ["retention0", "retention1", "lr0", "momentum1"])
def test_chunked_extreme_gates(gate, dgd):
    B, T, H, K, V, C = 2, 45, 2, 16, 20, 16
    q, k, v, lr, ret, mom, h0 = make_case(B, T, H, K, V, B, True, True, F64)
    if gate == "retention0":
        ret = torch.zeros_like(ret)
    elif gate == "retention1":
        ret = torch.ones_like(ret)
    elif gate == "lr0":
        lr = torch.zeros_like(lr)
    else:
        mom = torch.ones_like(mom)
    out = run_op(q, k, v, lr, ret, mom, h0, chunk_size=C, dgd=dgd)
    assert_matches(out, run_torch(q, k, v, lr, ret, mom, h0, chunk_size=C, dgd=dgd), 1e-10, True)
    ref_o, ref = linear_memory_reference(q, k, v, lr, ret, mom, dgd=dgd, chunk_size=C, initial_state=h0,
                                         output_final_state=True)
    assert_matches(out[:3], (ref_o, ref.memory, ref.momentum), 1e-10, True)


def test_chunked_nan_in_nan_out():
    q, k, v, lr, ret, mom, h0 = make_case(1, 40, 1, 16, 16, 1, True, False, torch.float32)
    v[0, 20, 0, 3] = float("nan")
    o, memory, momentum, chunk_memory, _ = run_op(q, k, v, lr, ret, mom, None, chunk_size=16)
    assert not o[0, :16].isnan().any(), "a NaN in token 20 reached the outputs of an earlier chunk"
    assert o[0, 20].isnan().any() and memory.isnan().any() and momentum.isnan().any()
    assert chunk_memory[0, 0, 2].isnan().any() and not chunk_memory[0, 0, :2].isnan().any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("has_mom,dgd", [(False, False), (True, True)], ids=["nomom-nodgd", "mom-dgd"])
def test_chunked_cpu_low_precision(has_mom, dgd, dtype):
    B, T, H, K, V, C = 2, 100, 2, 32, 36, 32
    q, k, v, lr, ret, mom, h0 = make_case(B, T, H, K, V, B, has_mom, True, torch.float32)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    out = run_op(q, k, v, lr, ret, mom, h0, chunk_size=C, dgd=dgd, scale=K**-0.5)
    assert out[0].dtype == dtype and out[1].dtype == torch.float32 and out[3].dtype == torch.float32
    ref = run_torch(q.float(), k.float(), v.float(), lr, ret, mom, h0, chunk_size=C, dgd=dgd, scale=K**-0.5)
    for name, r, x in zip(NAMES, ref, out):
        if r is None:
            continue
        assert not x.isnan().any(), f"{name}: NaN"
        assert rms_ratio(r, x) < 5e-3, f"{name}: rms ratio {rms_ratio(r, x):.2e} >= 5e-3"


def test_chunked_non_contiguous_and_gate_dtypes():
    B, T, H, K, V = 2, 37, 3, 16, 20
    q, k, v, lr, ret, mom, h0 = make_case(B, T, H, K, V, B, True, True, F64)
    nc = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v, lr, ret, mom)]
    h0_nc = LinearMemoryState(*(x.transpose(2, 3).contiguous().transpose(2, 3) for x in h0))
    assert not nc[0].is_contiguous() and not h0_nc.memory.is_contiguous()
    ref = run_torch(q, k, v, lr, ret, mom, h0, chunk_size=16, dgd=True)
    assert_matches(run_op(*nc, h0_nc, chunk_size=16, dgd=True), ref, 1e-10, True)
    qf, kf, vf = q.float(), k.float(), v.float()
    out = run_op(qf, kf, vf, lr, ret.to(torch.bfloat16), mom.half(), h0, chunk_size=16)  # gates of other dtypes
    same = run_op(qf, kf, vf, lr.float(), ret.to(torch.bfloat16).float(), mom.half().float(), h0, chunk_size=16)
    for name, a, b in zip(NAMES, out, same):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=lambda m: f"{name}: {m}")


def test_chunked_does_not_modify_initial_state():
    q, k, v, lr, ret, mom, h0 = make_case(1, 20, 2, 8, 8, 1, True, True, F64)
    before = [x.clone() for x in h0]
    run_op(q, k, v, lr, ret, mom, h0, chunk_size=4)
    for name, b, a in zip(("memory", "momentum"), before, h0):
        assert torch.equal(b, a), f"initial_state.{name} was modified in place"


def test_chunked_empty():
    q, k, v, lr, ret, mom, h0 = make_case(2, 0, 2, 8, 8, 2, True, True, torch.float32)
    o, memory, momentum, chunk_memory, chunk_momentum = run_op(q, k, v, lr, ret, mom, h0, chunk_size=16)
    assert o.shape == (2, 0, 2, 8) and chunk_memory.shape == (2, 2, 0, 8, 8) and chunk_momentum.shape == (2, 2, 0, 8, 8)
    torch.testing.assert_close(memory, h0.memory, atol=0, rtol=0)
    torch.testing.assert_close(momentum, h0.momentum, atol=0, rtol=0)


def test_chunked_opcheck():
    # the fake (meta) kernel of nested_kernels.linear_memory.cuda against the CPU kernel
    q, k, v, lr, ret, mom, h0 = make_case(2, 20, 2, 8, 12, 2, True, True, torch.float32)
    for args in (
        (q, k, v, lr, ret, mom, h0.memory, h0.momentum, None, 4, 0.5, True),
        (q, k, v, lr, ret, None, None, None, None, 16, 1.0, False),
        (q[:1], k[:1], v[:1], lr[:1], ret[:1], mom[:1], None, None, torch.tensor([0, 3, 20]), 16, 1.0, True),
    ):
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def _bad_calls():
    """(argument named in the error, keyword overrides of a valid call)."""
    B, T, H, K, V = 2, 10, 2, 4, 3
    good = dict(
        q=torch.randn(B, T, H, K), k=torch.randn(B, T, H, K), v=torch.randn(B, T, H, V),
        lr=torch.rand(B, T, H), retention=torch.rand(B, T, H), momentum=torch.rand(B, T, H),
        initial_memory=torch.zeros(B, H, K, V), initial_momentum=torch.zeros(B, H, K, V),
        cu_seqlens=None, chunk_size=4, scale=1.0, dgd=False,
    )
    packed = dict(q=good["q"][:1], k=good["k"][:1], v=good["v"][:1], lr=good["lr"][:1],
                  retention=good["retention"][:1], momentum=None, initial_memory=None, initial_momentum=None)
    bad = [
        ("q", dict(q=torch.randn(B, T, H))),
        ("k", dict(k=torch.randn(B, T, H, K + 1))),
        ("v", dict(v=torch.randn(B, T, H, V, dtype=torch.bfloat16))),
        ("lr", dict(lr=torch.rand(B, T))),
        ("retention", dict(retention=torch.ones(B, T, H, dtype=torch.int32))),
        ("momentum", dict(momentum=torch.rand(B, T, H + 1))),
        ("initial_memory", dict(initial_memory=torch.zeros(B, H, V, K))),
        ("initial_momentum", dict(momentum=None)),
        ("chunk_size", dict(chunk_size=0)),
        ("chunk_size", dict(chunk_size=2000)),
        ("cu_seqlens", dict(cu_seqlens=torch.tensor([0, T]))),  # B == 2
        ("cu_seqlens", dict(packed, cu_seqlens=torch.tensor([0, T - 1]))),
        ("cu_seqlens", dict(packed, cu_seqlens=torch.tensor([0, 7, 3, T]))),
    ]
    return [pytest.param(name, {**good, **over}, id=f"{i}-{name}") for i, (name, over) in enumerate(bad)]


@pytest.mark.parametrize("name,kwargs", _bad_calls())
def test_chunked_bad_input(name, kwargs):
    order = ("q", "k", "v", "lr", "retention", "momentum", "initial_memory", "initial_momentum", "cu_seqlens",
             "chunk_size", "scale", "dgd")
    with pytest.raises(RuntimeError, match=rf"linear_memory_chunked_fwd: {name} "):
        op(*(kwargs[a] for a in order))


def test_cuda_backend_says_why_it_cannot_run():
    q, k, v, lr, ret, mom, _ = make_case(1, 8, 1, 4, 4, 1, True, False, torch.float32)
    with pytest.raises(NotImplementedError, match="backend 'cuda' cannot run this call: "):
        linear_memory(q, k, v, lr, ret, mom, backend="cuda")
    o, _ = linear_memory(q, k, v, lr, ret, mom, backend="auto")  # never the untested CUDA kernel
    torch.testing.assert_close(o, linear_memory(q, k, v, lr, ret, mom, backend="torch")[0])
    for requires_grad in (False, True):                                      # auto on a card: never cuda
        call = {"device": torch.device("cuda"), "dtype": torch.bfloat16, "K": 64, "V": 64, "chunk_size": 64,
                "requires_grad": requires_grad}
        assert BACKENDS.resolve("auto", call) is not linear_memory_cuda


# ---- the CUDA kernel (SPEC §7: run against the torch tier whenever a GPU is present) ----

def gpu_params():
    params = []
    for T, (K, V), C, has_mom, dgd in itertools.product(
        (1, 63, 100), ((16, 16), (20, 36), (64, 72), (128, 128), (256, 64)), (16, 20, 32, 64), (False, True),
        (False, True),
    ):
        params.append(pytest.param(T, K, V, C, has_mom, dgd, id=f"T{T}-K{K}-V{V}-C{C}-{'mom' if has_mom else 'nomom'}-"
                                                               f"{'dgd' if dgd else 'nodgd'}"))
    return params


def _cuda(x):
    return None if x is None else x.cuda()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_OK, reason="needs an NVIDIA GPU and a CUDA build of the extension")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("T,K,V,chunk_size,has_mom,dgd", gpu_params())
def test_chunked_cuda(T, K, V, chunk_size, has_mom, dgd, dtype):
    """The CUDA kernel against the fp32 torch tier on the same rounded inputs (fla's ratio test); every
    configuration runs, those beyond shared memory partly from global memory."""
    B, H = 2, 2
    q, k, v, lr, ret, mom, h0 = make_case(B, T, H, K, V, B, has_mom, True, torch.float32)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    kw = dict(chunk_size=chunk_size, dgd=dgd, scale=K**-0.5)
    ref = run_torch(q.float(), k.float(), v.float(), lr, ret, mom, h0, **kw)
    out = run_op(*(_cuda(x) for x in (q, k, v, lr, ret, mom)), LinearMemoryState(*(_cuda(x) for x in h0)), **kw)
    assert out[0].dtype == dtype and out[1].dtype == torch.float32
    bound = 1e-5 if dtype == torch.float32 else 5e-3
    for name, r, x in zip(NAMES, ref, out):
        if r is None:
            assert x.shape == (0,), name
            continue
        x = x.cpu()
        assert not x.isnan().any(), f"{name}: NaN"
        assert rms_ratio(r, x) <= bound, f"{name}: rms ratio {rms_ratio(r, x):.2e} > {bound}"


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_OK, reason="needs an NVIDIA GPU and a CUDA build of the extension")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_chunked_cuda_matches_cpu_twin(dtype):
    """Varlen, partial chunks and the backend entry point: the CUDA kernel against the CPU kernel."""
    offsets, C = [0, 5, 5, 45, 100], 16
    H, K, V, N = 2, 20, 36, len(offsets) - 1
    q, k, v, lr, ret, mom, h0 = make_case(1, offsets[-1], H, K, V, N, True, True, torch.float32)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    cu = torch.tensor(offsets)
    cpu = run_op(q, k, v, lr, ret, mom, h0, chunk_size=C, dgd=True, cu_seqlens=cu)
    gpu = run_op(*(_cuda(x) for x in (q, k, v, lr, ret, mom)), LinearMemoryState(*(_cuda(x) for x in h0)),
                 chunk_size=C, dgd=True, cu_seqlens=cu.cuda())
    bound = 1e-5 if dtype == torch.float32 else 5e-3
    for name, a, b in zip(NAMES, cpu, gpu):
        assert rms_ratio(a, b.cpu()) <= bound, f"{name}: rms ratio {rms_ratio(a, b.cpu()):.2e} > {bound}"
    o, state = linear_memory(*(_cuda(x) for x in (q, k, v, lr, ret, mom)), chunk_size=C, dgd=True, cu_seqlens=cu.cuda(),
                             initial_state=LinearMemoryState(*(_cuda(x) for x in h0)), output_final_state=True,
                             backend="cuda")
    assert rms_ratio(cpu[0], o.cpu()) <= bound and rms_ratio(cpu[1], state.memory.cpu()) <= bound


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_OK, reason="needs an NVIDIA GPU and a CUDA build of the extension")
@pytest.mark.parametrize("budget", [0, 16384], ids=["budget0", "budget16384"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("has_mom,dgd", [(False, False), (True, True)], ids=["nomom-nodgd", "mom-dgd"])
def test_chunked_cuda_split_workspace(has_mom, dgd, dtype, budget, monkeypatch):
    """The CUDA forward with its workspace forced (mostly) into global memory: the same bits as with
    shared memory up to the device's limit."""
    q, k, v, lr, ret, mom, h0 = make_case(2, 100, 2, 64, 72, 2, has_mom, True, torch.float32)
    args = [_cuda(x) for x in (q.to(dtype), k.to(dtype), v.to(dtype), lr, ret, mom)]
    kw = dict(chunk_size=32, dgd=dgd, scale=0.125)
    monkeypatch.delenv(SMEM_BUDGET, raising=False)
    whole = run_op(*args, LinearMemoryState(*(_cuda(x) for x in h0)), **kw)
    monkeypatch.setenv(SMEM_BUDGET, str(budget))
    split = run_op(*args, LinearMemoryState(*(_cuda(x) for x in h0)), **kw)
    for name, a, b in zip(NAMES, whole, split):
        assert torch.equal(a, b), f"{name}: the split workspace changed the result"
