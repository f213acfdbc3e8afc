"""`benchmarks/bench_mlp_memory.py`: its CPU mode runs end to end and writes its table, its timed
callables and correctness gate run (interpreted here), and its FLOP count is the hand count."""
import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_mlp_memory.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_mlp_memory", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_cpu_mode(bench, tmp_path):
    assert bench.main(["--device", "cpu", "--shapes", "small", "--cpu-runs", "1", "--out-dir", str(tmp_path),
                       "--tag", "test"]) == 0
    data = json.loads((tmp_path / "mlp_memory-test.json").read_text())
    assert "not measured (no CUDA device)" in (tmp_path / "mlp_memory-test.md").read_text()
    gpu_rows = [r for r in data["rows"] if r["device"] == "cuda"]
    assert len(gpu_rows) == 2 * 2 * 3                                       # shapes × modes × tiers
    assert all(r["status"] == "not measured (no CUDA device)" and r["ms"] is None for r in gpu_rows)
    cpu_rows = [r for r in data["rows"] if r["device"] == "cpu"]
    assert {r["mode"] for r in cpu_rows} == {"fwd", "fwdbwd"}
    assert all(r["backend"] == "torch" and r["status"] == "ok" and r["ms"] > 0 for r in cpu_rows)
    assert data["meta"]["chunk_size"] == 64 and data["meta"]["gpu"] is None


@pytest.mark.parametrize("op,backend", [("mlp_memory", "triton"), ("linear_memory", "triton")])
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_bench_callables(bench, op, backend, mode):
    """The GPU rows' callables, on a tiny shape (Triton interpreted on a CPU)."""
    import torch

    fn, leaves = bench.make_callable(op, backend, bench.BenchShape(1, 20, 1, 16), mode, 16, "cpu", torch.float32)
    fn()
    assert all(x.grad is not None for x in leaves)


def test_bench_gate(bench):
    """The correctness gate passes for the triton backend (bf16 against the fp32 torch tier)."""
    assert bench.gate(bench.BenchShape(1, 0, 1, 16), 16, True, device="cpu", T=24) is None


def test_forward_flops(bench):
    """One chunk of 16 tokens, D = 32: 2 · (13 · 16 · 32² + 7 · 16² · 32) per (sequence, head)."""
    shape = bench.BenchShape(2, 20, 3, 32)                                  # 2 chunks of 16 per sequence
    assert bench.forward_flops(shape, 16) == 2 * 3 * 2 * 2 * (13 * 16 * 32 * 32 + 7 * 16 * 16 * 32)
