"""`nested-kernels train`: train a HOPE language model on real text.

    nested-kernels train --text corpus.txt --out-dir run1 [--tokenizer bytes|tokenizer.json|folder]
    nested-kernels train --dataset ./wikitext_saved --text-column text --out-dir run1 --dtype bf16
    nested-kernels train ... --resume          # continue from run1/checkpoint.pt

The text is a local file or a Hugging Face dataset saved with `save_to_disk` (needs `datasets`);
the tokenizer is UTF-8 bytes (default, no dependency), a `tokenizer.json` (needs `tokenizers`) or a
local tokenizer folder (needs `transformers`). Nothing is downloaded. Logs go to stdout and
`out_dir/log.jsonl`; the checkpoint is `out_dir/checkpoint.pt`.
"""
import argparse

import torch

from . import checkpoint
from .data import load_tokenizer, read_texts, split_stream, token_stream
from .loop import train

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    source = parser.add_argument_group("data")
    source.add_argument("--text", help="a local UTF-8 text file")
    source.add_argument("--dataset", help="a dataset folder written by datasets' save_to_disk")
    source.add_argument("--text-column", default="text", help="the dataset's text column (default: text)")
    source.add_argument("--split", default="train", help="the dataset split (default: train)")
    source.add_argument("--tokenizer", default="bytes", help="bytes (default), a tokenizer.json or a local folder")
    source.add_argument("--val-fraction", type=float, default=0.05, help="held-out tail of the text (default 0.05)")
    model = parser.add_argument_group("model (HopeConfig)")
    model.add_argument("--d-model", type=int, default=128)
    model.add_argument("--layers", type=int, default=2)
    model.add_argument("--heads", type=int, default=2)
    model.add_argument("--backend", default="auto", help="op backend: auto, torch, triton, ... (default auto)")
    run_ = parser.add_argument_group("training")
    run_.add_argument("--steps", type=int, default=1000)
    run_.add_argument("--batch", type=int, default=16)
    run_.add_argument("--seq-len", type=int, default=256)
    run_.add_argument("--lr", type=float, default=1e-3)
    run_.add_argument("--warmup", type=int, default=50)
    run_.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip (default 1.0)")
    run_.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast (default fp32)")
    run_.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    run_.add_argument("--seed", type=int, default=0)
    run_.add_argument("--out-dir", default="nested_kernels_train")
    run_.add_argument("--log-every", type=int, default=50)
    run_.add_argument("--val-batches", type=int, default=4)
    run_.add_argument("--save-every", type=int, default=500)
    run_.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoint.pt")
    run_.add_argument("--no-progress", action="store_true")
    return parser


def model_config(args, vocab: int) -> dict:
    head_dim = args.d_model // args.heads
    if head_dim * args.heads != args.d_model:
        raise ValueError(f"--heads: must divide --d-model {args.d_model}, got {args.heads}")
    return dict(vocab=vocab, d_model=args.d_model, layers=args.layers, heads=args.heads, head_dim=head_dim,
                mem_hidden=head_dim, backend=args.backend)


def run(args: argparse.Namespace) -> int:
    from ..models import HopeConfig, HopeLM

    torch.manual_seed(args.seed)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokenizer = load_tokenizer(args.tokenizer)
    stream = token_stream(read_texts(args.text, args.dataset, args.text_column, args.split), tokenizer)
    train_stream, val_stream = split_stream(stream, args.seq_len, args.val_fraction)
    config = model_config(args, tokenizer.vocab)
    model = HopeLM(HopeConfig(**config)).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.95))
    start = 0
    saved = checkpoint.load(args.out_dir) if args.resume else None
    if args.resume and saved is None:
        raise ValueError(f"--resume: no {checkpoint.FILE} in {args.out_dir!r}")
    if saved is not None:
        checkpoint.check_compatible(saved, config, tokenizer.name)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        start = saved["step"]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"nested-kernels train: {stream.numel()} tokens ({tokenizer.name}, vocab {tokenizer.vocab}), "
          f"HOPE {n_params / 1e6:.2f}M parameters on {device}, {args.dtype}, steps {start}..{args.steps}")
    save = lambda step: checkpoint.save(args.out_dir, model, optimizer, step, config, tokenizer.name)
    last = train(model, optimizer, train_stream, val_stream, args, device, start, save)
    if last:
        print(f"final: loss {last['loss']:.4f}, val loss {last['val_loss']:.4f}, {last['tokens_per_s']:.0f} tokens/s; "
              f"checkpoint {args.out_dir}/{checkpoint.FILE}")
    return 0
