"""The triton backend of `mlp_memory` against the reference (SPEC §3, §7): outputs, final state and
every gradient (q, k, v, the gates, the initial w1, w2, s1, s2; the final state in the loss).
Without a GPU the kernels run in Triton's interpreter on a covering subset of small shapes; the
`gpu` tests run the full product of the modes."""
import itertools

import pytest
import torch

from nested_kernels import mlp_memory
from nested_kernels.mlp_memory import MLPMemoryState
from tests.helpers import gates, mlp_state, qkv, record_launches, rms_ratio

pytest.importorskip("triton")

NAMES = ("o", "w1", "w2", "s1", "s2")
GRAD_NAMES = ("dq", "dk", "dv", "dlr", "dretention", "dmomentum", "dw1", "dw2", "ds1", "ds2")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

pytestmark = pytest.mark.usefixtures("interpreter_memcheck")   # tests/conftest.py


def run(backend, inputs, h0, dtype, device="cpu", **kw):
    """Forward and backward of one backend; q, k, v in `dtype`, gates and states as given."""
    q, k, v, *gate_tensors = inputs
    leaves = [x.to(device, dtype).requires_grad_() for x in (q, k, v)]
    gate_leaves = [None if x is None else x.to(device).requires_grad_() for x in gate_tensors]
    state = MLPMemoryState(*(None if x is None else x.to(device).requires_grad_() for x in h0))
    o, final = mlp_memory(*leaves, *gate_leaves, initial_state=state, output_final_state=True, backend=backend, **kw)
    outputs = [o, *final]
    gen = torch.Generator().manual_seed(1)
    cotangents = [None if x is None else torch.randn(x.shape, generator=gen, dtype=torch.float64) for x in outputs]
    loss = sum((x * c.to(x)).sum() for x, c in zip(outputs, cotangents) if x is not None)
    wrt = leaves + gate_leaves + list(state)
    grads = torch.autograd.grad(loss, [x for x in wrt if x is not None])
    it = iter(grads)
    return outputs, [None if x is None else next(it) for x in wrt]


def check(B, T, H, K, Dh, V, C, use_mom, dgd, self_target, read, act, shared, residual=True, cu_seqlens=None,
          dtype=torch.float32, oracle="reference"):
    """The triton backend in `dtype` against `oracle` in fp64 on the same (rounded) inputs."""
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    q, k, v = (x.to(dtype).double() for x in qkv(B, T, H, K, V))             # the kernel's rounded inputs
    inputs = (q, k, v, *gates(B, T, H, momentum=use_mom))
    h0 = mlp_state(N, H, K, Dh, V, momentum=use_mom, shared=shared)
    kw = dict(chunk_size=C, dgd=dgd, self_target=self_target, read=read, activation=act, residual=residual)
    ref_out, ref_grads = run(oracle, inputs, h0, torch.float64, DEVICE if oracle == "torch" else "cpu",
                             cu_seqlens=cu_seqlens, **kw)
    f32 = lambda xs: [None if x is None else x.float() for x in xs]
    cu = None if cu_seqlens is None else cu_seqlens.to(DEVICE)
    out, out_grads = run("triton", (*f32(inputs[:3]), *f32(inputs[3:])), f32(h0), dtype, DEVICE, cu_seqlens=cu, **kw)
    assert out[0].dtype == dtype and all(s.dtype == torch.float32 for s in out[1:] if s is not None)
    fwd_bound, bwd_bound = (2e-6, 2e-6) if dtype == torch.float32 else (5e-3, 1e-2)
    for names, refs, outs, bound in ((NAMES, ref_out, out, fwd_bound), (GRAD_NAMES, ref_grads, out_grads, bwd_bound)):
        for name, r, o in zip(names, refs, outs):
            if r is None:
                assert o is None, name
                continue
            assert o.shape == r.shape, (name, o.shape, r.shape)
            assert not o.isnan().any(), name
            assert rms_ratio(r.cpu(), o.cpu()) <= bound, (name, rms_ratio(r.cpu(), o.cpu()))


# Each row covers several modes; together: every chunk size, both reads, dgd, momentum, the
# self-target and the residual on and off, SiLU and GELU, shared and per-sequence weights, T not a
# multiple of the chunk (and T shorter than one), Dh not a power of two.
SMALL = [
    # B, T, H, K, Dh, V, chunk, momentum, dgd, self_target, read, activation, shared weights, residual
    (2, 37, 1, 16, 32, 16, 16, True, True, True, "current", "silu", True, True),
    (1, 50, 1, 16, 16, 24, 8, False, False, False, "chunk_start", "gelu", False, False),
    (1, 21, 1, 16, 16, 16, 8, True, True, False, "current", "silu", True, True),
    (2, 40, 1, 16, 32, 16, 32, True, False, True, "current", "gelu", False, True),
    (1, 70, 1, 16, 16, 16, 64, False, True, False, "current", "silu", True, True),
    (1, 45, 1, 16, 48, 16, 32, True, True, True, "chunk_start", "silu", False, True),
    (1, 30, 1, 16, 24, 20, 16, False, True, False, "current", "gelu", False, False),
    (2, 1, 1, 16, 16, 16, 16, True, True, True, "current", "silu", True, True),
]


@pytest.mark.parametrize(
    "B,T,H,K,Dh,V,C,use_mom,dgd,self_target,read,act,shared,residual",
    [pytest.param(*c, id="B{}-T{}-H{}-K{}-Dh{}-V{}-C{}-mom{}-dgd{}-self{}-{}-{}-shared{}-res{}".format(*c))
     for c in SMALL])
def test_triton_chunk(B, T, H, K, Dh, V, C, use_mom, dgd, self_target, read, act, shared, residual):
    check(B, T, H, K, Dh, V, C, use_mom, dgd, self_target, read, act, shared, residual)


@pytest.mark.parametrize("read", ["current", "chunk_start"])
def test_triton_chunk_varlen(read):
    """Packed sequences: one shorter than a chunk, one empty, one spanning chunks with a partial tail;
    shared initial weights (their gradient summed over the sequences)."""
    check(1, 40, 2, 16, 32, 16, 16, True, True, True, read, "silu", True, cu_seqlens=torch.tensor([0, 5, 5, 40]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_triton_chunk_half(dtype):
    """16-bit inputs: fla's ratio test against the fp64 reference on the same rounded inputs."""
    check(1, 24, 1, 16, 32, 16, 16, True, True, True, "current", "silu", True, dtype=dtype)


def small_tiles(monkeypatch):
    """Key, hidden and value tiles of 16 (the output kernel's value tile too): the tile loops of
    the shipped K = 128, Dh = 512 configurations on shapes the interpreter runs fast."""
    from nested_kernels.triton_kernels.mlp_memory import chunk_fwd, configs

    real = configs.launch_config

    def tiles(kernel, K, V, DH, BT, **kw):
        cfg = real(kernel, K, V, DH, BT, **kw)
        return cfg._replace(BK=16, BD=16, BV=cfg.BV if kernel == "fwd_h" else 16)

    monkeypatch.setattr(configs, "launch_config", tiles)
    assert chunk_fwd is not None


@pytest.mark.parametrize("read", ["current", "chunk_start"])
def test_triton_chunk_tiles(monkeypatch, read):
    """K, Dh and V wider than their tiles, the last tile of each partial (K = V = 40, Dh = 72)."""
    small_tiles(monkeypatch)
    check(1, 20, 1, 40, 72, 40, 16, True, True, True, read, "gelu", False)


@pytest.mark.parametrize("read", ["current", "chunk_start"])
def test_triton_read_launch_config(monkeypatch, read):
    """The read kernel launches with its read's entry (`configs.launch_config(read_current=)`): below
    64-token chunks `read="chunk_start"` takes hidden tiles of 16, where 32 spilled on sm_90."""
    from nested_kernels.triton_kernels.mlp_memory.configs import launch_config

    calls = record_launches(monkeypatch)
    f32 = lambda xs: [x.float() for x in xs]
    with torch.no_grad():
        mlp_memory(*f32(qkv(1, 8, 1, 16, 16)), *f32(gates(1, 8, 1)),
                   initial_state=MLPMemoryState(*f32(mlp_state(1, 1, 16, 64, 16, momentum=True))),
                   chunk_size=8, read=read, backend="triton")
    (kw,) = [kw for name, _, kw in calls if name == "mlp_memory_fwd_kernel_o"]
    expected = launch_config("fwd_o", 16, 16, 64, 8, read_current=read == "current")
    assert (kw["BK"], kw["BD"], kw["BV"], kw["num_warps"], kw["num_stages"]) == expected
    assert kw["BD"] == (32 if read == "current" else 16)


def test_triton_split_stream():
    """Splitting a stream at a chunk boundary and passing the final state on reproduces one call."""
    B, T, H, K, Dh, C = 1, 40, 1, 16, 32, 16
    q, k, v = (x.float().to(DEVICE) for x in qkv(B, T, H, K, K))
    lr, ret, mom = (x.float().to(DEVICE) for x in gates(B, T, H))
    h0 = MLPMemoryState(*(x.float().to(DEVICE) for x in mlp_state(B, H, K, Dh, K)))
    kw = dict(chunk_size=C, dgd=True, self_target=True, output_final_state=True, backend="triton")
    o, final = mlp_memory(q, k, v, lr, ret, mom, initial_state=h0, **kw)
    cut = slice(0, 2 * C), slice(2 * C, T)
    o1, mid = mlp_memory(*(x[:, cut[0]] for x in (q, k, v, lr, ret, mom)), initial_state=h0, **kw)
    o2, end = mlp_memory(*(x[:, cut[1]] for x in (q, k, v, lr, ret, mom)), initial_state=mid, **kw)
    torch.testing.assert_close(torch.cat([o1, o2], 1), o, atol=1e-6, rtol=1e-6)
    for a, b in zip(end, final):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_triton_no_tokens():
    """T = 0: no chunks; the final state is the initial one, and so are their gradients."""
    q, k, v = (x.float().to(DEVICE) for x in qkv(2, 0, 1, 16, 16))
    lr, ret, mom = (x.float().to(DEVICE) for x in gates(2, 0, 1))
    h0 = MLPMemoryState(*(x.float().to(DEVICE).requires_grad_() for x in mlp_state(2, 1, 16, 32, 16, shared=True)))
    o, final = mlp_memory(q, k, v, lr, ret, mom, initial_state=h0, dgd=True, output_final_state=True, backend="triton")
    assert o.shape == (2, 0, 1, 16)
    torch.testing.assert_close(final.w1, h0.w1.detach().expand(2, -1, -1, -1), atol=0, rtol=0)
    cotangents = [torch.randn_like(x) for x in final]
    grads = torch.autograd.grad(sum((x * c).sum() for x, c in zip(final, cotangents)), list(h0))
    torch.testing.assert_close(grads[0], cotangents[0].sum(0, keepdim=True), atol=0, rtol=0)
    torch.testing.assert_close(grads[3], cotangents[3], atol=0, rtol=0)


def _inputs(K=16, V=16, Dh=16, T=8, dtype=torch.float32):
    q, k, v = (x.to(dtype) for x in qkv(1, T, 1, K, V, dtype=torch.float32))
    return q, k, v, MLPMemoryState(*(None if x is None else x.float() for x in mlp_state(1, 1, K, Dh, V, momentum=False)))


@pytest.mark.parametrize("kw, inputs, message", [
    (dict(chunk_size=12), {}, r"chunk_size must be one of \(8, 16, 32, 64\), got 12"),
    ({}, dict(K=256, V=256), r"K and V up to 128, Dh up to 512, got K=256, V=256, Dh=16"),
    ({}, dict(Dh=640), r"Dh up to 512, got K=16, V=16, Dh=640"),
    ({}, dict(dtype=torch.float64), r"it takes fp32/bf16/fp16 inputs, got torch.float64"),
], ids=["chunk12", "K256", "Dh640", "fp64"])
def test_triton_unsupported(kw, inputs, message):
    q, k, v, h0 = _inputs(**inputs)
    with pytest.raises(NotImplementedError, match=message):
        mlp_memory(q, k, v, 0.1, 1.0, initial_state=h0, backend="triton", **kw)


@pytest.mark.parametrize("use_mom,dgd,read", [(True, True, "current"), (False, False, "chunk_start")],
                         ids=["mom-dgd-current", "plain-chunk_start"])
def test_triton_opcheck(use_mom, dgd, read):
    """The custom op's schema, fake kernel and autograd registration (torch.library.opcheck)."""
    from nested_kernels.mlp_memory.triton import triton_op_args

    B, T, H, K, Dh = 1, 20, 1, 16, 16
    q, k, v = (x.to(DEVICE) for x in qkv(B, T, H, K, K, dtype=torch.float32))
    lr, ret, mom = (None if x is None else x.to(DEVICE) for x in gates(B, T, H, momentum=use_mom, dtype=torch.float32))
    h0 = MLPMemoryState(*(None if x is None else x.to(DEVICE)
                          for x in mlp_state(B, H, K, Dh, K, momentum=use_mom, dtype=torch.float32)))
    _, args = triton_op_args(q, k, v, lr, ret, mom, initial_state=h0, activation="silu", residual=True, dgd=dgd,
                             self_target=True, read=read, chunk_size=16, cu_seqlens=None)
    args = tuple(x.detach().requires_grad_() if isinstance(x, torch.Tensor) and x.is_floating_point() else x
                 for x in args)
    torch.library.opcheck(torch.ops.nested_kernels.mlp_memory_triton_fwd.default, args)


GPU_MATRIX = list(itertools.product(
    (63, 1000), ((32, 1), (64, 2), (128, 4), (128, 1)), (8, 16, 32, 64), ("current", "chunk_start"),
    ((False, False, False), (True, True, True), (True, False, True), (False, True, False))))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("act", ["silu", "gelu"])
@pytest.mark.parametrize("T,KD,C,read,modes", [
    pytest.param(*c, id="T{}-K{}xDh{}-C{}-{}-mom{}-dgd{}-self{}".format(c[0], c[1][0], c[1][0] * c[1][1], c[2], c[3],
                                                                         *c[4])) for c in GPU_MATRIX])
def test_triton_chunk_gpu(T, KD, C, read, modes, act, dtype):
    """The full product on a GPU, against the torch tier in fp64 on the GPU (the reference's token
    loop is too slow at these sizes; the torch tier equals it to 1e-10, tests/mlp_memory/test_mlp_memory.py)."""
    K, mult = KD
    use_mom, dgd, self_target = modes
    check(2, T, 2, K, K * mult, K, C, use_mom, dgd, self_target, read, act, shared=True, dtype=dtype, oracle="torch")


def test_triton_compile_fullgraph():
    """torch.compile(fullgraph=True) traces the op (opaque, through its fake kernel), forward and backward."""
    B, T, H, K, Dh = 1, 24, 1, 16, 16
    q, k, v = (x.float().to(DEVICE) for x in qkv(B, T, H, K, K))
    lr, ret, mom = (x.float().to(DEVICE) for x in gates(B, T, H))
    h0 = MLPMemoryState(*(x.float().to(DEVICE).requires_grad_() for x in mlp_state(B, H, K, Dh, K, shared=True)))

    def fn(q, k, v, lr, ret, mom, *state):
        o, final = mlp_memory(q, k, v, lr, ret, mom, initial_state=MLPMemoryState(*state), dgd=True, chunk_size=16,
                              output_final_state=True, backend="triton")
        return o, final.w1

    compiler = "inductor" if DEVICE == "cuda" else "aot_eager"
    expected, actual = fn(q, k, v, lr, ret, mom, *h0), torch.compile(fn, fullgraph=True, backend=compiler)(
        q, k, v, lr, ret, mom, *h0)
    for e, a in zip(expected, actual):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)
    grads = [torch.autograd.grad(sum(x.sum() for x in out), list(h0)) for out in (expected, actual)]
    for e, a in zip(*grads):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)
