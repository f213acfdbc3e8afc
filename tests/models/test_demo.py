"""`nested-kernels demo`: the MQAR generator, a short training run whose loss falls, the CLI end to end."""
import time

import torch

from nested_kernels import cli
from nested_kernels.demo import IGNORE, MQARTask, evaluate, make_hope, mqar_batch, train_steps


def test_mqar_is_deterministic_and_right():
    task = MQARTask(n_keys=12, n_values=5, n_pairs=6, n_queries=4, key_offset=3, value_offset=20)
    a = mqar_batch(task, 9, torch.Generator().manual_seed(7))
    b = mqar_batch(task, 9, torch.Generator().manual_seed(7))
    c = mqar_batch(task, 9, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    tokens, targets = a
    n, m = task.n_pairs, task.n_queries
    assert tokens.shape == targets.shape == (9, task.seq_len) == (9, 2 * (n + m))
    for row, tgt in zip(tokens.tolist(), targets.tolist()):
        keys, values = row[0:2 * n:2], row[1:2 * n:2]
        assert len(set(keys)) == n and all(3 <= k < 15 for k in keys)
        assert all(20 <= v < 25 for v in values)
        pairs = dict(zip(keys, values))
        queried = []
        for i in range(m):
            pos = 2 * n + 2 * i
            q, a_tok = row[pos], row[pos + 1]
            assert a_tok == pairs[q] == tgt[pos]            # the answer is the value paired with the key
            queried.append(q)
        assert len(set(queried)) == m
        answer_positions = {2 * n + 2 * i for i in range(m)}
        assert all(t == IGNORE for j, t in enumerate(tgt) if j not in answer_positions)


def test_short_training_run_loss_falls():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        task = MQARTask(n_keys=8, n_values=8, n_pairs=4, n_queries=4, key_offset=0, value_offset=8)
        torch.manual_seed(0)
        model = make_hope(task.vocab_end, d_model=32, layers=2, heads=2)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        start = time.perf_counter()
        log = train_steps(model, opt, task, 60, 16, torch.Generator().manual_seed(0))
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    losses = log["losses"]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert all(torch.isfinite(torch.tensor(losses))) and log["skipped"] == 0
    assert last < 0.8 * first, f"loss did not fall: first 5 {first:.3f}, last 5 {last:.3f}"
    assert 0.0 <= evaluate(model, task, 32, seed=1) <= 1.0
    print(f"60 steps in {elapsed:.1f} s, loss {first:.3f} -> {last:.3f}")


def test_cli_demo_quick(capsys, tmp_path):
    assert cli.main(["demo", "--quick", "--no-progress", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "held-out accuracy" in line]
    assert len(lines) == 2 and lines[0].startswith("HOPE") and lines[1].startswith("Transformer")
    assert all("tokens/s" in line for line in lines)


def test_cli_demo_continual_writes_plot(capsys, tmp_path):
    assert cli.main(["demo", "--continual", "--quick", "--steps", "4", "--tasks", "2", "--no-progress",
                     "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "HOPE: forgetting" in out and "Transformer: forgetting" in out
    assert (tmp_path / "continual_accuracy.png").exists() or "matplotlib is not installed" in out
