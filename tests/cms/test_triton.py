"""The triton backend of `cms_level` against the reference (SPEC §4, §7): outputs, final state
and every gradient (the final state in the loss). Without a GPU the kernels run in Triton's
interpreter on small shapes; the `gpu` tests run the full matrix at bigger ones."""
import itertools

import pytest
import torch

from nested_kernels.cms import cms_level
from tests.helpers import rms_ratio

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = ("y", "final w1", "final w2")
INPUTS = ("x", "w1", "w2", "lr", "retention", "signal")

pytestmark = [
    pytest.mark.usefixtures("interpreter_memcheck"),                   # tests/conftest.py
    # the interpreter's exp of a large negative z overflows to inf on the way to sigmoid(z) = 0
    pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning"),
]


def make_inputs(B, T, D, Dh, *, shared, mode, retention, lr_tensor, seed=42):
    """fp64 leaves: x, w1, w2, lr ([B, T] tensor or a float), retention (0-d tensor), the signal."""
    g = torch.Generator().manual_seed(seed)
    lead = () if shared else (B,)
    f64 = dict(generator=g, dtype=torch.float64)
    return {
        "x": torch.randn(B, T, D, **f64),
        "w1": torch.randn(*lead, D, Dh, **f64) / D ** 0.5,
        "w2": torch.randn(*lead, Dh, D, **f64) * 0.3,
        "lr": torch.rand(B, T, **f64) * 0.05 if lr_tensor else 0.03,
        "retention": torch.tensor(float(retention), dtype=torch.float64),
        "signal": torch.randn(B, T, D, **f64) * (0.5 if mode == "grad_y" else 1.0),
    }


def run(backend, inputs, *, mode, dtype, **kw):
    """Forward and backward of one backend: x, w1, w2 and the signal in `dtype`, the gates in fp32
    (fp64 for the reference); returns (y, final w1, final w2) and the gradient of every input."""
    gate_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    leaves = {}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.to(DEVICE, gate_dtype if name in ("lr", "retention") else dtype).requires_grad_()
        leaves[name] = value
    y, state = cms_level(leaves["x"], leaves["w1"], leaves["w2"], lr=leaves["lr"], retention=leaves["retention"],
                         **{mode: leaves["signal"]}, output_final_state=True, backend=backend, **kw)
    outputs = [y, state.w1, state.w2]
    gen = torch.Generator().manual_seed(1)
    cotangents = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in outputs]
    loss = sum((o * c.to(o)).sum() for o, c in zip(outputs, cotangents))
    wrt = [(n, leaves[n]) for n in INPUTS if isinstance(leaves[n], torch.Tensor)]
    grads = dict(zip([n for n, _ in wrt], torch.autograd.grad(loss, [t for _, t in wrt])))
    return outputs, grads


def check(B, T, D, Dh, P, activation, mode, shared, retention, lr_tensor, dtype=torch.float32):
    """Triton in `dtype` against the reference in fp64 on the same (rounded) values. fp32: each
    tensor's rms error ratio at most 4× the torch tier's own fp32 error, or 1e-5 (the bound of the
    linear_memory tests). The kernels add their products tile after tile (16 to 64 wide) where
    torch's matmuls block them: their gradients measured 2–3× the torch tier's error (1e-5 at
    B1 T130 D96 Dh160), and d(retention) is one sum of ⟨G, W⟩ over every chunk. 16-bit: SPEC §7's
    ratio bounds (5e-3 outputs, 1e-2 gradients)."""
    inputs = make_inputs(B, T, D, Dh, shared=shared, mode=mode, retention=retention, lr_tensor=lr_tensor)
    inputs = {n: v.to(dtype).double() if n in ("x", "w1", "w2", "signal") else v for n, v in inputs.items()}
    kw = dict(period=P, activation=activation, mode=mode)
    ref_out, ref_grads = run("reference", inputs, dtype=torch.float64, **kw)
    out, grads = run("triton", inputs, dtype=dtype, **kw)
    assert out[0].dtype == dtype and out[1].dtype == out[2].dtype == torch.float32
    assert out[1].shape == (B, D, Dh) and out[2].shape == (B, Dh, D)
    if dtype == torch.float32:
        torch_out, torch_grads = run("torch", inputs, dtype=torch.float32, **kw)
        bound = lambda ref, tier: max(1e-5, 4 * rms_ratio(ref, tier.cpu()))
    pairs = [(n, ref_out[i], out[i], torch_out[i] if dtype == torch.float32 else None, 5e-3)
             for i, n in enumerate(NAMES)]
    pairs += [(f"d{n}", ref_grads[n], grads[n], torch_grads[n] if dtype == torch.float32 else None, 1e-2)
              for n in ref_grads]
    assert set(grads) == set(ref_grads)
    for name, ref, got, tier, half_bound in pairs:
        assert got.shape == ref.shape, name
        assert not got.isnan().any(), name
        limit = bound(ref, tier) if dtype == torch.float32 else half_bound
        assert rms_ratio(ref, got.cpu()) <= limit, (name, rms_ratio(ref, got.cpu()), limit)


SMALL = [
    # B, T, D, Dh, period, activation, mode, shared, retention, lr tensor
    (2, 37, 20, 36, 16, "silu", "target", True, 0.9, True),       # odd T: chunks of 16, 16, 5
    (2, 37, 20, 36, 16, "gelu", "grad_y", False, 1.0, False),
    (2, 37, 16, 24, 16, "gelu", "target", False, 0.0, True),      # retention 0: only the step survives
    (2, 21, 24, 16, 64, "silu", "grad_y", True, 0.5, True),       # period > T: a plain MLP, one step
    (1, 20, 16, 40, 7, "gelu", "target", True, 1.0, False),       # period below 16, partial last chunk
    (2, 1, 16, 16, 16, "silu", "target", False, 0.9, True),       # T = 1
]


@pytest.mark.parametrize("B,T,D,Dh,P,activation,mode,shared,retention,lr_tensor", [
    pytest.param(*c, id="B{}-T{}-D{}-Dh{}-P{}-{}-{}-shared{}-ret{}-lrtensor{}".format(*c)) for c in SMALL])
def test_triton_chunk(B, T, D, Dh, P, activation, mode, shared, retention, lr_tensor):
    check(B, T, D, Dh, P, activation, mode, shared, retention, lr_tensor)


def test_triton_chunk_shipped_tiles():
    """The shipped fp32 tiles over several D, Dh and row tiles: D = 96 (64 + 32), Dh = 160
    (5 × 32), chunks of 64 rows (bwd_dw steps by 16) and a partial last one."""
    check(1, 130, 96, 160, 64, "gelu", "target", True, 0.95, True)


def small_tiles(monkeypatch, BT, BD, BH):
    """The launch table with tiles of BT rows, BD columns of D and BH of Dh, so that the shapes
    the interpreter runs fast take the multi-tile paths of D = 4096, Dh = 16384 and long periods."""
    from nested_kernels.triton_kernels.cms import configs

    for name in ("TABLE", "TABLE_FP32"):
        table = {kernel: (BT, BD, BH, *entry[3:]) for kernel, entry in getattr(configs, name).items()}
        monkeypatch.setattr(configs, name, table)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "perseq"])
def test_triton_chunk_tiles(monkeypatch, shared):
    """D and Dh over several tiles with partial last ones (40 = 16+16+8, 36 = 16+16+4), and a
    period of 20 over two row tiles of 16 (the reductions over a chunk's rows are tiled too)."""
    small_tiles(monkeypatch, 16, 16, 16)
    check(2, 45, 40, 36, 20, "gelu", "target", shared, 0.9, True)


@pytest.mark.parametrize("shared,mode", [(True, "target"), (False, "grad_y")], ids=["shared-target", "perseq-grad_y"])
def test_triton_chunk_checkpoints(monkeypatch, shared, mode):
    """A state budget of 0 MiB: the forward keeps W^4, W^8 and W^10 of 10 chunks (k = ⌈√10⌉ = 4)
    and the backward recomputes the others segment by segment, with the same gradients."""
    from nested_kernels.cms.triton import checkpoint_interval

    monkeypatch.setenv("NESTED_KERNELS_CMS_STATES_MIB", "0")
    assert checkpoint_interval(2, 37, 16, 24, 4) == 4
    check(2, 37, 16, 24, 4, "gelu", mode, shared, 0.9, True)


@pytest.mark.parametrize("dtype,mode", [(torch.bfloat16, "target"), (torch.bfloat16, "grad_y"),
                                        (torch.float16, "target")], ids=["bf16-target", "bf16-grad_y", "fp16-target"])
def test_triton_chunk_half(dtype, mode):
    """16-bit x, w1, w2 and signal against the fp32-exact reference on the same values (SPEC §7 ratios)."""
    check(2, 40, 32, 48, 16, "silu", mode, True, 0.9, True, dtype=dtype)


@pytest.mark.parametrize("output_final_state", [True, False], ids=["final", "nofinal"])
def test_triton_inference(output_final_state):
    """Without autograd the forward keeps two state buffers in turn (5 chunks) and no intermediates:
    the same y and final state as the torch tier."""
    inputs = make_inputs(2, 37, 16, 24, shared=False, mode="target", retention=0.9, lr_tensor=True)
    f32 = {n: v.to(DEVICE, torch.float32) for n, v in inputs.items()}
    kw = dict(period=8, lr=f32["lr"], retention=0.9, target=f32["signal"], activation="gelu",
              output_final_state=output_final_state)
    y, state = cms_level(f32["x"], f32["w1"], f32["w2"], backend="triton", **kw)
    y_ref, state_ref = cms_level(f32["x"], f32["w1"], f32["w2"], backend="torch", **kw)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    if output_final_state:
        torch.testing.assert_close(state.w1, state_ref.w1, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(state.w2, state_ref.w2, atol=1e-5, rtol=1e-5)
    else:
        assert state is None


def test_triton_chaining():
    """Two calls split at a multiple of `period`, the final state passed on, equal one call (SPEC §1)."""
    inputs = make_inputs(2, 40, 16, 24, shared=True, mode="target", retention=0.9, lr_tensor=True)
    x, w1, w2, lr, tgt = (inputs[n].to(DEVICE, torch.float32) for n in ("x", "w1", "w2", "lr", "signal"))
    kw = dict(period=16, retention=0.9, activation="silu", output_final_state=True, backend="triton")
    y, s = cms_level(x, w1, w2, lr=lr, target=tgt, **kw)
    y1, s1 = cms_level(x[:, :32], w1, w2, lr=lr[:, :32], target=tgt[:, :32], **kw)
    y2, s2 = cms_level(x[:, 32:], s1.w1, s1.w2, lr=lr[:, 32:], target=tgt[:, 32:], **kw)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s2.w1, s.w1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s2.w2, s.w2, atol=1e-5, rtol=1e-5)


def test_triton_rejects_fp64():
    x = torch.randn(1, 4, 16, dtype=torch.float64, device=DEVICE)
    w1, w2 = torch.randn(16, 16, dtype=torch.float64, device=DEVICE), torch.randn(16, 16, dtype=torch.float64,
                                                                                   device=DEVICE)
    with pytest.raises(NotImplementedError, match=r"backend 'triton' cannot run this call: it takes fp32/bf16/fp16"):
        cms_level(x, w1, w2, period=4, lr=0.1, target=x, backend="triton")
    with pytest.raises(NotImplementedError, match="torch.float64"):      # an fp64 weight is enough
        cms_level(x.float(), w1, w2.float(), period=4, lr=0.1, target=x.float(), backend="triton")


def test_triton_rejects_huge_chunks():
    """32-bit offsets inside a chunk: rows × max(D, Dh) < 2^31 (decided before any allocation)."""
    from nested_kernels.cms import BACKENDS

    call = {"device": torch.device(DEVICE), "requires_grad": False, "dtype": torch.float32, "period": 2**20,
            "T": 2**18, "D": 4096, "Dh": 16384}
    with pytest.raises(NotImplementedError, match=r"rows × max\(D, Dh\) must stay below 2\^31"):
        BACKENDS.resolve("triton", call)
    assert BACKENDS.resolve("triton", {**call, "period": 4096}) is not None


@pytest.mark.parametrize("change,error,match", [
    (dict(w2=torch.zeros(16, 8)), ValueError, r"^w2: expected"),
    (dict(period=0), ValueError, r"^period: expected"),
    (dict(lr=-0.1), ValueError, r"^lr: expected"),
    (dict(target=None), ValueError, r"^target/grad_y: expected exactly one"),
], ids=["w2-shape", "period-0", "lr-negative", "no-signal"])
def test_triton_bad_inputs(change, error, match):
    """The public checks run before the triton backend is reached."""
    call = dict(x=torch.randn(1, 4, 16), w1=torch.randn(16, 8), w2=torch.randn(8, 16), period=4, lr=0.1,
                target=torch.randn(1, 4, 16), backend="triton")
    call.update(change)
    with pytest.raises(error, match=match):
        cms_level(call.pop("x"), call.pop("w1"), call.pop("w2"), **call)


@pytest.mark.parametrize("mode", ["target", "grad_y"])
def test_triton_opcheck(mode):
    """The custom op's schema, fake kernel and autograd registration (torch.library.opcheck)."""
    from nested_kernels.cms.triton import triton_op_args

    inputs = make_inputs(2, 20, 16, 16, shared=True, mode=mode, retention=0.9, lr_tensor=True)
    t = {n: v.to(DEVICE, torch.float32).requires_grad_() for n, v in inputs.items()}
    args = triton_op_args(t["x"], t["w1"], t["w2"], period=8, lr=t["lr"], retention=t["retention"],
                          target=t["signal"] if mode == "target" else None,
                          grad_y=t["signal"] if mode == "grad_y" else None, activation="gelu",
                          output_final_state=True)
    args = tuple(x.detach().requires_grad_() if isinstance(x, torch.Tensor) else x for x in args)
    torch.library.opcheck(torch.ops.nested_kernels.cms_level_triton_fwd.default, args)


def test_triton_compile_fullgraph():
    """torch.compile(fullgraph=True) traces the op (opaque, through its fake kernel)."""
    inputs = make_inputs(2, 20, 16, 16, shared=False, mode="target", retention=0.9, lr_tensor=True)
    x, w1, w2, lr, tgt = (inputs[n].to(DEVICE, torch.float32) for n in ("x", "w1", "w2", "lr", "signal"))

    def fn(x, w1, w2, lr, tgt):
        y, state = cms_level(x, w1, w2, period=8, lr=lr, retention=0.9, target=tgt, output_final_state=True,
                             backend="triton")
        return y, state.w1, state.w2

    compiler = "inductor" if DEVICE == "cuda" else "aot_eager"
    torch._dynamo.reset()
    expected, actual = fn(x, w1, w2, lr, tgt), torch.compile(fn, fullgraph=True, backend=compiler)(x, w1, w2, lr, tgt)
    for e, a in zip(expected, actual):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


# shared and per-sequence weights alternate over the product (the full product with them takes long)
GPU_MATRIX = [(*c, i % 2 == 0) for i, c in enumerate(itertools.product(
    (1, 63, 1000), ((64, 256), (100, 60), (256, 1024)), (16, 64, 4096), ("silu", "gelu"), ("target", "grad_y")))]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("T,DDh,P,activation,mode,shared", [
    pytest.param(*c, id="T{}-DDh{}-P{}-{}-{}-shared{}".format(*c)) for c in GPU_MATRIX])
def test_triton_chunk_gpu(T, DDh, P, activation, mode, shared, dtype):
    check(2, T, *DDh, P, activation, mode, shared, 0.9, True, dtype=dtype)
