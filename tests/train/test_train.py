"""`nested-kernels train` on a tiny local text: the loss falls, checkpoints resume, bad input is named."""
import json

import pytest

from nested_kernels.cli import main

TEXT = "the quick brown fox jumps over the lazy dog. " * 120


def _args(text_file, out_dir, *extra):
    return ["train", "--text", str(text_file), "--out-dir", str(out_dir), "--d-model", "16", "--layers", "1",
            "--heads", "2", "--batch", "4", "--seq-len", "32", "--warmup", "2", "--lr", "1e-2",
            "--val-batches", "2", "--no-progress", *extra]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def _log(out_dir):
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]


def test_loss_falls_and_resumes(corpus, tmp_path):
    out = tmp_path / "run"
    assert main(_args(corpus, out, "--steps", "30", "--log-every", "10", "--save-every", "30")) == 0
    log = _log(out)
    assert [r["step"] for r in log] == [10, 20, 30]
    assert log[-1]["val_loss"] < 0.8 * log[0]["val_loss"], log          # bytes of a repeated sentence
    assert all(r["tokens_per_s"] > 0 for r in log)
    assert main(_args(corpus, out, "--steps", "40", "--log-every", "10", "--resume")) == 0
    assert [r["step"] for r in _log(out)] == [10, 20, 30, 40]


def test_bf16_autocast(corpus, tmp_path):
    assert main(_args(corpus, tmp_path / "bf16", "--steps", "2", "--log-every", "2", "--dtype", "bf16")) == 0


def test_resume_refuses_another_model(corpus, tmp_path):
    out = tmp_path / "run"
    assert main(_args(corpus, out, "--steps", "1", "--log-every", "1")) == 0
    with pytest.raises(ValueError, match="d_model: checkpoint 16, now 32"):
        main(_args(corpus, out, "--steps", "2", "--resume", "--d-model", "32"))


@pytest.mark.parametrize("extra,match", [
    (["--text", "/nonexistent.txt"], "--text: expected a local text file"),
    (["--dataset", "/nonexistent"], "exactly one of --text"),
    (["--tokenizer", "/nonexistent.json"], "--tokenizer: expected 'bytes'"),
    (["--heads", "3"], "--heads: must divide --d-model 16, got 3"),
    (["--seq-len", "4000"], "--seq-len 4000 needs at least 8002"),
    (["--resume"], "--resume: no checkpoint.pt"),
], ids=["missing-text", "text-and-dataset", "tokenizer", "heads", "seq-len", "resume"])
def test_bad_input(corpus, tmp_path, extra, match):
    with pytest.raises(ValueError, match=match):
        main(_args(corpus, tmp_path / "bad", "--steps", "1", *extra))
