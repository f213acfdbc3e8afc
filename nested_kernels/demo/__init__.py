"""`nested-kernels demo`: HOPE vs a same-size Transformer on multi-query associative recall (MQAR).

Everything is generated here from a seed (no downloads) and runs on a laptop CPU in minutes.

MQAR sequence (Zoology-style): `n_pairs` key–value pairs, then `n_queries` of those keys, each
followed by its value:

    k1 v1 k2 v2 … kn vn | q1 a1 q2 a2 … qm am          a_i = the value paired with q_i

Keys are distinct within a sequence and the key→value map is drawn afresh for every sequence,
so the answer can only come from the context. The loss (and the accuracy) count only the
positions of q_i, whose next-token target is a_i.

`--continual` trains on a sequence of tasks that use disjoint parts of the vocabulary (task i
has its own keys and values), one after the other, evaluates every task at regular points,
reports forgetting (best accuracy − final accuracy, per task) and plots accuracy over time.
"""
import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MQARTask", "mqar_batch", "TransformerLM", "make_hope", "make_transformer", "train_steps",
           "evaluate", "add_arguments", "run"]

IGNORE = -100


@dataclass(frozen=True)
class MQARTask:
    """Keys are tokens `key_offset + [0, n_keys)`, values `value_offset + [0, n_values)`."""
    n_keys: int = 32
    n_values: int = 32
    n_pairs: int = 8
    n_queries: int = 8
    key_offset: int = 0
    value_offset: int = 32

    @property
    def seq_len(self) -> int:
        return 2 * (self.n_pairs + self.n_queries)

    @property
    def vocab_end(self) -> int:
        return max(self.key_offset + self.n_keys, self.value_offset + self.n_values)


def mqar_batch(task: MQARTask, batch: int, generator: torch.Generator):
    """`(tokens [B, T], targets [B, T])`; targets are IGNORE except at query positions (= the answer)."""
    if task.n_pairs > task.n_keys or task.n_queries > task.n_pairs:
        raise ValueError("need n_queries <= n_pairs <= n_keys")
    B, n, m = batch, task.n_pairs, task.n_queries
    keys = torch.rand(B, task.n_keys, generator=generator).argsort(-1)[:, :n]        # distinct keys
    values = torch.randint(0, task.n_values, (B, n), generator=generator)
    pick = torch.rand(B, n, generator=generator).argsort(-1)[:, :m]                   # which pairs are queried
    qk, qv = keys.gather(1, pick), values.gather(1, pick)
    keys, qk = keys + task.key_offset, qk + task.key_offset
    values, qv = values + task.value_offset, qv + task.value_offset
    tokens = torch.cat([torch.stack([keys, values], -1).view(B, 2 * n),
                        torch.stack([qk, qv], -1).view(B, 2 * m)], 1)
    targets = torch.full_like(tokens, IGNORE)
    targets[:, 2 * n::2] = qv                                                         # at q_i, predict a_i
    return tokens, targets


# ---------------------------------------------------------------------------------------------- models


class TransformerLM(nn.Module):
    """Small pre-norm causal Transformer (learned positions, tied embeddings): the baseline."""

    def __init__(self, vocab: int, d_model: int, layers: int, heads: int, max_len: int, ff_mult: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(d_model, heads, ff_mult * d_model, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tokens: torch.Tensor, state=None):
        T = tokens.shape[1]
        h = self.embed(tokens) + self.pos(torch.arange(T, device=tokens.device))
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=tokens.device)
        h = self.encoder(h, mask=mask, is_causal=True)
        return self.norm(h) @ self.embed.weight.t(), None


def make_hope(vocab: int, d_model: int = 64, layers: int = 2, heads: int = 2):
    from ..models import HopeConfig, HopeLM
    head_dim = d_model // heads
    cfg = HopeConfig(vocab=vocab, d_model=d_model, layers=layers, heads=heads, head_dim=head_dim,
                     mem_hidden=head_dim, c_aux=16, c_mem=32, cms_levels=[(2 * d_model, 8), (2 * d_model, 32)],
                     lr_max=0.1, backend="torch")
    return HopeLM(cfg)


def make_transformer(vocab: int, d_model: int = 64, layers: int = 2, heads: int = 2, max_len: int = 256):
    return TransformerLM(vocab, d_model, layers, heads, max_len)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------ train / evaluate


def loss_fn(model, tokens, targets):
    logits, _ = model(tokens)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)


@torch.no_grad()
def evaluate(model, task: MQARTask, n_seqs: int, seed: int, batch: int = 128) -> float:
    """Accuracy (argmax over the whole vocabulary) on the answer positions of `n_seqs` held-out sequences."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    correct = total = 0
    for start in range(0, n_seqs, batch):
        tokens, targets = mqar_batch(task, min(batch, n_seqs - start), g)
        logits, _ = model(tokens)
        mask = targets != IGNORE
        correct += (logits.argmax(-1)[mask] == targets[mask]).sum().item()
        total += mask.sum().item()
    model.train()
    return correct / max(total, 1)


def train_steps(model, opt, task: MQARTask, steps: int, batch: int, generator: torch.Generator,
                lr_at=None, progress: Optional[str] = None, clip: float = 1.0, callback=None) -> Dict:
    """AdamW steps on fresh MQAR batches; returns {"losses", "seconds", "tokens", "skipped"}."""
    from tqdm import tqdm
    losses, skipped, seconds, tokens_seen = [], 0, 0.0, 0
    bar = tqdm(range(steps), desc=progress, unit="step", file=sys.stderr, disable=progress is None,
               dynamic_ncols=True, leave=True)
    model.train()
    for step in bar:
        tokens, targets = mqar_batch(task, batch, generator)
        t0 = time.perf_counter()
        if lr_at is not None:
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
        loss = loss_fn(model, tokens, targets)
        opt.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
        else:                                                        # never step on a non-finite loss
            skipped += 1
        seconds += time.perf_counter() - t0
        tokens_seen += tokens.numel()
        losses.append(loss.item())
        if progress is not None and (step % 5 == 0 or step == steps - 1):
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}",
                            tok_s=f"{tokens_seen / max(seconds, 1e-9):.0f}")
        if callback is not None:
            callback(step)
    bar.close()
    return {"losses": losses, "seconds": seconds, "tokens": tokens_seen, "skipped": skipped}


def cosine(lr: float, steps: int, warmup: int):
    def at(step):
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))
    return at


# ------------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per model (per task with --continual); default 2000 (400 per task "
                             "with --continual), 40 with --quick")
    parser.add_argument("--seed", type=int, default=0, help="seed for data and initialisation (default: 0)")
    parser.add_argument("--continual", action="store_true",
                        help="train on a sequence of MQAR tasks (disjoint vocabularies) and report forgetting")
    parser.add_argument("--tasks", type=int, default=3, help="number of tasks with --continual (default: 3)")
    parser.add_argument("--out-dir", default="nested_kernels_demo",
                        help="where --continual writes its plot (default: ./nested_kernels_demo)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (~30 s)")
    parser.add_argument("--batch", type=int, default=None, help="sequences per step (default 32, 16 with --quick)")
    parser.add_argument("--lr", type=float, default=2e-3,
                        help="peak AdamW learning rate (default: 2e-3; HOPE stalls at 1e-2)")
    parser.add_argument("--d-model", type=int, default=64, help="width of both models (default: 64)")
    parser.add_argument("--layers", type=int, default=2, help="layers of both models (default: 2)")
    parser.add_argument("--model", choices=("both", "hope", "transformer"), default="both",
                        help="which models to train (default: both)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default: 1; these models are too small to gain from more)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _settings(args):
    steps = args.steps if args.steps is not None else (40 if args.quick else 400 if args.continual else 2000)
    batch = args.batch if args.batch is not None else (16 if args.quick else 32)
    n_eval = 64 if args.quick else 512
    return steps, batch, n_eval


def _models(args, vocab, max_len):
    names = ["hope", "transformer"] if args.model == "both" else [args.model]
    out = {}
    for i, name in enumerate(names):
        torch.manual_seed(args.seed + i)
        if name == "hope":
            out["HOPE"] = make_hope(vocab, args.d_model, args.layers)
        else:
            out["Transformer"] = make_transformer(vocab, args.d_model, args.layers, max_len=max_len)
    return out


def _optimizer(model, lr):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": other, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.98))


def _header(args, steps, batch, task):
    print(f"nested-kernels demo: MQAR, {task.n_pairs} key-value pairs + {task.n_queries} queries "
          f"(T = {task.seq_len}), {task.n_keys} keys, {task.n_values} values (chance {1 / task.n_values:.1%}); "
          f"{steps} steps x {batch} sequences, AdamW lr {args.lr:g}, seed {args.seed}")
    print(f"machine: torch {torch.__version__}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch thread(s)")


def _run_single(args) -> int:
    steps, batch, n_eval = _settings(args)
    task = MQARTask()
    _header(args, steps, batch, task)
    results = {}
    for name, model in _models(args, task.vocab_end, task.seq_len).items():
        opt = _optimizer(model, args.lr)
        g = torch.Generator().manual_seed(args.seed)
        log = train_steps(model, opt, task, steps, batch, g, lr_at=cosine(args.lr, steps, max(1, steps // 10)),
                          progress=None if args.no_progress else name)
        acc = evaluate(model, task, n_eval, seed=args.seed + 10_000)
        tps = log["tokens"] / max(log["seconds"], 1e-9)
        results[name] = acc
        skipped = f", {log['skipped']} non-finite steps skipped" if log["skipped"] else ""
        last = log["losses"][-10:]
        print(f"{name:12s} params {n_params(model):>8,d}  final loss {sum(last) / len(last):.3f}  "
              f"held-out accuracy {acc:.1%} ({n_eval} sequences)  training {tps:,.0f} tokens/s "
              f"({log['seconds']:.1f} s){skipped}", flush=True)
    return 0


def _run_continual(args) -> int:
    steps, batch, n_eval = _settings(args)
    n_keys = n_values = 16
    stride = n_keys + n_values
    tasks = [MQARTask(n_keys=n_keys, n_values=n_values, n_pairs=8, n_queries=8,
                      key_offset=i * stride, value_offset=i * stride + n_keys) for i in range(args.tasks)]
    vocab = tasks[-1].vocab_end
    _header(args, steps, batch, tasks[0])
    print(f"continual: {args.tasks} tasks on disjoint vocabularies ({n_keys} keys + {n_values} values each), "
          f"{steps} steps on each in turn")
    evals_per_task = 4
    every = max(1, steps // evals_per_task)
    n_eval = max(64, n_eval // 2)
    history = {}
    for name, model in _models(args, vocab, tasks[0].seq_len).items():
        opt = _optimizer(model, args.lr)
        g = torch.Generator().manual_seed(args.seed)
        points, accs = [], [[] for _ in tasks]            # accs[task][point]
        done = [0]

        def record():
            points.append(done[0])
            for j, t in enumerate(tasks):
                accs[j].append(evaluate(model, t, n_eval, seed=args.seed + 10_000 + j))

        record()
        seconds = tokens = 0
        for i, task in enumerate(tasks):
            def callback(step):
                done[0] += 1
                if (step + 1) % every == 0 or step == steps - 1:
                    record()
            log = train_steps(model, opt, task, steps, batch, g, lr_at=cosine(args.lr, steps, max(1, steps // 10)),
                              progress=None if args.no_progress else f"{name} task {i}", callback=callback)
            seconds, tokens = seconds + log["seconds"], tokens + log["tokens"]
            print(f"{name} after task {i}: " + "  ".join(f"task {j} {a[-1]:.1%}" for j, a in enumerate(accs)),
                  flush=True)
        forgetting = [max(a) - a[-1] for a in accs]
        print(f"{name}: final accuracy " + "  ".join(f"task {j} {a[-1]:.1%}" for j, a in enumerate(accs)))
        print(f"{name}: forgetting (max - final) " + "  ".join(f"task {j} {f:.1%}" for j, f in enumerate(forgetting))
              + f"  mean {sum(forgetting[:-1]) / max(1, len(forgetting) - 1):.1%} over tasks 0..{len(tasks) - 2}")
        print(f"{name}: training {tokens / max(seconds, 1e-9):,.0f} tokens/s")
        history[name] = (points, accs)
    _plot(history, tasks, steps, args.out_dir)
    return 0


def _plot(history, tasks, steps, out_dir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written (pip install matplotlib)")
        return None
    os.makedirs(out_dir, exist_ok=True)
    fig, axes = plt.subplots(1, len(history), figsize=(5.5 * len(history), 4), squeeze=False, sharey=True)
    for ax, (name, (points, accs)) in zip(axes[0], history.items()):
        for j, a in enumerate(accs):
            ax.plot(points, a, marker="o", ms=3, label=f"task {j}")
        for i in range(1, len(tasks)):
            ax.axvline(i * steps, color="grey", ls=":", lw=1)
        ax.axhline(1 / tasks[0].n_values, color="black", ls="--", lw=0.8, label="chance")
        ax.set_title(f"{name}: MQAR accuracy per task")
        ax.set_xlabel("training step (tasks in turn)")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("held-out accuracy")
    fig.tight_layout()
    path = os.path.join(out_dir, "continual_accuracy.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot written to {path}")
    return path


def run(args: argparse.Namespace) -> int:
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        torch.manual_seed(args.seed)
        return _run_continual(args) if args.continual else _run_single(args)
    finally:
        torch.set_num_threads(threads)
