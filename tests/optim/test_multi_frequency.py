"""`MultiFrequencyOptimizer` (SPEC §5) against its definition: a plain Python loop that keeps one
accumulator per parameter and one optimiser per group, and steps a group every `period` outer
steps with the summed or averaged gradient. Equalities are exact: both sides do the same
floating-point operations. The fused Triton path runs interpreted on tiny tensors here; the
`gpu` test compiles it."""
import copy
import io

import pytest
import torch
from torch.testing import assert_close

from nested_kernels.optim import multi_frequency
from nested_kernels.optim.multi_frequency import MultiFrequencyOptimizer, accumulate_foreach

D_IN, D_HID, D_OUT = 5, 7, 3
SHAPES = [[(D_IN, D_HID), (D_HID,)], [(D_HID, D_OUT), (D_OUT,)]]    # group 0: layer 1, group 1: layer 2
OPTIMIZERS = {
    "sgd": lambda groups: torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=0.01),
    "nesterov": lambda groups: torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda groups: torch.optim.Adam(groups, lr=0.01, weight_decay=0.01),
    "adamw": lambda groups: torch.optim.AdamW(groups, lr=0.01, amsgrad=True),
}


def exact(actual, expected, name):
    assert_close(actual, expected, rtol=0, atol=0, msg=lambda m: f"{name}: {m}")


def make_params(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [[(0.5 * torch.randn(s, generator=gen)).to(dtype).requires_grad_() for s in group] for group in SHAPES]


def clone_params(groups):
    return [[p.detach().clone().requires_grad_() for p in ps] for ps in groups]


def backward(groups, t):
    """The gradients of outer step t's loss (a 2-layer MLP on step t's batch) into `.grad`."""
    (w1, b1), (w2, b2) = groups
    gen = torch.Generator().manual_seed(100 + t)
    x = torch.randn(4, D_IN, generator=gen).to(w1.dtype)
    y = torch.randn(4, D_OUT, generator=gen).to(w1.dtype)
    ((torch.tanh(x @ w1 + b1) @ w2 + b2 - y).float() ** 2).mean().backward()


def wrapped(groups, name, **kw):
    return MultiFrequencyOptimizer(OPTIMIZERS[name]([dict(params=ps) for ps in groups]), **kw)


def run(opt, groups, steps, start=0):
    for t in range(start, start + steps):
        backward(groups, t)
        opt.step()
        opt.zero_grad()


def reference_run(groups, name, periods, reduction, steps):
    """The definition: per group an fp32 accumulator and its own optimiser, stepped when due."""
    opts = [OPTIMIZERS[name]([dict(params=ps)]) for ps in groups]
    accs = [[torch.zeros_like(p, dtype=torch.float32) for p in ps] for ps in groups]
    for t in range(steps):
        backward(groups, t)
        with torch.no_grad():
            for ps, acc, opt, period in zip(groups, accs, opts, periods):
                for p, a in zip(ps, acc):
                    a += p.grad.float()
                if (t + 1) % period == 0:
                    for p, a in zip(ps, acc):
                        p.grad = (a / period if reduction == "mean" else a).to(p.dtype, copy=True)
                        a.zero_()
                    opt.step()
        for p in (p for ps in groups for p in ps):
            p.grad = None
    return opts


def assert_same_state(opt_a, params_a, opt_b, params_b, name):
    """Parameters and the wrapped optimisers' per-parameter states, exactly."""
    for i, (a, b) in enumerate(zip(params_a, params_b)):
        exact(a, b, f"{name}: param {i}")
        state_a, state_b = opt_a.state.get(a, {}), opt_b.state.get(b, {})
        assert state_a.keys() == state_b.keys(), (name, i, state_a.keys(), state_b.keys())
        for key in state_a:
            exact(state_a[key], state_b[key], f"{name}: param {i} state {key}")


def flat(groups):
    return [p for ps in groups for p in ps]


@pytest.mark.parametrize("name", [pytest.param(n, id=f"opt-{n}") for n in OPTIMIZERS])
def test_period_one_is_the_wrapped_optimizer(name):
    plain_params, params = make_params(), make_params()
    plain = OPTIMIZERS[name]([dict(params=ps) for ps in plain_params])
    opt = wrapped(params, name)
    for t in range(6):
        run(plain, plain_params, 1, start=t)
        run(opt, params, 1, start=t)
        assert_same_state(plain, flat(plain_params), opt, flat(params), f"step {t}")
    assert opt.state_dict()["accumulators"] == {}, "period-1 groups allocate no accumulators"


CASES = [
    pytest.param(name, periods, reduction, fused, id=f"opt-{name}-periods{periods[0]}x{periods[1]}-{reduction}-"
                 + ("fused" if fused else "foreach"))
    for name in ("sgd", "adam")
    for periods in ((3, 1), (2, 3))
    for reduction in ("sum", "mean")
    for fused in (False, True)
]


@pytest.mark.parametrize("name,periods,reduction,fused", CASES)
def test_multi_frequency_matches_definition(name, periods, reduction, fused):
    steps = 10
    ref_params, params = make_params(), make_params()
    ref_opts = reference_run(ref_params, name, periods, reduction, steps)
    opt = wrapped(params, name, periods=list(periods), reduction=reduction, fused=fused)
    run(opt, params, steps)
    assert opt.param_groups[0]["period"] == periods[0] and opt.param_groups[1]["reduction"] == reduction
    for g, (ref_ps, ps) in enumerate(zip(ref_params, params)):
        assert_same_state(ref_opts[g], ref_ps, opt, ps, f"group {g}")


@pytest.mark.parametrize("name", [pytest.param(n, id=f"opt-{n}") for n in ("sgd", "adam")])
def test_groups_not_due_are_untouched(name):
    params = make_params()
    opt = wrapped(params, name, periods=[1, 3])
    slow = params[1]
    initial = [p.detach().clone() for p in slow]
    for t in range(2):                                                   # slow group not due
        run(opt, params, 1, start=t)
        for i, (p, p0) in enumerate(zip(slow, initial)):
            exact(p, p0, f"step {t}: slow param {i}")
            assert p not in opt.state, f"step {t}: the wrapped optimizer holds state for slow param {i}"
    run(opt, params, 1, start=2)                                         # due: stepped
    assert all(p in opt.state for p in slow)
    snapshot = ([p.detach().clone() for p in slow], copy.deepcopy([opt.state[p] for p in slow]))
    backward(params, 3)
    opt.step()                                                           # not due again
    for i, p in enumerate(slow):
        exact(p, snapshot[0][i], f"step 3: slow param {i}")
        for key, value in snapshot[1][i].items():
            exact(opt.state[p][key], value, f"step 3: slow param {i} state {key}")
        assert p.grad is not None and not p.grad.any(), "gradients of groups not due are consumed (zero)"
    assert all(p.grad is not None and p.grad.any() for p in params[0]), "due groups keep the gradient used"


def test_parameter_without_gradient_is_skipped():
    """A parameter with no gradient on every step of its period is not stepped (no weight decay), as in torch."""
    params = make_params()
    unused = torch.randn(4, requires_grad=True)
    inner = torch.optim.SGD([dict(params=params[0]), dict(params=[*params[1], unused], period=2)], lr=0.1,
                            weight_decay=0.1, momentum=0.9)
    opt = MultiFrequencyOptimizer(inner)
    before = unused.detach().clone()
    run(opt, params, 4)
    exact(unused, before, "unused param")
    assert unused not in opt.state and unused.grad is None


@pytest.mark.parametrize("name", [pytest.param(n, id=f"opt-{n}") for n in ("sgd", "adam")])
def test_state_dict_round_trip_mid_period(name):
    params = make_params()
    opt = wrapped(params, name, periods=[2, 3], reduction="sum")
    run(opt, params, 2)                                                  # 2 of 3 accumulation steps
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    fresh = make_params(seed=1)
    with torch.no_grad():
        for p, q in zip(flat(fresh), flat(params)):
            p.copy_(q)
    resumed = wrapped(fresh, name)                                       # periods, reduction: from the state dict
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))
    assert [g["period"] for g in resumed.param_groups] == [2, 3]
    assert [g["reduction"] for g in resumed.param_groups] == ["sum", "sum"]
    run(opt, params, 5, start=2)
    run(resumed, fresh, 5, start=2)
    assert_same_state(opt, flat(params), resumed, flat(fresh), "resumed")
    state, expected = resumed.state_dict(), opt.state_dict()
    assert state["group_steps"] == [7, 7] and state["pending"] == [0, 1, 2, 3]   # mid-period in both groups
    assert state["accumulators"].keys() == expected["accumulators"].keys()
    for i, acc in expected["accumulators"].items():
        exact(state["accumulators"][i], acc, f"accumulator {i}")


GRAD_DTYPES = {"fp32": [torch.float32], "bf16": [torch.bfloat16], "fp16": [torch.float16],
               "mixed": [torch.bfloat16, torch.float32, torch.float16]}
SIZES = [(1,), (7,), (130,), (33, 5), (1500,), (40000,)]


@pytest.mark.parametrize("aligned", [pytest.param(a, id="aligned" if a else "unaligned") for a in (True, False)])
@pytest.mark.parametrize("dtypes", [pytest.param(v, id=k) for k, v in GRAD_DTYPES.items()])
def test_fused_matches_foreach(dtypes, aligned):
    pytest.importorskip("triton")
    from nested_kernels.triton_kernels.optim.multi_frequency import multi_frequency_accumulate

    grads, accs = [], []
    for i, shape in enumerate(SIZES):
        numel = torch.Size(shape).numel()
        storage = torch.randn(numel + 1).to(dtypes[i % len(dtypes)])
        grads.append((storage[:numel] if aligned else storage[1:]).view(shape))   # offset 1: not 16-byte aligned
        accs.append(torch.randn(shape))
    due = [True, False, True, True, False, True]
    divisors = [3, 1, 1, 7, 2, 5]
    expected_grads, expected_accs = [g.clone() for g in grads], [a.clone() for a in accs]
    accumulate_foreach(expected_grads, expected_accs, due, divisors)
    multi_frequency_accumulate(grads, accs, due, divisors)
    for i in range(len(SIZES)):
        exact(grads[i], expected_grads[i], f"grad {i}")
        exact(accs[i], expected_accs[i], f"acc {i}")


@pytest.mark.parametrize("dtype", [pytest.param(d, id=str(d).split(".")[-1]) for d in (torch.float32, torch.bfloat16)])
def test_fused_matches_foreach_optimizer(dtype):
    pytest.importorskip("triton")
    runs = []
    for fused in (True, False):
        params = make_params(dtype)
        opt = wrapped(params, "adam", periods=[2, 3], fused=fused)
        run(opt, params, 7)
        runs.append((opt, flat(params)))
    assert_same_state(*runs[0], *runs[1], "fused vs foreach")
    for i, (a, b) in enumerate(zip(runs[0][0].state_dict()["accumulators"].values(),
                                   runs[1][0].state_dict()["accumulators"].values())):
        exact(a, b, f"accumulator {i}")


def test_auto_uses_foreach_on_cpu(monkeypatch):
    def fail(*args):
        raise AssertionError("fused=None took the Triton kernel on CPU tensors")

    monkeypatch.setattr(multi_frequency, "accumulate_fused", fail)
    params = make_params()
    run(wrapped(params, "sgd", periods=[2, 3]), params, 3)


BAD = [
    pytest.param(dict(periods=[0, 1]), "period", id="period-zero"),
    pytest.param(dict(periods=[1.5, 1]), "period", id="period-float"),
    pytest.param(dict(periods=[True, 1]), "period", id="period-bool"),
    pytest.param(dict(periods=[1]), "periods", id="periods-length"),
    pytest.param(dict(periods=3), "periods", id="periods-int"),
    pytest.param(dict(group_period=-2), "period", id="group-period-negative"),
    pytest.param(dict(group_period=2, periods=[3, 1]), "periods", id="periods-conflict"),
    pytest.param(dict(reduction="max"), "reduction", id="reduction-max"),
    pytest.param(dict(group_reduction="avg"), "reduction", id="group-reduction-avg"),
    pytest.param(dict(fused="yes"), "fused", id="fused-str"),
]


@pytest.mark.parametrize("kwargs,argument", BAD)
def test_errors(kwargs, argument):
    params = make_params()
    groups = [dict(params=ps) for ps in params]
    if "group_period" in kwargs:
        groups[0]["period"] = kwargs.pop("group_period")
    if "group_reduction" in kwargs:
        groups[1]["reduction"] = kwargs.pop("group_reduction")
    with pytest.raises(ValueError, match=rf"^{argument}: expected"):
        MultiFrequencyOptimizer(torch.optim.SGD(groups, lr=0.1), **kwargs)


def test_errors_add_param_group_and_type():
    params = make_params()
    opt = wrapped(params[:1], "sgd")
    with pytest.raises(ValueError, match=r"^period: expected"):
        opt.add_param_group(dict(params=params[1], period=0))
    opt.add_param_group(dict(params=params[1], period=2))
    assert [g["period"] for g in opt.param_groups] == [1, 2]
    with pytest.raises(TypeError, match=r"^optimizer: expected"):
        MultiFrequencyOptimizer(params[0])


def test_errors_load_state_dict():
    params = make_params()
    opt = wrapped(params, "sgd", periods=[2, 3])
    run(opt, params, 1)
    state = opt.state_dict()
    with pytest.raises(ValueError, match=r"^state_dict: expected group_steps for 1 param groups, got 2"):
        wrapped(params[:1], "sgd").load_state_dict(state)
    with pytest.raises(ValueError, match=r"^state_dict: expected a MultiFrequencyOptimizer state dict"):
        opt.load_state_dict(state["optimizer"])
    with pytest.raises(ValueError, match=r"^state_dict: expected 35 elements in accumulator 0"):
        opt.load_state_dict({**state, "accumulators": {0: torch.zeros(3)}})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [pytest.param(d, id=str(d).split(".")[-1]) for d in (torch.float32, torch.bfloat16)])
def test_fused_cuda(dtype):
    runs = []
    for fused in (None, False):
        gen = torch.Generator().manual_seed(0)
        params = [torch.randn(s, generator=gen).to("cuda", dtype).requires_grad_() for s in ((4099, 33), (513,), (1,))]
        opt = MultiFrequencyOptimizer(torch.optim.AdamW([dict(params=params[:2], period=3), dict(params=params[2:])]),
                                      fused=fused)
        grads, accs = [torch.ones(1, device="cuda", dtype=dtype)], [torch.zeros(1, device="cuda")]
        assert opt._use_fused(grads, accs) == (fused is None)
        for t in range(5):
            gen_t = torch.Generator().manual_seed(t)
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen_t).to("cuda", dtype)
            opt.step()
        runs.append((opt, params))
    assert_same_state(*runs[0], *runs[1], "cuda fused vs foreach")
