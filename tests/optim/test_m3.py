"""M3 (NL Algorithm 1) and its Newton–Schulz orthogonalisation: against the SVD polar factor, a plain
loop of the docstring's equations in float64, the slow period, the Adam branch, state_dict, a toy fit."""
import io
import math

import pytest
import torch

from nested_kernels.optim.m3 import M3
from nested_kernels.optim.newton_schulz import NS_CUBIC, NS_QUINTIC, newton_schulz, polar_factor


def conditioned(shape, cond):
    """A random `[..., m, n]` float64 matrix with singular values log-spaced from 1 down to 1/cond."""
    U, S, Vh = torch.linalg.svd(torch.randn(*shape, dtype=torch.float64), full_matrices=False)
    S = torch.logspace(0, -math.log10(cond), S.shape[-1], dtype=torch.float64).expand_as(S)
    return U @ torch.diag_embed(S) @ Vh, U, Vh


SHAPES = [(64, 32), (32, 64), (100, 7), (63, 63), (4, 128, 96)]


# Quintic (Muon) coefficients: p(1) = a + b + c ≈ 0.70, so singular values do not converge to 1 but
# settle in a band; measured over these shapes, cond <= 100, 5 and 10 steps, fp32 and bf16:
# [0.676, 1.203], ‖O − U Vᵀ‖₂ <= 0.325, |off-diagonal of Uᵀ O V| <= 4.2e-6 (fp32), 6.6e-2 (bf16).
@pytest.mark.parametrize("steps", [5, 10])
@pytest.mark.parametrize("dtype,off_tol", [(torch.float32, 1e-5), (torch.bfloat16, 0.1)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cond", [1, 10, 100])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_newton_schulz(shape, cond, dtype, off_tol, steps):
    G, U, Vh = conditioned(shape, cond)
    O = newton_schulz(G.float(), steps, dtype=dtype)
    assert O.shape == G.shape and O.dtype == torch.float32
    D = U.mT @ O.double() @ Vh.mT                         # NS keeps U, V and maps σ to p(σ)
    sigma = torch.diagonal(D, dim1=-2, dim2=-1)
    off = D - torch.diag_embed(sigma)
    assert sigma.min() >= 0.6 and sigma.max() <= 1.3, f"singular values in [{sigma.min():.3f}, {sigma.max():.3f}]"
    assert off.abs().max() <= off_tol
    assert torch.linalg.matrix_norm(O.double() - polar_factor(G), ord=2).max() <= 0.35


@pytest.mark.parametrize("cond", [1, 10, 100])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_newton_schulz_cubic_converges(shape, cond):
    """The classical cubic iteration converges to U Vᵀ (cond 100 needs about 20 steps; 30 are run)."""
    G, _, _ = conditioned(shape, cond)
    O = newton_schulz(G, 30, coefficients=NS_CUBIC)
    torch.testing.assert_close(O, polar_factor(G), rtol=0, atol=1e-12)
    s = min(shape[-2:])
    gram = O.mT @ O if shape[-2] >= shape[-1] else O @ O.mT
    torch.testing.assert_close(gram, torch.eye(s, dtype=O.dtype).expand_as(gram), rtol=0, atol=1e-12)


def test_newton_schulz_layout():
    G = torch.randn(3, 20, 12)
    torch.testing.assert_close(newton_schulz(G.mT), newton_schulz(G).mT, rtol=0, atol=0)
    batched = newton_schulz(G)
    for i in range(3):
        torch.testing.assert_close(batched[i], newton_schulz(G[i]), rtol=1e-5, atol=1e-6)
    assert torch.equal(newton_schulz(torch.zeros(5, 4)), torch.zeros(5, 4))
    assert newton_schulz(G.bfloat16()).dtype == torch.bfloat16
    assert sum(NS_QUINTIC) == pytest.approx(0.701)


@pytest.mark.parametrize("call,match", [
    (lambda: newton_schulz(torch.randn(5)),
     r"G: expected a matrix or a batch of matrices \[..., m, n\], got shape \[5\]"),
    (lambda: newton_schulz(torch.randn(4, 4), steps=-1), "steps: expected an int >= 0, got -1"),
    (lambda: newton_schulz(torch.randn(4, 4), eps=0.0), "eps: expected a float > 0, got 0.0"),
    (lambda: newton_schulz(torch.randn(4, 4), coefficients=(1.5, -0.5)), "coefficients: expected 3 floats"),
    (lambda: newton_schulz(torch.randn(4, 4), dtype=torch.int32), "dtype: expected one of"),
], ids=["rank", "steps", "eps", "coefficients", "dtype"])
def test_newton_schulz_bad_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------------------------- M3

def toy_problem(dtype=torch.float64):
    """A 2-param model y = x Wᵀ + b (W a matrix, b a vector) on a fixed least-squares batch."""
    x, y = torch.randn(32, 3, dtype=dtype), torch.randn(32, 4, dtype=dtype)
    W, b = torch.randn(4, 3, dtype=dtype), torch.randn(4, dtype=dtype)

    def grads(params):
        params = [p.detach().requires_grad_() for p in params]
        loss = (x @ params[0].mT + params[1] - y).pow(2).mean()
        return torch.autograd.grad(loss, params)

    return W, b, grads


def m3_loop(params, grads, steps, *, lr, beta1, beta2, beta3, alpha, slow_period, eps, weight_decay, ns_steps, ema,
            precondition):
    """The update equations of the M3 docstring, written out per step; returns the params after each step."""
    params = [p.clone() for p in params]
    zero = [torch.zeros_like(p) for p in params]
    M1, V, M2, O2, S = list(zero), list(zero), list(zero), list(zero), list(zero)
    trajectory = []
    for t in range(1, steps + 1):
        gs = grads(params)
        for i, (p, g) in enumerate(zip(params, gs)):
            if p.dim() == 2:
                direction = lambda m: newton_schulz(m, ns_steps, dtype=torch.float64)  # noqa: E731
            else:
                direction = lambda m: m                                                # Adam branch  # noqa: E731
            if ema:
                M1[i] = beta1 * M1[i] + (1 - beta1) * g
                V[i] = beta2 * V[i] + (1 - beta2) * g * g
                M1_hat, V_hat = M1[i] / (1 - beta1 ** t), V[i] / (1 - beta2 ** t)
            else:
                M1[i] = M1[i] + beta1 * g
                V[i] = V[i] + beta2 * g * g
                M1_hat, V_hat = M1[i], V[i]
            S[i] = S[i] + g
            if precondition == "after":
                O1 = direction(M1_hat)
                params[i] = (1 - lr * weight_decay) * p - lr * ((O1 + alpha * O2[i]) / (V_hat.sqrt() + eps))
            else:
                O1 = direction(M1_hat / (V_hat.sqrt() + eps))
                params[i] = (1 - lr * weight_decay) * p - lr * (O1 + alpha * O2[i])
            if t % slow_period == 0:
                k = t // slow_period
                if ema:
                    M2[i] = beta3 * M2[i] + (1 - beta3) * S[i] / slow_period
                    M2_hat = M2[i] / (1 - beta3 ** k)
                else:
                    M2[i] = M2[i] + beta3 * S[i]
                    M2_hat = M2[i]
                if precondition == "before":
                    M2_hat = M2_hat / (V_hat.sqrt() + eps)
                O2[i] = direction(M2_hat)
                S[i] = torch.zeros_like(p)
        trajectory.append([p.clone() for p in params])
    return trajectory


def run_m3(params, grads, steps, **hp):
    params = [p.clone().requires_grad_() for p in params]
    opt = M3(params, ns_dtype=torch.float64, **hp)
    trajectory = []
    for _ in range(steps):
        for p, g in zip(params, grads(params)):
            p.grad = g
        opt.step()
        trajectory.append([p.detach().clone() for p in params])
    return trajectory, opt


HP = dict(lr=0.05, beta1=0.8, beta2=0.95, beta3=0.7, alpha=0.5, slow_period=3, eps=1e-8, weight_decay=0.0, ns_steps=5,
          ema=False, precondition="after")


@pytest.mark.parametrize("weight_decay", [0.0, 0.1], ids=["wd0", "wd0.1"])
@pytest.mark.parametrize("precondition", ["after", "before"])
@pytest.mark.parametrize("ema", [False, True], ids=["sum", "ema"])
def test_m3(ema, precondition, weight_decay):
    """Float64: the optimiser follows the loop of its equations to round-off over 8 steps (2 slow updates)."""
    W, b, grads = toy_problem()
    hp = dict(HP, ema=ema, precondition=precondition, weight_decay=weight_decay)
    got, _ = run_m3([W, b], grads, 8, **hp)
    want = m3_loop([W, b], grads, 8, **hp)
    for t, (g, w) in enumerate(zip(got, want), 1):
        torch.testing.assert_close(g[0], w[0], rtol=1e-12, atol=1e-12, msg=lambda m: f"W after step {t}: {m}")
        torch.testing.assert_close(g[1], w[1], rtol=1e-12, atol=1e-12, msg=lambda m: f"b after step {t}: {m}")
    assert not torch.allclose(got[-1][0], W)


def test_m3_slow_period():
    """M2 and its direction change only after steps f, 2f, …, from the f gradients summed since the last one."""
    W, b, grads = toy_problem()
    f = 4
    params = [W.clone().requires_grad_()]
    opt = M3(params, slow_period=f, beta3=0.7, ns_dtype=torch.float64, lr=1e-2)
    state = opt.state[params[0]]
    block, expected_m2 = [], torch.zeros_like(W)
    for t in range(1, 14):
        g = grads([params[0], b])[0]
        params[0].grad = g
        before = {name: state[name].clone() for name in ("slow_momentum", "slow_direction")} if state else None
        opt.step()
        block.append(g)
        if t % f == 0:
            expected_m2 = expected_m2 + 0.7 * torch.stack(block).sum(0)
            block = []
            torch.testing.assert_close(state["slow_momentum"], expected_m2, rtol=1e-12, atol=1e-12)
            want = newton_schulz(state["slow_momentum"], 5, dtype=torch.float64)
            torch.testing.assert_close(state["slow_direction"], want, rtol=0, atol=0)
            assert state["slow_step"] == t // f and not state["grad_sum"].any()
        else:
            if before is not None:
                assert torch.equal(state["slow_momentum"], before["slow_momentum"])
                assert torch.equal(state["slow_direction"], before["slow_direction"])
            else:
                assert not state["slow_momentum"].any() and not state["slow_direction"].any()
            assert state["slow_step"] == t // f
            torch.testing.assert_close(state["grad_sum"], torch.stack(block).sum(0), rtol=1e-12, atol=1e-12)


def test_m3_adam_branch():
    """Vectors, and matrices of a group with orthogonalize=False, skip Newton–Schulz; >2-d params are
    orthogonalised as [shape[0], -1]. First step of the sum form: Δ = −η O1 / (√(β2 g²) + ε), with
    O1 = NS(β1 g) or β1 g."""
    lr, beta1, beta2, eps = 0.1, 0.9, 0.99, 1e-8
    matrix, vector, forced, conv = (torch.randn(6, 4, dtype=torch.float64), torch.randn(6, dtype=torch.float64),
                                    torch.randn(6, 4, dtype=torch.float64), torch.randn(5, 2, 3, dtype=torch.float64))
    params = [p.clone().requires_grad_() for p in (matrix, vector, forced, conv)]
    opt = M3([{"params": [params[0], params[1], params[3]]}, {"params": [params[2]], "orthogonalize": False}],
             lr=lr, beta1=beta1, beta2=beta2, eps=eps, ns_dtype=torch.float64)
    grads = [torch.randn_like(p) for p in params]
    for p, g in zip(params, grads):
        p.grad = g
    opt.step()

    def adam(p0, g):
        return p0 - lr * ((beta1 * g) / ((beta2 * g * g).sqrt() + eps))

    def muon(p0, g):
        o = newton_schulz((beta1 * g).reshape(g.shape[0], -1), 5, dtype=torch.float64).view_as(g)
        return p0 - lr * (o / ((beta2 * g * g).sqrt() + eps))

    torch.testing.assert_close(params[1].detach(), adam(vector, grads[1]), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(params[2].detach(), adam(forced, grads[2]), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(params[0].detach(), muon(matrix, grads[0]), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(params[3].detach(), muon(conv, grads[3]), rtol=1e-14, atol=1e-14)
    assert not torch.allclose(params[0].detach(), adam(matrix, grads[0]))


@pytest.mark.parametrize("ema", [False, True], ids=["sum", "ema"])
def test_m3_state_dict(ema):
    """Save after 5 steps (mid-block), load into a fresh optimiser, run 6 more: identical to an uninterrupted run."""
    W, b, grads = toy_problem()
    hp = dict(HP, ema=ema)
    full, _ = run_m3([W, b], grads, 11, **hp)
    first, opt = run_m3([W, b], grads, 5, **hp)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    params = [p.clone().requires_grad_() for p in first[-1]]
    resumed = M3(params, lr=1.0)                          # hyper-parameters come back with the groups
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    assert resumed.param_groups[0]["ns_dtype"] == torch.float64 and resumed.param_groups[0]["ema"] == ema
    assert resumed.state[params[0]]["step"] == 5 and resumed.state[params[0]]["slow_step"] == 1
    for t in range(6, 12):
        for p, g in zip(params, grads(params)):
            p.grad = g
        resumed.step()
        for p, want in zip(params, full[t - 1]):
            assert torch.equal(p.detach(), want), f"step {t}"


# Thresholds from 30 seeds of this problem (worst final/initial ratio in brackets): Algorithm 1 as
# written [0.45] needs ε near the gradient scale, see the docstring; with ε = 1e-8 2 of 20 seeds diverge.
# The hybrid sums + precondition="before" (M1 never forgets, steps do not shrink) is the weakest
# (0.33 to 0.83 at η = 1e-2) and has no margin test; test_m3 checks its equations.
FITS = {
    "sum-after": (dict(ema=False, precondition="after", lr=1e-3, eps=1e-4), 0.6),    # [0.447]
    "ema-after": (dict(ema=True, precondition="after", lr=1e-3, eps=1e-4), 0.5),     # [0.287]
    "ema-before": (dict(ema=True, precondition="before", lr=1e-2), 0.5),             # [0.259]
}


@pytest.mark.parametrize("hp,ratio", list(FITS.values()), ids=list(FITS))
def test_m3_fits_regression(hp, ratio):
    """50 steps on a small tanh-MLP regression (default bf16 Newton–Schulz) cut the loss by a clear margin."""
    x = torch.randn(256, 16)
    y = torch.tanh(x @ torch.randn(16, 4)) + 0.01 * torch.randn(256, 4)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    opt = M3(model.parameters(), slow_period=5, **hp)

    def closure():
        opt.zero_grad()
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        return loss

    initial = (model(x) - y).pow(2).mean().item()
    for _ in range(50):
        loss = opt.step(closure)
        assert torch.is_tensor(loss) and math.isfinite(loss.item())
    final = (model(x) - y).pow(2).mean().item()
    assert final < ratio * initial, f"loss {initial:.4f} -> {final:.4f}"


BAD = {
    "lr": (dict(lr=-1e-3), "lr: expected a float >= 0, got -0.001"),
    "beta1": (dict(beta1=1.0), r"beta1: expected a float in \[0, 1\), got 1.0"),
    "beta2": (dict(beta2=-0.1), r"beta2: expected a float in \[0, 1\), got -0.1"),
    "beta3": (dict(beta3="0.9"), r"beta3: expected a float in \[0, 1\), got '0.9'"),
    "alpha": (dict(alpha=-1.0), "alpha: expected a float >= 0, got -1.0"),
    "eps": (dict(eps=0.0), "eps: expected a float > 0, got 0.0"),
    "weight_decay": (dict(weight_decay=-0.1), "weight_decay: expected a float >= 0, got -0.1"),
    "slow_period-zero": (dict(slow_period=0), "slow_period: expected an int >= 1, got 0"),
    "slow_period-float": (dict(slow_period=2.5), "slow_period: expected an int >= 1, got 2.5"),
    "ns_steps": (dict(ns_steps=-1), "ns_steps: expected an int >= 0, got -1"),
    "ns_dtype": (dict(ns_dtype=torch.int64), "ns_dtype: expected one of"),
    "ema": (dict(ema=1), "ema: expected a bool, got 1"),
    "precondition": (dict(precondition="inside"), r"precondition: expected one of \['after', 'before'\], got 'inside'"),
    "orthogonalize-type": (dict(orthogonalize="yes"), "orthogonalize: expected None"),
    "orthogonalize-vector": (dict(orthogonalize=True),
                             r"orthogonalize: expected only params with >= 2 dims when True, got shapes \[\(4,\)\]"),
}


@pytest.mark.parametrize("change,match", list(BAD.values()), ids=list(BAD))
def test_m3_bad_hyperparameter(change, match):
    params = [torch.zeros(4, 3, requires_grad=True), torch.zeros(4, requires_grad=True)]
    with pytest.raises(ValueError, match=match):
        M3(params, **change)
    with pytest.raises(ValueError, match=match):          # the same check on a per-group override
        M3([{"params": params, **change}])
