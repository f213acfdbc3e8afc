"""`benchmarks/bench_cms.py`: its CPU mode runs end to end and writes its table, and its FLOP /
byte formulas give the hand-computed counts of a tiny case."""
import json

import pytest

from tests.helpers import benchmark_script


@pytest.fixture(scope="module")
def bench():
    return benchmark_script("bench_cms")


def test_bench_cms_cpu_mode(bench, tmp_path):
    code = bench.main(["--device", "cpu", "--out-dir", str(tmp_path), "--tag", "test", "--shapes", "small",
                       "--periods", "16,4096", "--cpu-min-runs", "1", "--cpu-budget-s", "0", "--cpu-max-row-s", "0"])
    assert code == 0
    md = (tmp_path / "cms-test.md").read_text()
    data = json.loads((tmp_path / "cms-test.json").read_text())
    assert "not measured (no CUDA device)" in md
    assert data["complete"] and data["meta"]["gpu"] is None
    gpu_rows = [r for r in data["rows"] if r["device"] == "cuda"]
    assert len(gpu_rows) == 2 * 2 * 2 * 2               # shapes × periods × modes × (triton, torch)
    assert all(r["status"] == "not measured (no CUDA device)" and r["ms"] is None and r["flops"] > 0
               for r in gpu_rows)
    assert {r["shape"] for r in gpu_rows} == {"B8-T2048-D1024-Dh4096", "B4-T4096-D2048-Dh8192"}
    cpu_rows = [r for r in data["rows"] if r["device"] == "cpu"]
    assert {(r["backend"], r["mode"]) for r in cpu_rows} == {("torch", "fwd"), ("torch", "fwdbwd")}
    assert all(r["status"] == "ok" and r["ms"] > 0 and r["tokens_per_s"] > 0 for r in cpu_rows)


def test_bench_cms_counts(bench):
    s = bench.CMSShape(B=2, T=5, D=3, Dh=4)
    assert bench.cms_flops(s, "fwd") == 10 * 2 * 5 * 3 * 4
    assert bench.cms_flops(s, "fwd+bwd") == 32 * 2 * 5 * 3 * 4
    # period 2: 3 chunks; fwd: 4 fp32 weight passes per chunk and sequence, x/target/y in bf16, lr fp32
    assert bench.cms_bytes(s, 2, "fwd") == 4 * 4 * 3 * 4 * 3 * 2 + 3 * 2 * 2 * 5 * 3 + 4 * 2 * 5
    assert bench.cms_bytes(s, 2, "fwdbwd") == 10 * 4 * 3 * 4 * 3 * 2 + 6 * 2 * 2 * 5 * 3 + 4 * 2 * 5
