"""The training loop of `nested-kernels train`: random windows of a token stream, AdamW with a
cosine schedule, optional bf16 autocast, a validation loss, tokens/s, and checkpoints."""
import json
import math
import os
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from ..demo import cosine
from .data import random_windows


def autocast(device: torch.device, dtype: str):
    if dtype == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def lm_loss(model, tokens, targets, device, dtype) -> torch.Tensor:
    with autocast(device, dtype):
        logits, _ = model(tokens.to(device))
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.to(device).reshape(-1))


@torch.no_grad()
def validation_loss(model, val, args, device) -> float:
    """Mean loss over fixed windows of the held-out stream (the same windows every time)."""
    gen = torch.Generator().manual_seed(1234)
    model.eval()
    losses = [lm_loss(model, *random_windows(val, args.seq_len, args.batch, gen), device, args.dtype).item()
              for _ in range(args.val_batches)]
    model.train()
    return sum(losses) / len(losses)


def train(model, optimizer, train_stream, val_stream, args, device, start_step: int, save) -> dict:
    """Steps `start_step .. args.steps - 1`; logs every `args.log_every` steps to stdout and
    `out_dir/log.jsonl`; `save(step)` writes a checkpoint every `args.save_every` steps and at the end."""
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(args.seed + start_step)       # a resumed run draws new windows
    lr_at = cosine(args.lr, args.steps, args.warmup)
    log_path = os.path.join(args.out_dir, "log.jsonl")
    os.makedirs(args.out_dir, exist_ok=True)
    recent, tokens, seconds, last = [], 0, 0.0, {}
    model.train()
    bar = tqdm(range(start_step, args.steps), desc="train", unit="step", file=sys.stderr,
               disable=args.no_progress, dynamic_ncols=True)
    for step in bar:
        x, y = random_windows(train_stream, args.seq_len, args.batch, gen)
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss = lm_loss(model, x, y, device, args.dtype)
        optimizer.zero_grad(set_to_none=True)
        if torch.isfinite(loss):                                      # never step on a non-finite loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        tokens += x.numel()
        recent.append(loss.item())
        done = step + 1
        if done % args.log_every == 0 or done == args.steps:
            last = {"step": done, "loss": sum(recent) / len(recent), "val_loss": validation_loss(model, val_stream, args, device),
                    "tokens_per_s": tokens / max(seconds, 1e-9), "lr": lr_at(step)}
            last["val_ppl"] = math.exp(min(last["val_loss"], 50.0))
            with open(log_path, "a") as f:
                f.write(json.dumps(last) + "\n")
            bar.write(f"step {done}: loss {last['loss']:.4f}, val loss {last['val_loss']:.4f}, "
                      f"{last['tokens_per_s']:.0f} tokens/s, lr {last['lr']:.2e}")
            recent = []
        if done % args.save_every == 0 or done == args.steps:
            save(done)
    bar.close()
    return last
