"""Meta-learn Deep Momentum Gradient Descent (DMGD, SPEC §5) on a family of linear regressions,
then compare it with SGD-momentum and Adam (learning rates tuned) on held-out tasks.

Every task is a least-squares problem `min_W ½ mean_i ‖W x_i − y_i‖²` with W `[n_out, d]`,
y = W* x + noise, a fresh W* per task, and inputs x ~ N(0, Σ) whose ill-conditioned,
rotated covariance Σ is shared by the family (what a learned optimiser can exploit, and
what Adam's diagonal preconditioning cannot undo). DMGD's momentum memory
m_φ(u) = u + φ(u A) B acts on the rows of the gradient; its initial weights φ_0 = (A, B),
inner learning rate η and outer learning rate are meta-trained through K unrolled steps
(`functional_step`, exact gradient of the unrolled inner loop including the
gradient-of-gradient terms). Held-out evaluation runs every optimiser for the same K steps.

    python examples/dmgd_meta.py                  # about 15 s on a 2-core CPU
    python examples/dmgd_meta.py --plot out.png   # where the loss-vs-step plot goes

Needs matplotlib for the plot only (`pip install matplotlib`); without it the table still prints.
"""
import argparse
import math
import platform
import time

import torch
import torch.nn.functional as F

from nested_kernels.optim.deep_momentum import DeepMomentum, DMGDMeta, default_phi0, functional_step


class RegressionFamily:
    """Linear regressions sharing the input covariance Σ = Q diag(s) Qᵀ, s from 1 down to 1/cond."""

    def __init__(self, d, n_out, n_samples, cond, noise, seed):
        gen = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen))
        spectrum = torch.logspace(0, -math.log10(cond), d)
        self.root = q @ torch.diag(spectrum.sqrt()) @ q.T            # Σ^{1/2}
        self.d, self.n_out, self.n_samples, self.noise = d, n_out, n_samples, noise

    def sample(self, num, gen):
        x = torch.randn(num, self.n_samples, self.d, generator=gen) @ self.root
        w_star = torch.randn(num, self.n_out, self.d, generator=gen)
        y = x @ w_star.transpose(-1, -2) + self.noise * torch.randn(num, self.n_samples, self.n_out, generator=gen)
        return x, y


def task_loss(w, x, y):
    """Per-task loss ½ mean_i ‖W x_i − y_i‖², `[num]`."""
    return 0.5 * (x @ w.transpose(-1, -2) - y).pow(2).sum(-1).mean(-1)


def task_grad(w, x, y):
    """Its gradient (W xᵀx − yᵀx) / N, written out so that it stays differentiable in W."""
    return (x @ w.transpose(-1, -2) - y).transpose(-1, -2) @ x / x.shape[1]


def dmgd_trajectory(meta, x, y, steps):
    """Losses [steps + 1, num] of DMGD from W = 0; every task is its own matrix (own memory)."""
    w = x.new_zeros(x.shape[0], y.shape[-1], x.shape[-1])
    losses, states = [task_loss(w, x, y)], None
    for _ in range(steps):
        (w,), states = functional_step([w], [task_grad(w, x, y)], meta, states)
        losses.append(task_loss(w, x, y))
    return torch.stack(losses)


def torch_trajectory(make_opt, x, y, steps):
    """Losses [steps + 1, num] of a torch optimiser; the tasks are stacked in one parameter and
    the loss is summed over them, which for the elementwise SGD and Adam is exactly one run per task."""
    w = torch.zeros(x.shape[0], y.shape[-1], x.shape[-1], requires_grad=True)
    opt = make_opt([w])
    losses = []
    for _ in range(steps):
        loss = task_loss(w, x, y)
        losses.append(loss.detach())
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
    losses.append(task_loss(w, x, y).detach())
    return torch.stack(losses)


def tune(name, make, grid, x, y, steps):
    """The hyper-parameters (a dict from `grid`) whose mean final loss on the training tasks is lowest."""
    finals = []
    for hp in grid:
        final = torch_trajectory(lambda p: make(p, **hp), x, y, steps)[-1].mean().item()
        finals.append(final if math.isfinite(final) else float("inf"))
    best = min(range(len(grid)), key=finals.__getitem__)
    shown = ", ".join(f"{k} {v:.3g}" for k, v in grid[best].items())
    print(f"  {name:<13} {len(grid)} settings: best {shown} (train final loss {finals[best]:.4g})")
    return grid[best]


class MetaParams(torch.nn.Module):
    """φ_0 = (w1, w2) and the gates, with η = softplus(·), lr = softplus(·) kept positive."""

    def __init__(self, d, hidden, lr_inner, lr, seed):
        super().__init__()
        w1, w2 = default_phi0(d, hidden, init_scale=0.1, seed=seed)
        self.w1, self.w2 = torch.nn.Parameter(w1), torch.nn.Parameter(w2)
        inv_softplus = lambda v: math.log(math.expm1(v))
        self.raw_lr_inner = torch.nn.Parameter(torch.tensor(inv_softplus(lr_inner)))
        self.raw_lr = torch.nn.Parameter(torch.tensor(inv_softplus(lr)))

    def meta(self):
        return DMGDMeta(self.w1, self.w2, lr_inner=F.softplus(self.raw_lr_inner), retention=1.0,
                        lr=F.softplus(self.raw_lr))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=20, help="inner steps K (all optimisers)")
    parser.add_argument("--meta-iters", type=int, default=300)
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--test-tasks", type=int, default=256)
    parser.add_argument("--plot", default="dmgd_meta.png", help="PNG path ('' for none)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; the ops here are tiny, so more threads only add synchronisation")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.time()
    print(f"torch {torch.__version__}, {platform.machine()} CPU, {torch.get_num_threads()} thread(s), seed {args.seed}")

    d, n_out, n_samples, hidden, K = 8, 4, 32, 32, args.steps
    family = RegressionFamily(d, n_out, n_samples, cond=100.0, noise=0.05, seed=args.seed)
    train_gen = torch.Generator().manual_seed(args.seed + 1)
    test_gen = torch.Generator().manual_seed(args.seed + 2)
    print(f"tasks: W [{n_out}, {d}], {n_samples} samples, cond(Σ) = 100 (rotated), noise 0.05; K = {K} steps")

    # 1. meta-train DMGD: φ_0, η and lr through K unrolled steps (mean log-loss over the trajectory)
    params = MetaParams(d, hidden, lr_inner=0.1, lr=0.5, seed=args.seed)
    phi0_init = DMGDMeta(*(t.detach().clone() if isinstance(t, torch.Tensor) else t for t in params.meta()))
    outer = torch.optim.Adam(params.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(outer, args.meta_iters)
    skipped = 0
    print(f"meta-training DMGD ({args.meta_iters} outer Adam steps, {args.meta_batch} tasks each)")
    for it in range(args.meta_iters):
        x, y = family.sample(args.meta_batch, train_gen)
        losses = dmgd_trajectory(params.meta(), x, y, K)
        objective = losses[1:].clamp_min(1e-12).log().mean()
        outer.zero_grad()
        objective.backward()
        norm = torch.nn.utils.clip_grad_norm_(params.parameters(), 1.0)
        if torch.isfinite(objective) and torch.isfinite(norm):      # a diverged unroll teaches nothing
            outer.step()
        else:
            skipped += 1
        schedule.step()
        if it % 25 == 0 or it == args.meta_iters - 1:
            print(f"  iter {it:4d}  mean log-loss {objective.item():+.3f}  final loss {losses[-1].mean().item():.4g}")
    meta = DMGDMeta(*(t.detach() if isinstance(t, torch.Tensor) else t for t in params.meta()))
    print(f"  learned η = {float(meta.lr_inner):.4g}, lr = {float(meta.lr):.4g}; {skipped} non-finite outer steps "
          f"skipped ({time.time() - start:.0f} s so far)")

    # 2. tune the baselines on fresh training tasks (as many as the held-out set)
    x_tr, y_tr = family.sample(args.test_tasks, train_gen)
    lrs = torch.logspace(-2.5, 0.5, 16).tolist()
    make_sgd = lambda p, lr, momentum: torch.optim.SGD(p, lr=lr, momentum=momentum)
    make_adam = lambda p, lr, beta1: torch.optim.Adam(p, lr=lr, betas=(beta1, 0.999))
    print("tuning the baselines on training tasks "
          "(grid: lr 10^-2.5 … 10^0.5, 16 values; SGD μ and Adam β1 ∈ {0, 0.5, 0.9})")
    hp_sgd = tune("SGD-momentum", make_sgd, [dict(lr=lr, momentum=m) for m in (0.0, 0.5, 0.9) for lr in lrs],
                  x_tr, y_tr, K)
    hp_adam = tune("Adam", make_adam, [dict(lr=lr, beta1=b) for b in (0.0, 0.5, 0.9) for lr in lrs], x_tr, y_tr, K)

    # 3. held-out tasks: the same K steps for everyone
    x, y = family.sample(args.test_tasks, test_gen)
    with torch.no_grad():
        curves = {
            "DMGD (meta-learned)": dmgd_trajectory(meta, x, y, K),
            "DMGD (init: φ_0, η 0.1, lr 0.5)": dmgd_trajectory(phi0_init, x, y, K),
        }
        w_opt = torch.linalg.lstsq(x, y).solution.transpose(-1, -2)
        optimum = task_loss(w_opt, x, y)
    curves[f"SGD-momentum (lr {hp_sgd['lr']:.3g}, μ {hp_sgd['momentum']:.2g})"] = torch_trajectory(
        lambda p: make_sgd(p, **hp_sgd), x, y, K)
    curves[f"Adam (lr {hp_adam['lr']:.3g}, β1 {hp_adam['beta1']:.2g})"] = torch_trajectory(
        lambda p: make_adam(p, **hp_adam), x, y, K)

    # the optimiser class on a few tasks reproduces the functional run
    with torch.enable_grad():
        for t in range(4):
            w = torch.zeros(n_out, d, requires_grad=True)
            opt = DeepMomentum.from_meta([w], meta)
            for _ in range(K):
                opt.zero_grad()
                task_loss(w[None], x[t:t + 1], y[t:t + 1]).sum().backward()
                opt.step()
            final = task_loss(w[None].detach(), x[t:t + 1], y[t:t + 1]).item()
            ref = curves["DMGD (meta-learned)"][-1, t].item()
            assert abs(final - ref) <= 1e-4 * max(1.0, abs(ref)), (final, ref)

    print(f"\nheld-out tasks: {args.test_tasks}; loss after k steps (mean over tasks; median in brackets)")
    print(f"  {'optimiser':<34} {'k = 0':>7} {'k = 5':>19} {'k = 10':>19} {f'k = {K}':>19}")
    for name, c in curves.items():
        cells = [f"{c[k].mean().item():.4g} ({c[k].median().item():.3g})" for k in (5, 10, K)]
        print(f"  {name:<34} {c[0].mean().item():>7.4g} {cells[0]:>19} {cells[1]:>19} {cells[2]:>19}")
    print(f"  {'least-squares optimum':<34} {'':>7} {'':>19} {'':>19} {optimum.mean().item():>19.4g}")
    print(f"total time {time.time() - start:.0f} s")

    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed (pip install matplotlib): no plot written")
            return
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, c in curves.items():
            ax.plot(range(K + 1), c.mean(1).numpy(), label=name, ls="--" if "init" in name else "-")
        ax.axhline(optimum.mean().item(), color="gray", lw=0.8, ls=":", label="least-squares optimum")
        ax.set_yscale("log")
        ax.set_xlabel("inner step k")
        ax.set_ylabel("loss (mean over held-out tasks)")
        ax.set_title("DMGD, meta-learned vs tuned SGD-momentum and Adam")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=90)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
