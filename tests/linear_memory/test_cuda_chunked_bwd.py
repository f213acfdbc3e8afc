"""`torch.ops.nested_kernels.linear_memory_chunked_bwd`, the chunked backward shared by the CPU
kernel and the CUDA kernel (csrc/linear_memory/linear_memory_chunk_bwd.h), through the forward op's
autograd (nested_kernels/linear_memory/cuda.py), against autograd through the torch tier. The CPU
kernel runs the CUDA kernel's tiles and algorithm with loops for products, so these tests check the
algorithm without a GPU; the `gpu` tests check the CUDA kernel itself."""
import itertools

import pytest
import torch

from nested_kernels import linear_memory
from nested_kernels._extension import build_info, has_cpp_op
from nested_kernels.linear_memory import LinearMemoryState
from nested_kernels.linear_memory.chunked import linear_memory_chunked
from nested_kernels.linear_memory.cuda import linear_memory_cuda, unsupported_reason  # also registers the autograd
from tests.helpers import F64, gates, leaves, linear_state, qkv, rms_ratio

if not has_cpp_op("linear_memory_chunked_bwd"):
    pytest.skip(
        f"the compiled extension nested_kernels._C has no chunked backward: {build_info().get('error')}",
        allow_module_level=True,
    )

fwd = torch.ops.nested_kernels.linear_memory_chunked_fwd
bwd = torch.ops.nested_kernels.linear_memory_chunked_bwd
TOL = {torch.float64: 1e-10, torch.float32: 2e-4}
CUDA_OK = torch.cuda.is_available() and bool(build_info().get("cuda"))


def make_inputs(B, T, H, K, V, N, has_mom, has_h0, dtype, zero_retention=False):
    """Leaves (q, k, v, lr, retention, momentum, initial memory, initial momentum); None where absent."""
    q, k, v = qkv(B, T, H, K, V, dtype=dtype)
    lr, ret, mom = gates(B, T, H, momentum=has_mom, dtype=dtype)
    if zero_retention:
        ret[:, ::3] = 0.0
    h0 = linear_state(N, H, K, V, momentum=has_mom, dtype=dtype) if has_h0 else LinearMemoryState(None, None)
    return leaves(q, k, v, lr, ret, mom, h0.memory, h0.momentum)


def cotangents(o, memory, momentum, seed=7):
    gen = torch.Generator().manual_seed(seed)
    return [None if x is None else torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
            for x in (o, memory, momentum)]


def loss(outs, cots, on):
    """⟨o, do⟩ and/or ⟨final states, their cotangents⟩ (`on`: "o", "state" or "both")."""
    total = 0
    for i, (x, c) in enumerate(zip(outs, cots)):
        if c is not None and (on == "both" or (on == "o") == (i == 0)):
            total = total + (x * c).sum()
    return total


def grads_of(total, xs):
    present = [x for x in xs if x is not None]
    got = iter(torch.autograd.grad(total, present, allow_unused=True))
    return [None if x is None else next(got) for x in xs]


NAMES = ("dq", "dk", "dv", "dlr", "dretention", "dmomentum", "d_initial_memory", "d_initial_momentum")


def check_grads(xs, *, chunk_size, dgd, scale, cu_seqlens=None, on="both", tol):
    q, k, v, lr, ret, mom, m0, s0 = xs
    o, memory, momentum, _, _ = fwd(q, k, v, lr, ret, mom, m0, s0, cu_seqlens, chunk_size, scale, dgd)
    cots = cotangents(o, memory, None if mom is None else momentum)
    got = grads_of(loss((o, memory, momentum), cots, on), xs)
    if cu_seqlens is None:
        h0 = None if m0 is None else LinearMemoryState(m0, s0)
        ref_o, ref = linear_memory_chunked(q, k, v, lr, ret, mom, chunk_size=chunk_size, dgd=dgd, scale=scale,
                                           initial_state=h0, output_final_state=True)
        ref_outs = (ref_o, ref.memory, ref.momentum)
    else:  # the torch tier one sequence at a time
        offsets = cu_seqlens.tolist()
        pieces, mems, moms = [], [], []
        for n in range(len(offsets) - 1):
            sl = slice(offsets[n], offsets[n + 1])
            h0 = None if m0 is None else LinearMemoryState(m0[n:n + 1], None if s0 is None else s0[n:n + 1])
            o_n, st = linear_memory_chunked(*(None if x is None else x[:, sl] for x in (q, k, v, lr, ret, mom)),
                                            chunk_size=chunk_size, dgd=dgd, scale=scale, initial_state=h0,
                                            output_final_state=True)
            pieces.append(o_n)
            mems.append(st.memory)
            moms.append(st.momentum)
        ref_outs = (torch.cat(pieces, 1), torch.cat(mems, 0), None if mom is None else torch.cat(moms, 0))
    expected = grads_of(loss(ref_outs, cots, on), xs)
    for name, e, a in zip(NAMES, expected, got):
        if e is None and a is None:
            continue
        assert a is not None, f"{name}: no gradient"
        if e is None:  # unused by the reference's loss (e.g. q with a loss on the final state alone)
            e = torch.zeros_like(a)
        torch.testing.assert_close(a, e, atol=tol, rtol=tol, msg=lambda m: f"{name}: {m}")


def case_params():
    params = []
    for (T, K, V, has_h0), C, (has_mom, dgd) in itertools.product(
        ((37, 5, 33, True), (64, 16, 20, False)), (5, 16, 32, 64), itertools.product((False, True), (False, True))
    ):
        B, H = 2, 2
        params.append(pytest.param(B, T, H, K, V, C, has_mom, dgd, has_h0,
                                   id=f"B{B}-T{T}-H{H}-K{K}-V{V}-C{C}-{'mom' if has_mom else 'nomom'}-"
                                      f"{'dgd' if dgd else 'nodgd'}-{'h0' if has_h0 else 'noh0'}"))
    return params


MOM_DGD = pytest.mark.parametrize("has_mom,dgd", list(itertools.product((False, True), (False, True))),
                                  ids=["nomom-nodgd", "nomom-dgd", "mom-nodgd", "mom-dgd"])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("B,T,H,K,V,chunk_size,has_mom,dgd,has_h0", case_params())
def test_chunked_bwd_cpu(B, T, H, K, V, chunk_size, has_mom, dgd, has_h0, dtype):
    xs = make_inputs(B, T, H, K, V, B, has_mom, has_h0, dtype)
    check_grads(xs, chunk_size=chunk_size, dgd=dgd, scale=K**-0.5, tol=TOL[dtype])


@pytest.mark.parametrize("on", ["o", "state"])
@MOM_DGD
def test_chunked_bwd_one_cotangent(has_mom, dgd, on):
    """A loss on o alone (the final states' adjoints absent) or on the final states alone."""
    xs = make_inputs(2, 45, 2, 12, 20, 2, has_mom, True, F64)
    check_grads(xs, chunk_size=16, dgd=dgd, scale=0.5, on=on, tol=1e-10)


@MOM_DGD
@pytest.mark.parametrize("K,V", [(130, 20), (64, 40)], ids=["K130-V20", "K64-V40"])
def test_chunked_bwd_wide(K, V, has_mom, dgd):
    """BK = 144 > 128, so BV = 16 (several value tiles summed by the host); BK = 64 with BV = 32."""
    xs = make_inputs(1, 40, 1, K, V, 1, has_mom, True, F64)
    check_grads(xs, chunk_size=16, dgd=dgd, scale=K**-0.5, tol=1e-10)


SMEM_BUDGET = "NESTED_KERNELS_CHUNK_SMEM_BUDGET"


def all_grads(xs, *, chunk_size, dgd, scale):
    q, k, v, lr, ret, mom, m0, s0 = xs
    o, memory, momentum, _, _ = fwd(q, k, v, lr, ret, mom, m0, s0, None, chunk_size, scale, dgd)
    cots = cotangents(o, memory, None if mom is None else momentum)
    return grads_of(loss((o, memory, momentum), cots, "both"), xs)


@pytest.mark.parametrize("budget", [0, 16384, 98304], ids=["budget0", "budget16384", "budget98304"])
@MOM_DGD
@pytest.mark.parametrize("K", [64, 130], ids=["K64", "K130"])
def test_chunked_bwd_split_workspace(K, has_mom, dgd, budget, monkeypatch):
    """64-token chunks with the workspace split between two levels (NESTED_KERNELS_CHUNK_SMEM_BUDGET,
    as the CUDA kernel splits it between shared and global memory; 96 KiB is the middle of these
    layouts): the same bits as unsplit, and the torch tier's gradients."""
    xs = make_inputs(1, 130, 1, K, 20, 1, has_mom, True, F64)
    kw = dict(chunk_size=64, dgd=dgd, scale=K**-0.5)
    monkeypatch.delenv(SMEM_BUDGET, raising=False)
    whole = all_grads(xs, **kw)
    monkeypatch.setenv(SMEM_BUDGET, str(budget))
    split = all_grads(xs, **kw)
    for name, a, b in zip(NAMES, whole, split):
        assert (a is None) == (b is None), name
        assert a is None or torch.equal(a, b), f"{name}: the split workspace changed the gradient"
    check_grads(xs, tol=1e-10, **kw)


@MOM_DGD
def test_chunked_bwd_varlen(has_mom, dgd):
    # sequences of 5 (shorter than a chunk), 0, 40 and 55 tokens, chunk 16
    offsets = [0, 5, 5, 45, 100]
    xs = make_inputs(1, offsets[-1], 2, 12, 20, len(offsets) - 1, has_mom, True, F64)
    check_grads(xs, chunk_size=16, dgd=dgd, scale=0.5, cu_seqlens=torch.tensor(offsets), tol=1e-10)


@MOM_DGD
def test_chunked_bwd_zero_retention(has_mom, dgd):
    """Retention exactly 0 on every third token: the gate gradients stay exact (no division by α)."""
    xs = make_inputs(2, 40, 2, 8, 12, 2, has_mom, True, F64, zero_retention=True)
    check_grads(xs, chunk_size=16, dgd=dgd, scale=1.0, tol=1e-10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("has_mom,dgd", [(False, False), (True, True)], ids=["nomom-nodgd", "mom-dgd"])
def test_chunked_bwd_cpu_low_precision(has_mom, dgd, dtype):
    """bf16/fp16 operands (fp32 states and accumulators) against the fp32 torch tier (fla's ratio)."""
    B, T, H, K, V, C = 2, 50, 2, 32, 36, 16
    xs = make_inputs(B, T, H, K, V, B, has_mom, True, torch.float32)
    low = leaves(*(x.to(dtype) for x in xs[:3])) + xs[3:]
    q, k, v, lr, ret, mom, m0, s0 = low
    o, memory, momentum, _, _ = fwd(q, k, v, lr, ret, mom, m0, s0, None, C, K**-0.5, dgd)
    cots = cotangents(o.float(), memory, momentum if has_mom else None)
    cots[0] = cots[0].to(dtype)
    got = grads_of(loss((o, memory, momentum), cots, "both"), low)
    ref_in = leaves(*(x.detach().float() for x in low[:3])) + xs[3:]
    ref_o, ref = linear_memory_chunked(*ref_in[:6], chunk_size=C, dgd=dgd, scale=K**-0.5,
                                       initial_state=LinearMemoryState(m0, s0), output_final_state=True)
    cots[0] = cots[0].float()
    expected = grads_of(loss((ref_o, ref.memory, ref.momentum), cots, "both"), ref_in)
    for name, e, a in zip(NAMES, expected, got):
        if e is None:
            continue
        assert a.dtype == (dtype if name in ("dq", "dk", "dv") else e.dtype), f"{name}: dtype {a.dtype}"
        assert not a.isnan().any(), f"{name}: NaN"
        assert rms_ratio(e, a) < 1e-2, f"{name}: rms ratio {rms_ratio(e, a):.2e} >= 1e-2"


@pytest.mark.parametrize("scalar_retention", [False, True], ids=["retention-tensor", "retention-float"])
def test_cuda_wrapper_gradients_reach_the_inputs(scalar_retention):
    """The cuda backend's wrapper (gates made fp32 [B, T, H], the initial state passed through) on
    CPU tensors, where its op runs the CPU kernels: every gradient reaches the caller's tensors."""
    q, k, v, lr, ret, mom, m0, s0 = make_inputs(2, 40, 2, 8, 12, 2, True, True, torch.float32)
    ret_arg = 0.9 if scalar_retention else ret
    kw = dict(chunk_size=16, dgd=True, scale=0.5, initial_state=LinearMemoryState(m0, s0), output_final_state=True)
    o, st = linear_memory_cuda(q, k, v, lr, ret_arg, mom, **kw)
    ref_o, ref = linear_memory_chunked(q, k, v, lr, ret_arg, mom, **kw)
    cots = cotangents(o, st.memory, st.momentum)
    xs = [q, k, v, lr, None if scalar_retention else ret, mom, m0, s0]
    got = grads_of(loss((o, st.memory, st.momentum), cots, "both"), xs)
    expected = grads_of(loss((ref_o, ref.memory, ref.momentum), cots, "both"), xs)
    for name, e, a in zip(NAMES, expected, got):
        if e is None:
            continue
        assert a is not None and a.dtype == e.dtype, f"{name}: {None if a is None else a.dtype}"
        torch.testing.assert_close(a, e, atol=2e-4, rtol=2e-4, msg=lambda m: f"{name}: {m}")


def test_chunked_bwd_empty():
    xs = make_inputs(2, 0, 2, 8, 8, 2, True, True, torch.float32)
    q, k, v, lr, ret, mom, m0, s0 = xs
    o, memory, momentum, _, _ = fwd(q, k, v, lr, ret, mom, m0, s0, None, 16, 1.0, False)
    dm0, ds0 = torch.autograd.grad((memory * 2).sum() + (momentum * 3).sum(), [m0, s0])
    torch.testing.assert_close(dm0, torch.full_like(m0, 2.0), atol=0, rtol=0)
    torch.testing.assert_close(ds0, torch.full_like(s0, 3.0), atol=0, rtol=0)


def _bwd_args(has_mom=True, dgd=True, cu_seqlens=None, B=2, T=20):
    H, K, V, C = 2, 8, 12, 16
    q, k, v, lr, ret, mom, m0, s0 = (None if x is None else x.detach()
                                     for x in make_inputs(B, T, H, K, V, B if cu_seqlens is None else 2,
                                                          has_mom, True, torch.float32))
    if cu_seqlens is not None:
        m0 = s0 = None
    _, memory, momentum, chunk_memory, chunk_momentum = fwd(q, k, v, lr, ret, mom, m0, s0, cu_seqlens, C, 0.5, dgd)
    return dict(d_o=torch.randn_like(v), d_final_memory=torch.randn_like(memory),
                d_final_momentum=torch.randn_like(momentum) if has_mom else None, q=q, k=k, v=v, lr=lr,
                retention=ret, momentum=mom, chunk_memory=chunk_memory,
                chunk_momentum=chunk_momentum if has_mom else None, cu_seqlens=cu_seqlens, chunk_size=C, scale=0.5,
                dgd=dgd)


ORDER = ("d_o", "d_final_memory", "d_final_momentum", "q", "k", "v", "lr", "retention", "momentum", "chunk_memory",
         "chunk_momentum", "cu_seqlens", "chunk_size", "scale", "dgd")


def test_chunked_bwd_opcheck():
    # the fake (meta) kernel of nested_kernels.linear_memory.cuda against the CPU kernel
    for kw in (_bwd_args(), _bwd_args(has_mom=False, dgd=False),
               _bwd_args(cu_seqlens=torch.tensor([0, 3, 20]), B=1)):
        torch.library.opcheck(bwd, tuple(kw[a] for a in ORDER), test_utils=("test_schema", "test_faketensor"))


def test_chunked_fwd_autograd_opcheck():
    xs = [x.detach().requires_grad_() for x in make_inputs(2, 20, 2, 8, 12, 2, True, True, torch.float32)]
    torch.library.opcheck(fwd, (*xs, None, 16, 0.5, True),
                          test_utils=("test_schema", "test_autograd_registration", "test_aot_dispatch_dynamic"))


def _bad_calls():
    good = _bwd_args()
    bad = [
        ("do", dict(d_o=good["d_o"][..., :-1])),
        ("d_final_memory", dict(d_final_memory=good["d_final_memory"][:1])),
        ("chunk_memory", dict(chunk_memory=good["chunk_memory"].double())),
        ("chunk_memory", dict(chunk_memory=good["chunk_memory"][:, :, :1])),
        ("chunk_momentum", dict(chunk_momentum=None)),
        ("d_final_momentum", dict(momentum=None, chunk_momentum=None)),
    ]
    return [pytest.param(name, {**good, **over}, id=f"{i}-{name}") for i, (name, over) in enumerate(bad)]


@pytest.mark.parametrize("name,kwargs", _bad_calls())
def test_chunked_bwd_bad_input(name, kwargs):
    with pytest.raises(RuntimeError, match=rf"linear_memory_chunked_bwd: {name} "):
        bwd(*(kwargs[a] for a in ORDER))


def test_cuda_backend_takes_gradients():
    """requires_grad does not rule the cuda backend out, up to 64-token chunks (the workspace
    continues in global memory where shared memory ends)."""
    call = dict(device=torch.device("cuda"), requires_grad=True, dtype=torch.bfloat16, chunk_size=64, K=128)
    reason = unsupported_reason(call)
    assert reason is None or "gradient" not in reason and "chunk_size" not in reason, reason


# ---- the CUDA kernel (SPEC §7: run against the torch tier whenever a GPU is present) ----

def _cuda_grads(xs, dtype, *, chunk_size, dgd, scale):
    """Gradients of the public function on the GPU (backend='cuda', inputs rounded to dtype) and of
    the fp32 torch tier on the same rounded inputs, with the same cotangents."""
    q, k, v, lr, ret, mom, m0, s0 = xs
    qkv_low = [x.detach().to(dtype) for x in (q, k, v)]
    gpu_in = leaves(*(x.cuda() for x in qkv_low)) + leaves(*(None if x is None else x.detach().cuda()
                                                             for x in (lr, ret, mom, m0, s0)))
    ref_in = leaves(*(x.float() for x in qkv_low)) + leaves(*(None if x is None else x.detach()
                                                             for x in (lr, ret, mom, m0, s0)))
    kw = dict(chunk_size=chunk_size, dgd=dgd, scale=scale, output_final_state=True)
    o, st = linear_memory(*gpu_in[:6], initial_state=LinearMemoryState(*gpu_in[6:]), backend="cuda", **kw)
    ref_o, ref = linear_memory_chunked(*ref_in[:6], initial_state=LinearMemoryState(*ref_in[6:]), **kw)
    cots = cotangents(ref_o, ref.memory, ref.momentum)
    cots[0] = cots[0].to(dtype).float()  # the cotangent of o as the GPU side gets it, in o's dtype
    expected = grads_of(loss((ref_o, ref.memory, ref.momentum), cots, "both"), ref_in)
    gpu_cots = [None if c is None else c.cuda().to(x.dtype) for c, x in zip(cots, (o, st.memory, st.momentum))]
    got = grads_of(loss((o, st.memory, st.momentum), gpu_cots, "both"), gpu_in)
    return expected, got


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_OK, reason="needs an NVIDIA GPU and a CUDA build of the extension")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("T,K,V,chunk_size", [(63, 16, 16, 16), (100, 64, 72, 32), (100, 128, 64, 32),
                                             (70, 256, 40, 16), (130, 64, 40, 64), (130, 130, 20, 64)],
                         ids=["T63-K16-V16-C16", "T100-K64-V72-C32", "T100-K128-V64-C32", "T70-K256-V40-C16",
                              "T130-K64-V40-C64", "T130-K130-V20-C64"])
@MOM_DGD
def test_chunked_bwd_cuda(T, K, V, chunk_size, has_mom, dgd, dtype):
    """Every configuration runs: where the workspace exceeds shared memory (chunk 64) its rest is
    in global memory."""
    xs = make_inputs(2, T, 2, K, V, 2, has_mom, True, torch.float32)
    expected, got = _cuda_grads(xs, dtype, chunk_size=chunk_size, dgd=dgd, scale=K**-0.5)
    bound = 1e-5 if dtype == torch.float32 else 1e-2  # CPU twin: ~2e-7 (fp32), ~3e-3 (bf16)
    for name, e, a in zip(NAMES, expected, got):
        if e is None:
            continue
        a = a.cpu()
        assert not a.isnan().any(), f"{name}: NaN"
        assert rms_ratio(e, a) <= bound, f"{name}: rms ratio {rms_ratio(e, a):.2e} > {bound}"


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_OK, reason="needs an NVIDIA GPU and a CUDA build of the extension")
@pytest.mark.parametrize("budget", [0, 16384], ids=["budget0", "budget16384"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@MOM_DGD
def test_chunked_bwd_cuda_split_workspace(has_mom, dgd, dtype, budget, monkeypatch):
    """The CUDA backward with its workspace forced (mostly) into global memory: the same bits as
    with shared memory up to the device's limit (the same threads, the same arithmetic)."""
    xs = make_inputs(1, 130, 2, 64, 40, 1, has_mom, True, torch.float32)
    gpu = leaves(*(None if x is None else (x.detach().to(dtype) if i < 3 else x.detach()).cuda()
                   for i, x in enumerate(xs)))
    kw = dict(chunk_size=32, dgd=dgd, scale=0.125)
    monkeypatch.delenv(SMEM_BUDGET, raising=False)
    whole = all_grads(gpu, **kw)
    monkeypatch.setenv(SMEM_BUDGET, str(budget))
    split = all_grads(gpu, **kw)
    for name, a, b in zip(NAMES, whole, split):
        assert (a is None) == (b is None), name
        assert a is None or torch.equal(a, b), f"{name}: the split workspace changed the gradient"
