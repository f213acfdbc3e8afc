"""`cms_level` (SPEC §4): the torch tier against the token-by-token reference, stream
chaining, gradcheck, bf16 ratios, NaN propagation, argument validation and torch.compile."""
import functools
import itertools

import pytest
import torch
import torch.nn.functional as F

from nested_kernels.cms import CMSState, cms_level, cms_level_chunked, cms_level_reference

D, DH = 8, 12
TOL = dict(atol=1e-10, rtol=1e-10)


def rms_ratio(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.double(), out.double()
    return ((ref - out).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()


def make_inputs(B, T, *, shared, mode, retention, dtype=torch.float64, seed=42):
    """Leaf tensors of one call: x, w1, w2, lr [B, T], retention (0-d), and target or grad_y."""
    g = torch.Generator().manual_seed(seed)
    lead = () if shared else (B,)
    inputs = {
        "x": torch.randn(B, T, D, generator=g, dtype=torch.float64),
        "w1": torch.randn(*lead, D, DH, generator=g, dtype=torch.float64) / D ** 0.5,
        "w2": torch.randn(*lead, DH, D, generator=g, dtype=torch.float64) * 0.3,
        "lr": torch.rand(B, T, generator=g, dtype=torch.float64) * 0.05,
        "retention": torch.tensor(float(retention), dtype=torch.float64),
        mode: torch.randn(B, T, D, generator=g, dtype=torch.float64) * (0.5 if mode == "grad_y" else 1.0),
    }
    return {k: v.to(dtype).requires_grad_() for k, v in inputs.items()}


def run_with_grads(fn, inputs, *, period, activation, cotangents):
    """y, the final state and the gradient of every input for the loss
    (y*dy).sum() + (w1f*dw1).sum() + (w2f*dw2).sum()."""
    for t in inputs.values():
        t.grad = None
    args = {k: v for k, v in inputs.items() if k not in ("x", "w1", "w2")}
    y, state = fn(inputs["x"], inputs["w1"], inputs["w2"], period=period, activation=activation,
                  output_final_state=True, **args)
    dy, dw1, dw2 = cotangents
    loss = (y * dy).sum() + (state.w1 * dw1).sum() + (state.w2 * dw2).sum()
    loss.backward()
    return y, state, {k: v.grad for k, v in inputs.items()}


def cotangents_for(B, T, dtype=torch.float64):
    g = torch.Generator().manual_seed(7)
    return tuple(torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)
                 for s in ((B, T, D), (B, D, DH), (B, DH, D)))


# Every T × period × activation × mode × weight sharing of SPEC §4's test plan (T = 63 is not
# a multiple of any period); retention cycles through 0.9, 1.0, 0.0, so each (T, period) pair
# meets all three (the full product with retention takes over a minute on 2 CPU cores).
_RETENTIONS = (0.9, 1.0, 0.0)
CASES = [
    pytest.param(
        2, T, P, act, mode, shared, _RETENTIONS[i % 3],
        id=f"B2-T{T}-D{D}-Dh{DH}-P{P}-{act}-{mode}-{'shared' if shared else 'perseq'}-ret{_RETENTIONS[i % 3]}",
    )
    for i, (T, P, act, mode, shared) in enumerate(itertools.product(
        (1, 17, 63, 64), (1, 5, 16, 100), ("silu", "gelu"), ("target", "grad_y"), (True, False),
    ))
]


@pytest.mark.parametrize("B,T,P,activation,mode,shared,retention", CASES)
def test_chunked(B, T, P, activation, mode, shared, retention):
    torch.manual_seed(42)
    inputs = make_inputs(B, T, shared=shared, mode=mode, retention=retention)
    cot = cotangents_for(B, T)
    y_ref, s_ref, g_ref = run_with_grads(cms_level_reference, inputs, period=P, activation=activation, cotangents=cot)
    y, s, g = run_with_grads(cms_level_chunked, inputs, period=P, activation=activation, cotangents=cot)
    torch.testing.assert_close(y, y_ref, **TOL, msg=lambda m: f"y: {m}")
    torch.testing.assert_close(s.w1, s_ref.w1, **TOL, msg=lambda m: f"final w1: {m}")
    torch.testing.assert_close(s.w2, s_ref.w2, **TOL, msg=lambda m: f"final w2: {m}")
    for name in inputs:
        assert g_ref[name] is not None, name
        torch.testing.assert_close(g[name], g_ref[name], **TOL, msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.parametrize("activation", ["silu", "gelu"])
@pytest.mark.parametrize("mode", ["target", "grad_y"])
def test_reference_step_is_autograd_inner_gradient(activation, mode):
    """The reference's closed-form step equals autograd's gradient of the local objective
    Σ_t lr_t ℓ_t (ℓ_t = ½‖y_t − target_t‖², or ⟨grad_y_t, y_t⟩ with grad_y constant)."""
    B, T = 2, 7
    inputs = {k: v.detach() for k, v in make_inputs(B, T, shared=False, mode=mode, retention=0.7).items()}
    x, lr, signal = inputs["x"], inputs["lr"], inputs[mode]
    w1, w2 = inputs["w1"].clone().requires_grad_(), inputs["w2"].clone().requires_grad_()
    _, s = cms_level_reference(x, w1, w2, period=T, lr=lr, retention=0.7, activation=activation,
                               output_final_state=True, **{mode: signal})
    phi = F.silu if activation == "silu" else functools.partial(F.gelu, approximate="tanh")   # torch's own φ
    y = x + phi(x @ w1) @ w2
    per_token = 0.5 * (y - signal).pow(2).sum(-1) if mode == "target" else (signal * y).sum(-1)
    g1, g2 = torch.autograd.grad((lr * per_token).sum(), (w1, w2))
    torch.testing.assert_close(s.w1, 0.7 * w1 - g1, **TOL)
    torch.testing.assert_close(s.w2, 0.7 * w2 - g2, **TOL)


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("mode", ["target", "grad_y"])
def test_float_gates(backend, mode):
    """Python-float lr and retention equal the same values as tensors."""
    torch.manual_seed(42)
    inputs = make_inputs(2, 11, shared=True, mode=mode, retention=0.9)
    signal = {mode: inputs[mode]}
    y_f, s_f = cms_level(inputs["x"], inputs["w1"], inputs["w2"], period=4, lr=0.05, retention=0.9,
                         output_final_state=True, backend=backend, **signal)
    lr = torch.full((2, 11), 0.05, dtype=torch.float64)
    y_t, s_t = cms_level(inputs["x"], inputs["w1"], inputs["w2"], period=4, lr=lr, retention=torch.tensor(0.9,
                         dtype=torch.float64), output_final_state=True, backend=backend, **signal)
    torch.testing.assert_close(y_f, y_t, **TOL)
    torch.testing.assert_close(s_f.w1, s_t.w1, **TOL)
    torch.testing.assert_close(s_f.w2, s_t.w2, **TOL)


def test_no_step_inside_long_period():
    """period ≥ T: y is the plain MLP of the initial weights (no update inside the call)."""
    inputs = make_inputs(2, 9, shared=True, mode="target", retention=0.5)
    x, w1, w2 = inputs["x"], inputs["w1"], inputs["w2"]
    y, _ = cms_level(x, w1, w2, period=100, lr=1.0, target=inputs["target"], backend="torch")
    torch.testing.assert_close(y, x + F.silu(x @ w1) @ w2, **TOL)


def test_lr_zero_keeps_scaled_weights():
    """lr = 0: every chunk only decays the weights, once per chunk (4 chunks of T = 10, P = 3)."""
    inputs = make_inputs(2, 10, shared=False, mode="grad_y", retention=0.5)
    _, s = cms_level(inputs["x"], inputs["w1"], inputs["w2"], period=3, lr=0.0, retention=0.5,
                     grad_y=inputs["grad_y"], output_final_state=True, backend="torch")
    torch.testing.assert_close(s.w1, inputs["w1"] * 0.5 ** 4, **TOL)
    torch.testing.assert_close(s.w2, inputs["w2"] * 0.5 ** 4, **TOL)


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "perseq"])
@pytest.mark.parametrize("T,P,split", [(17, 5, 10), (64, 16, 32), (12, 1, 7), (20, 4, 20)],
                         ids=lambda v: str(v))
def test_chunked_chaining(backend, shared, T, P, split):
    """Two calls split at a multiple of `period`, with final_state passed on, equal one call."""
    inputs = make_inputs(2, T, shared=shared, mode="target", retention=0.9)
    x, w1, w2, lr, ret, tgt = (inputs[k].detach() for k in ("x", "w1", "w2", "lr", "retention", "target"))
    kw = dict(period=P, retention=ret, activation="gelu", output_final_state=True, backend=backend)
    y, s = cms_level(x, w1, w2, lr=lr, target=tgt, **kw)
    y1, s1 = cms_level(x[:, :split], w1, w2, lr=lr[:, :split], target=tgt[:, :split], **kw)
    parts = [y1]
    if split < T:
        y2, s1 = cms_level(x[:, split:], s1.w1, s1.w2, lr=lr[:, split:], target=tgt[:, split:], **kw)
        parts.append(y2)
    torch.testing.assert_close(torch.cat(parts, 1), y, **TOL)
    torch.testing.assert_close(s1.w1, s.w1, **TOL)
    torch.testing.assert_close(s1.w2, s.w2, **TOL)


@pytest.mark.parametrize("mode", ["target", "grad_y"])
def test_chunked_gradcheck(mode):
    torch.manual_seed(42)
    g = torch.Generator().manual_seed(42)
    B, T, d, dh = 2, 5, 3, 4
    leaves = [
        torch.randn(B, T, d, generator=g, dtype=torch.float64),
        torch.randn(d, dh, generator=g, dtype=torch.float64) / d ** 0.5,
        torch.randn(dh, d, generator=g, dtype=torch.float64) * 0.5,
        torch.rand(B, T, generator=g, dtype=torch.float64) * 0.5,
        torch.tensor(0.8, dtype=torch.float64),
        torch.randn(B, T, d, generator=g, dtype=torch.float64),
    ]
    leaves = [t.requires_grad_() for t in leaves]

    def fn(x, w1, w2, lr, retention, signal):
        y, s = cms_level_chunked(x, w1, w2, period=2, lr=lr, retention=retention, activation="silu",
                                 output_final_state=True, **{mode: signal})
        return y, s.w1, s.w2

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", ["target", "grad_y"])
@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_chunked_bf16(activation, mode):
    """bf16 inputs against the fp32 reference on the same (bf16-representable) values."""
    B, T, P = 2, 64, 16
    inputs = make_inputs(B, T, shared=True, mode=mode, retention=0.9)
    low = {k: (v.detach().to(torch.bfloat16) if k not in ("lr", "retention") else v.detach().float()).requires_grad_()
           for k, v in inputs.items()}
    ref = {k: v.detach().float().requires_grad_() for k, v in low.items()}
    dy, dw1, dw2 = cotangents_for(B, T, torch.float32)
    dy = dy.to(torch.bfloat16)                                 # the cotangent of a bf16 output is bf16
    y_ref, s_ref, g_ref = run_with_grads(cms_level_reference, ref, period=P, activation=activation,
                                         cotangents=(dy.float(), dw1, dw2))
    y, s, g = run_with_grads(cms_level_chunked, low, period=P, activation=activation, cotangents=(dy, dw1, dw2))
    assert y.dtype == torch.bfloat16 and s.w1.dtype == torch.float32
    assert rms_ratio(y_ref, y) <= 5e-3, "y"
    assert rms_ratio(s_ref.w1, s.w1) <= 5e-3, "final w1"
    assert rms_ratio(s_ref.w2, s.w2) <= 5e-3, "final w2"
    for name in low:
        assert not g[name].isnan().any(), f"d{name} has NaN"
        assert rms_ratio(g_ref[name], g[name]) <= 1e-2, f"d{name}"


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_nan_propagates(backend):
    """A NaN input poisons its own token and, through the step, the later chunks of its own
    sequence only: no silent masking, no leak across the batch."""
    inputs = make_inputs(2, 12, shared=True, mode="target", retention=1.0)
    x = inputs["x"].detach().clone()
    x[0, 5, 0] = float("nan")
    y, s = cms_level(x, inputs["w1"].detach(), inputs["w2"].detach(), period=4, lr=0.1,
                     target=inputs["target"].detach(), output_final_state=True, backend=backend)
    assert y[0, 5].isnan().all()
    assert not y[0, :4].isnan().any()                          # chunk 0 ran before the NaN
    assert y[0, 8:].isnan().all()                              # chunk 2 reads the poisoned step
    assert not y[1].isnan().any() and not s.w1[1].isnan().any()
    assert s.w1[0].isnan().any() and s.w2[0].isnan().any()


def _valid_call():
    B, T = 2, 6
    return dict(
        x=torch.randn(B, T, D), w1=torch.randn(D, DH), w2=torch.randn(DH, D), period=4, lr=0.1,
        retention=1.0, target=torch.randn(B, T, D), grad_y=None, activation="silu",
        output_final_state=False, backend="torch",
    )


INVALID = [
    pytest.param({"x": [[1.0]]}, TypeError, "x", id="x-not-tensor"),
    pytest.param({"x": torch.zeros(2, 6, D, dtype=torch.int64)}, TypeError, "x", id="x-int"),
    pytest.param({"x": torch.zeros(2, 6)}, ValueError, "x", id="x-2d"),
    pytest.param({"w1": torch.zeros(D, DH, dtype=torch.int32)}, TypeError, "w1", id="w1-int"),
    pytest.param({"w1": torch.zeros(D + 1, DH)}, ValueError, "w1", id="w1-wrong-D"),
    pytest.param({"w1": torch.zeros(DH)}, ValueError, "w1", id="w1-1d"),
    pytest.param({"w1": torch.zeros(3, D, DH)}, ValueError, "w1", id="w1-wrong-B"),
    pytest.param({"w2": torch.zeros(DH, D + 1)}, ValueError, "w2", id="w2-wrong-D"),
    pytest.param({"w2": torch.zeros(DH + 1, D)}, ValueError, "w2", id="w2-wrong-Dh"),
    pytest.param({"w2": torch.zeros(2, DH, D)}, ValueError, "w2", id="w2-perseq-w1-shared"),
    pytest.param({"w1": torch.zeros(2, D, DH)}, ValueError, "w2", id="w1-perseq-w2-shared"),
    pytest.param({"w2": "w2"}, TypeError, "w2", id="w2-not-tensor"),
    pytest.param({"w2": torch.zeros(DH, D, device="meta")}, ValueError, "w2", id="w2-device"),
    pytest.param({"period": 0}, ValueError, "period", id="period-0"),
    pytest.param({"period": 2.0}, TypeError, "period", id="period-float"),
    pytest.param({"period": True}, TypeError, "period", id="period-bool"),
    pytest.param({"lr": -0.1}, ValueError, "lr", id="lr-negative"),
    pytest.param({"lr": "0.1"}, TypeError, "lr", id="lr-str"),
    pytest.param({"lr": torch.zeros(2, 5)}, ValueError, "lr", id="lr-wrong-T"),
    pytest.param({"lr": torch.zeros(2, 6, 1)}, ValueError, "lr", id="lr-3d"),
    pytest.param({"lr": torch.zeros(2, 6, dtype=torch.int64)}, TypeError, "lr", id="lr-int"),
    pytest.param({"lr": torch.zeros(2, 6, device="meta")}, ValueError, "lr", id="lr-device"),
    pytest.param({"retention": 1.5}, ValueError, "retention", id="retention-above-1"),
    pytest.param({"retention": float("nan")}, ValueError, "retention", id="retention-nan"),
    pytest.param({"retention": None}, TypeError, "retention", id="retention-none"),
    pytest.param({"retention": torch.ones(1)}, ValueError, "retention", id="retention-1d"),
    pytest.param({"target": None}, ValueError, "target/grad_y", id="neither-signal"),
    pytest.param({"grad_y": torch.zeros(2, 6, D)}, ValueError, "target/grad_y", id="both-signals"),
    pytest.param({"target": torch.zeros(2, 6, D + 1)}, ValueError, "target", id="target-shape"),
    pytest.param({"target": torch.zeros(2, 6, D, dtype=torch.bool)}, TypeError, "target", id="target-bool"),
    pytest.param({"target": None, "grad_y": torch.zeros(2, 7, D)}, ValueError, "grad_y", id="grad_y-shape"),
    pytest.param({"activation": "relu"}, ValueError, "activation", id="activation"),
    pytest.param({"output_final_state": 1}, TypeError, "output_final_state", id="output_final_state"),
    pytest.param({"backend": "jax"}, ValueError, "backend", id="backend-unknown"),
]


@pytest.mark.parametrize("change,error,name", INVALID)
def test_validation(change, error, name):
    call = {**_valid_call(), **change}
    with pytest.raises(error, match=f"^{name}: expected"):
        cms_level(call.pop("x"), call.pop("w1"), call.pop("w2"), **call)


@pytest.mark.parametrize("backend", ["cuda", "cpp"])
def test_backend_not_implemented(backend):
    with pytest.raises(NotImplementedError, match=backend):
        cms_level(**{k: v for k, v in _valid_call().items() if k not in ("backend",)}, backend=backend)


def test_auto_backend_is_torch():
    call = _valid_call()
    y_auto, _ = cms_level(**{**call, "backend": "auto"})
    y_torch, _ = cms_level(**call)
    torch.testing.assert_close(y_auto, y_torch, atol=0, rtol=0)


def test_compile_fullgraph():
    """The public call with backend="torch" traces in one graph (no graph breaks)."""
    torch._dynamo.reset()
    inputs = make_inputs(2, 6, shared=True, mode="target", retention=0.9, dtype=torch.float32)
    x, w1, w2, lr, tgt = (inputs[k].detach() for k in ("x", "w1", "w2", "lr", "target"))

    def fn(x, w1, w2, lr, target):
        y, s = cms_level(x, w1, w2, period=4, lr=lr, retention=0.9, target=target,
                         output_final_state=True, backend="torch")
        return y, s.w1, s.w2

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(x, w1, w2, lr, tgt), fn(x, w1, w2, lr, tgt)):
        torch.testing.assert_close(got, want)


def test_state_type():
    call = {**_valid_call(), "output_final_state": True}
    _, s = cms_level(**call)
    assert isinstance(s, CMSState)
    assert s.w1.shape == (2, D, DH) and s.w2.shape == (2, DH, D) and s.w1.dtype == torch.float32
