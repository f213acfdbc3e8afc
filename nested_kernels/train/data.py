"""Token streams for `nested-kernels train`: a local text file or a Hugging Face dataset saved on
disk, tokenized by a local tokenizer (`tokenizers` / `transformers`, when installed) or by bytes.
Nothing is downloaded: every path must already exist."""
import os
from dataclasses import dataclass
from typing import Callable, List

import torch


@dataclass
class Tokenizer:
    name: str
    vocab: int
    encode: Callable[[str], List[int]]


def byte_tokenizer() -> Tokenizer:
    """UTF-8 bytes: vocabulary 256, no dependency."""
    return Tokenizer("bytes", 256, lambda text: list(text.encode("utf-8")))


def load_tokenizer(spec: str) -> Tokenizer:
    """`bytes`, a `tokenizer.json` file (needs `tokenizers`), or a local folder that
    `transformers.AutoTokenizer` reads (needs `transformers`; local files only)."""
    if spec == "bytes":
        return byte_tokenizer()
    if not os.path.exists(spec):
        raise ValueError(f"--tokenizer: expected 'bytes', a tokenizer.json file or a local tokenizer folder; "
                         f"{spec!r} does not exist (nothing is downloaded)")
    if os.path.isfile(spec):
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError as e:
            raise ImportError(f"--tokenizer {spec}: reading a tokenizer.json needs `pip install tokenizers`") from e
        tok = HFTokenizer.from_file(spec)
        return Tokenizer(spec, tok.get_vocab_size(), lambda text: tok.encode(text).ids)
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise ImportError(f"--tokenizer {spec}: a tokenizer folder needs `pip install transformers`") from e
    tok = AutoTokenizer.from_pretrained(spec, local_files_only=True)
    return Tokenizer(spec, len(tok), lambda text: tok(text, add_special_tokens=False)["input_ids"])


def read_texts(text_file: str = None, dataset: str = None, column: str = "text", split: str = "train") -> List[str]:
    """The documents of a text file (one document) or of a dataset saved with `save_to_disk`."""
    if (text_file is None) == (dataset is None):
        raise ValueError("give exactly one of --text (a local text file) and --dataset (a dataset folder on disk)")
    if text_file is not None:
        if not os.path.isfile(text_file):
            raise ValueError(f"--text: expected a local text file, {text_file!r} is not one")
        with open(text_file, encoding="utf-8") as f:
            return [f.read()]
    if not os.path.isdir(dataset):
        raise ValueError(f"--dataset: expected a folder written by datasets' save_to_disk, {dataset!r} is not one")
    try:
        import datasets
    except ImportError as e:
        raise ImportError("--dataset needs `pip install datasets`") from e
    data = datasets.load_from_disk(dataset)
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise ValueError(f"--split: expected one of {sorted(data)}, got {split!r}")
        data = data[split]
    if column not in data.column_names:
        raise ValueError(f"--text-column: expected one of {data.column_names}, got {column!r}")
    return list(data[column])


def token_stream(texts: List[str], tokenizer: Tokenizer) -> torch.Tensor:
    """All documents, tokenized and concatenated: a 1-D int64 tensor."""
    ids = [i for text in texts for i in tokenizer.encode(text)]
    return torch.tensor(ids, dtype=torch.long)


def split_stream(stream: torch.Tensor, seq_len: int, val_fraction: float):
    """(train, validation): the last `val_fraction` of the stream (at least one window) is held out."""
    need = 2 * (seq_len + 1)
    if stream.numel() < need:
        raise ValueError(f"the text has {stream.numel()} tokens; --seq-len {seq_len} needs at least {need}")
    n_val = max(seq_len + 1, int(stream.numel() * val_fraction))
    return stream[:-n_val], stream[-n_val:]


def random_windows(stream: torch.Tensor, seq_len: int, batch: int, generator: torch.Generator):
    """`batch` windows of `seq_len + 1` tokens at random offsets: (inputs, next-token targets)."""
    starts = torch.randint(0, stream.numel() - seq_len, (batch,), generator=generator)
    windows = torch.stack([stream[s:s + seq_len + 1] for s in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]
