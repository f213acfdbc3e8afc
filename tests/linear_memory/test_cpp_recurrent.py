"""`torch.ops.nested_kernels.linear_memory_recurrent` (the compiled CPU recurrence, forward only)
against the token-by-token reference (SPEC §2, §7)."""
import itertools

import pytest
import torch

from nested_kernels._extension import build_info, has_cpp_op
from nested_kernels.linear_memory import LinearMemoryState
from nested_kernels.linear_memory.reference import linear_memory_reference
from tests.helpers import F64, gates, linear_state, qkv, rms_ratio

if not has_cpp_op("linear_memory_recurrent"):
    pytest.skip(
        f"the compiled extension nested_kernels._C is not built: {build_info().get('error')}",
        allow_module_level=True,
    )

op = torch.ops.nested_kernels.linear_memory_recurrent
TOL = {torch.float64: 1e-10, torch.float32: 1e-4}


def run_op(q, k, v, lr, ret, mom, h0, *, chunk_size, dgd, scale=1.0, cu_seqlens=None):
    return op(
        q, k, v, lr, ret, mom,
        None if h0 is None else h0.memory,
        None if h0 is None else h0.momentum,
        cu_seqlens, chunk_size, scale, dgd,
    )


def run_reference(q, k, v, lr, ret, mom, h0, *, chunk_size, dgd, scale=1.0, cu_seqlens=None):
    o, state = linear_memory_reference(
        q, k, v, lr, ret, mom, dgd=dgd, chunk_size=chunk_size, scale=scale, initial_state=h0,
        output_final_state=True, cu_seqlens=cu_seqlens,
    )
    return o, state.memory, state.momentum


def assert_matches(out, ref, dtype, has_momentum):
    o, memory, momentum = out
    tol = TOL[dtype]
    assert o.dtype == dtype and memory.dtype == dtype, (o.dtype, memory.dtype)
    torch.testing.assert_close(o, ref[0], atol=tol, rtol=tol, msg=lambda m: f"o: {m}")
    torch.testing.assert_close(memory, ref[1], atol=tol, rtol=tol, msg=lambda m: f"final memory: {m}")
    if has_momentum:
        torch.testing.assert_close(momentum, ref[2], atol=tol, rtol=tol, msg=lambda m: f"final momentum: {m}")
    else:
        assert momentum.shape == (0,), f"final momentum without momentum: expected shape (0,), got {momentum.shape}"


def case_params():
    params = []
    for T, (K, V), C, has_mom, dgd, has_h0 in itertools.product(
        (1, 63, 100), ((16, 16), (20, 36)), (1, 16, 64), (False, True), (False, True), (False, True)
    ):
        B, H = 2, 2
        mark = "mom" if has_mom else "nomom"
        flag = "dgd" if dgd else "nodgd"
        h0 = "h0" if has_h0 else "noh0"
        params.append(pytest.param(B, T, H, K, V, C, has_mom, dgd, has_h0,
                                   id=f"B{B}-T{T}-H{H}-K{K}-V{V}-C{C}-{mark}-{flag}-{h0}"))
    return params


def make_case(B, T, H, K, V, N, has_mom, has_h0, dtype):
    q, k, v = qkv(B, T, H, K, V, dtype=dtype)
    lr, ret, mom = gates(B, T, H, momentum=has_mom, dtype=dtype)
    h0 = linear_state(N, H, K, V, momentum=has_mom, dtype=dtype) if has_h0 else None
    return q, k, v, lr, ret, mom, h0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("B,T,H,K,V,chunk_size,has_mom,dgd,has_h0", case_params())
def test_recurrent(B, T, H, K, V, chunk_size, has_mom, dgd, has_h0, dtype):
    q, k, v, lr, ret, mom, h0 = make_case(B, T, H, K, V, B, has_mom, has_h0, dtype)
    kw = dict(chunk_size=chunk_size, dgd=dgd, scale=K**-0.5)
    assert_matches(run_op(q, k, v, lr, ret, mom, h0, **kw), run_reference(q, k, v, lr, ret, mom, h0, **kw),
                   dtype, has_mom)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("cu_dtype", [torch.int32, torch.int64], ids=["cu32", "cu64"])
@pytest.mark.parametrize("has_mom,dgd", [(False, False), (True, True), (True, False), (False, True)],
                         ids=["nomom-nodgd", "mom-dgd", "mom-nodgd", "nomom-dgd"])
def test_recurrent_varlen(has_mom, dgd, cu_dtype, dtype):
    # sequences of 5 (shorter than a chunk), 0, 40 and 55 tokens, chunk 16
    offsets = [0, 5, 5, 45, 100]
    H, K, V, N = 2, 20, 36, len(offsets) - 1
    q, k, v, lr, ret, mom, h0 = make_case(1, offsets[-1], H, K, V, N, has_mom, True, dtype)
    cu = torch.tensor(offsets, dtype=cu_dtype)
    kw = dict(chunk_size=16, dgd=dgd, cu_seqlens=cu)
    out = run_op(q, k, v, lr, ret, mom, h0, **kw)
    assert_matches(out, run_reference(q, k, v, lr, ret, mom, h0, **kw), dtype, has_mom)
    for n in range(N):  # each sequence alone, as a dense call, gives the same
        s, e = offsets[n], offsets[n + 1]
        seq = [x[:, s:e] if x is not None else None for x in (q, k, v, lr, ret, mom)]
        h0_n = LinearMemoryState(*(None if x is None else x[n:n + 1] for x in h0))
        one = run_op(*seq, h0_n, chunk_size=16, dgd=dgd)
        torch.testing.assert_close(out[0][:, s:e], one[0], atol=0, rtol=0, msg=lambda m: f"o of sequence {n}: {m}")
        torch.testing.assert_close(out[1][n:n + 1], one[1], atol=0, rtol=0,
                                   msg=lambda m: f"final memory of sequence {n}: {m}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("has_mom,dgd", [(False, False), (True, True)], ids=["nomom-nodgd", "mom-dgd"])
def test_recurrent_low_precision(has_mom, dgd, dtype):
    B, T, H, K, V, C = 2, 100, 2, 16, 36, 16
    q, k, v, lr, ret, mom, h0 = make_case(B, T, H, K, V, B, has_mom, True, torch.float32)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    kw = dict(chunk_size=C, dgd=dgd, scale=K**-0.5)
    o, memory, momentum = run_op(q, k, v, lr, ret, mom, h0, **kw)
    assert o.dtype == dtype and memory.dtype == torch.float32, (o.dtype, memory.dtype)
    ref = run_reference(q.float(), k.float(), v.float(), lr, ret, mom, h0, **kw)  # fp32 reference
    for name, r, x in zip(("o", "final memory", "final momentum"), ref, (o, memory, momentum)):
        if r is None:
            continue
        assert not x.isnan().any(), f"{name}: NaN"
        assert rms_ratio(r, x) < 5e-3, f"{name}: rms ratio {rms_ratio(r, x):.2e} >= 5e-3"


def test_recurrent_non_contiguous():
    B, T, H, K, V = 2, 37, 3, 16, 20
    q, k, v, lr, ret, mom, h0 = make_case(B, T, H, K, V, B, True, True, F64)
    # the same values behind transposed strides
    nc = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v, lr, ret, mom)]
    h0_nc = LinearMemoryState(*(x.transpose(2, 3).contiguous().transpose(2, 3) for x in h0))
    assert not nc[0].is_contiguous() and not h0_nc.memory.is_contiguous()
    kw = dict(chunk_size=16, dgd=True)
    assert_matches(run_op(*nc, h0_nc, **kw), run_reference(q, k, v, lr, ret, mom, h0, **kw), F64, True)


def test_recurrent_gates_of_another_dtype():
    B, T, H, K, V = 1, 40, 2, 16, 16
    q, k, v, lr, ret, mom, h0 = make_case(B, T, H, K, V, B, True, True, torch.float32)
    kw = dict(chunk_size=16, dgd=True)
    ref = run_reference(q, k, v, lr, ret, mom, h0, **kw)
    out = run_op(q, k, v, lr.double(), ret.to(torch.bfloat16).float(), mom.half().float(), h0, **kw)
    out_mixed = run_op(q, k, v, lr.double(), ret.to(torch.bfloat16), mom.half(), h0, **kw)
    for name, a, b in zip(("o", "final memory", "final momentum"), out, out_mixed):
        torch.testing.assert_close(b, a, atol=0, rtol=0, msg=lambda m: f"{name}: {m}")
    torch.testing.assert_close(run_op(q, k, v, lr.double(), ret, mom, h0, **kw)[0], ref[0], atol=1e-4, rtol=1e-4)


def test_recurrent_does_not_modify_initial_state():
    q, k, v, lr, ret, mom, h0 = make_case(1, 20, 2, 8, 8, 1, True, True, F64)
    before = [x.clone() for x in h0]
    run_op(q, k, v, lr, ret, mom, h0, chunk_size=4, dgd=True)
    for name, b, a in zip(("memory", "momentum"), before, h0):
        assert torch.equal(b, a), f"initial_state.{name} was modified in place"


def test_recurrent_opcheck():
    # the fake (meta) kernel of nested_kernels.linear_memory.cpp against the CPU kernel
    q, k, v, lr, ret, mom, h0 = make_case(2, 20, 2, 8, 12, 2, True, True, torch.float32)
    for args in (
        (q, k, v, lr, ret, mom, h0.memory, h0.momentum, None, 4, 0.5, True),
        (q, k, v, lr, ret, None, None, None, None, 1, 1.0, False),
        (q[:1], k[:1], v[:1], lr[:1], ret[:1], None, None, None, torch.tensor([0, 3, 20]), 16, 1.0, True),
    ):
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def test_build_info():
    info = build_info()
    assert info["built"] is True
    assert set(info) >= {"cuda", "cuda_archs", "openmp", "torch_version"}, info
    assert info["torch_version"] == torch.__version__, (info["torch_version"], torch.__version__)


def _bad_calls():
    """(argument named in the error, keyword overrides of a valid call)."""
    B, T, H, K, V = 2, 10, 2, 4, 3
    f = torch.float32
    good = dict(
        q=torch.randn(B, T, H, K), k=torch.randn(B, T, H, K), v=torch.randn(B, T, H, V),
        lr=torch.rand(B, T, H), retention=torch.rand(B, T, H), momentum=torch.rand(B, T, H),
        initial_memory=torch.zeros(B, H, K, V), initial_momentum=torch.zeros(B, H, K, V),
        cu_seqlens=None, chunk_size=4, scale=1.0, dgd=False,
    )
    bad = [
        ("q", dict(q=torch.randn(B, T, H))),
        ("q", dict(q=torch.randint(0, 3, (B, T, H, K)), k=torch.randint(0, 3, (B, T, H, K)),
                   v=torch.randint(0, 3, (B, T, H, V)))),
        ("k", dict(k=torch.randn(B, T, H, K + 1))),
        ("k", dict(k=torch.randn(B, T, H, K, dtype=torch.float64))),
        ("v", dict(v=torch.randn(B, T + 1, H, V))),
        ("v", dict(v=torch.randn(B, T, H, V, dtype=torch.bfloat16))),
        ("lr", dict(lr=torch.rand(B, T))),
        ("retention", dict(retention=torch.ones(B, T, H, dtype=torch.int32))),
        ("momentum", dict(momentum=torch.rand(B, T, H + 1))),
        ("initial_memory", dict(initial_memory=torch.zeros(B, H, V, K))),
        ("initial_momentum", dict(initial_momentum=torch.zeros(1, H, K, V))),
        ("initial_momentum", dict(momentum=None)),
        ("chunk_size", dict(chunk_size=0)),
        ("cu_seqlens", dict(cu_seqlens=torch.tensor([0, T]))),  # B == 2
        ("cu_seqlens", dict(q=good["q"][:1], k=good["k"][:1], v=good["v"][:1], lr=good["lr"][:1],
                            retention=good["retention"][:1], momentum=None, initial_memory=None,
                            initial_momentum=None, cu_seqlens=torch.tensor([0.0, T]))),
        ("cu_seqlens", dict(q=good["q"][:1], k=good["k"][:1], v=good["v"][:1], lr=good["lr"][:1],
                            retention=good["retention"][:1], momentum=None, initial_memory=None,
                            initial_momentum=None, cu_seqlens=torch.tensor([0, T - 1]))),
        ("cu_seqlens", dict(q=good["q"][:1], k=good["k"][:1], v=good["v"][:1], lr=good["lr"][:1],
                            retention=good["retention"][:1], momentum=None, initial_memory=None,
                            initial_momentum=None, cu_seqlens=torch.tensor([0, 7, 3, T]))),
        ("cu_seqlens", dict(q=good["q"][:1], k=good["k"][:1], v=good["v"][:1], lr=good["lr"][:1],
                            retention=good["retention"][:1], momentum=None, initial_memory=None,
                            initial_momentum=None, cu_seqlens=torch.tensor([[0, T]]))),
    ]
    del f
    return [pytest.param(name, {**good, **over}, id=f"{i}-{name}") for i, (name, over) in enumerate(bad)]


@pytest.mark.parametrize("name,kwargs", _bad_calls())
def test_recurrent_bad_input(name, kwargs):
    order = ("q", "k", "v", "lr", "retention", "momentum", "initial_memory", "initial_momentum", "cu_seqlens",
             "chunk_size", "scale", "dgd")
    with pytest.raises(RuntimeError, match=rf"linear_memory_recurrent: {name} "):
        op(*(kwargs[a] for a in order))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not build_info().get("cuda"),
                    reason="needs an NVIDIA GPU and a CUDA build of the extension")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("B,T,H,K,V,chunk_size,has_mom,dgd,has_h0", case_params())
def test_recurrent_cuda(B, T, H, K, V, chunk_size, has_mom, dgd, has_h0, dtype):
    """The CUDA twin of the recurrence against the fp32 CPU reference on the same rounded inputs."""
    q, k, v, lr, ret, mom, h0 = make_case(B, T, H, K, V, B, has_mom, has_h0, torch.float32)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    kw = dict(chunk_size=chunk_size, dgd=dgd, scale=K**-0.5)
    ref = run_reference(q.float(), k.float(), v.float(), lr, ret, mom, h0, **kw)
    cuda = lambda x: None if x is None else x.cuda()
    h0_cuda = None if h0 is None else LinearMemoryState(*(cuda(x) for x in h0))
    out = run_op(*(cuda(x) for x in (q, k, v, lr, ret, mom)), h0_cuda, **kw)
    assert out[0].dtype == dtype and out[1].dtype == torch.float32
    for name, r, o in zip(("o", "memory", "momentum"), ref, out):
        if r is not None:
            assert rms_ratio(r, o.cpu()) <= (1e-5 if dtype == torch.float32 else 5e-3), name
