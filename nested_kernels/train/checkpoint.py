"""Checkpoints of `nested-kernels train`: model, optimizer, step and the model's configuration in
one file, written atomically (a crash mid-write leaves the previous checkpoint intact)."""
import os
from typing import Optional

import torch

FILE = "checkpoint.pt"


def save(out_dir: str, model, optimizer, step: int, config: dict, tokenizer: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, FILE)
    tmp = path + ".tmp"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "config": config, "tokenizer": tokenizer}, tmp)
    os.replace(tmp, path)
    return path


def load(out_dir: str) -> Optional[dict]:
    """The checkpoint in `out_dir`, or None when there is none."""
    path = os.path.join(out_dir, FILE)
    if not os.path.isfile(path):
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def check_compatible(saved: dict, config: dict, tokenizer: str) -> None:
    """A resumed run must build the same model on the same tokens."""
    if saved["tokenizer"] != tokenizer:
        raise ValueError(f"--resume: the checkpoint was trained with tokenizer {saved['tokenizer']!r}, "
                         f"this run uses {tokenizer!r}")
    changed = {k: (saved["config"].get(k), v) for k, v in config.items() if saved["config"].get(k) != v}
    if changed:
        detail = ", ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in sorted(changed.items()))
        raise ValueError(f"--resume: the model configuration differs from the checkpoint's ({detail})")
