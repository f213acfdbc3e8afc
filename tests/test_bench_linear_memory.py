"""`benchmarks/bench_linear_memory.py`: its CPU mode runs end to end and writes its table, and its
FLOP / byte / roofline formulas give the hand-computed counts of tiny cases."""
import argparse
import importlib
import json
import subprocess
import sys

import pytest
import torch

from tests.helpers import BENCHMARKS, benchmark_script


@pytest.fixture(scope="module")
def bench():
    return benchmark_script("bench_linear_memory")


def test_bench_cpu_mode(bench, tmp_path):
    code = bench.main(["--device", "cpu", "--out-dir", str(tmp_path), "--tag", "test", "--shapes", "small",
                       "--cpu-min-runs", "1", "--cpu-budget-s", "0", "--cpu-max-row-s", "0"])
    assert code == 0
    md = (tmp_path / "linear_memory-test.md").read_text()
    data = json.loads((tmp_path / "linear_memory-test.json").read_text())
    assert "not measured (no CUDA device)" in md
    assert "roofline peaks: 989 TFLOP/s, 3.35 TB/s (H100 SXM datasheet: no GPU here)" in md
    assert data["complete"] and data["meta"]["gpu"] is None
    gpu_rows = [r for r in data["rows"] if r["device"] == "cuda"]
    # small = 2 shapes × 2 modes × (2 variants × (kernel tiers + torch) + fla + sdpa)
    tiers = [b for b in ("triton", "cuda") if b in importlib.import_module("nested_kernels.linear_memory").BACKENDS.implemented()]
    assert len(gpu_rows) == 2 * 2 * (2 * (len(tiers) + 1) + 2)
    assert all(r["status"] == "not measured (no CUDA device)" and r["ms"] is None for r in gpu_rows)
    assert {r["shape"] for r in gpu_rows} == {"B8-T2048-H16-D64", "B4-T4096-H16-D128"}
    cpu_rows = [r for r in data["rows"] if r["device"] == "cpu"]
    torch_rows = [r for r in cpu_rows if r["backend"] == "torch"]
    assert {(r["variant"], r["mode"]) for r in torch_rows} == {(v, m) for v in ("nodgd", "dgd") for m in ("fwd", "fwdbwd")}
    assert all(r["status"] == "ok" and r["ms"] > 0 and r["tokens_per_s"] > 0 for r in torch_rows)
    assert all(r["shape"] == "B1-T512-H4-D64" for r in cpu_rows)
    # the cpp tier is forward-only: a fwd row per variant (timed, or saying why it is not available)
    assert {(r["variant"], r["mode"]) for r in cpu_rows if r["backend"] == "cpp"} == {("nodgd", "fwd"), ("dgd", "fwd")}


def test_bench_variants(bench, tmp_path):
    """--variants dgd --chunk 32: only DGD rows of the kernel tiers (the peers have no variant), at chunk 32."""
    code = bench.main(["--device", "cpu", "--out-dir", str(tmp_path), "--tag", "v", "--shapes", "small",
                       "--modes", "fwd", "--variants", "dgd", "--chunk", "32", "--cpu-min-runs", "1", "--cpu-budget-s", "0",
                       "--cpu-max-row-s", "0"])
    assert code == 0
    rows = json.loads((tmp_path / "linear_memory-v.json").read_text())["rows"]
    assert {r["variant"] for r in rows if r["backend"] in ("triton", "torch", "cpp")} == {"dgd"}
    assert json.loads((tmp_path / "linear_memory-v.json").read_text())["meta"]["chunk_size"] == 32
    with pytest.raises(SystemExit):
        bench.main(["--variants", "wy"])


def test_bench_variants_without_momentum(bench, tmp_path):
    """--variants dgd-nomom: rows without the momentum state, counted without it, and the call and the
    correctness gate run without a momentum input."""
    code = bench.main(["--device", "cpu", "--out-dir", str(tmp_path), "--tag", "nm", "--shapes", "small",
                       "--modes", "fwd", "--variants", "dgd-nomom", "--cpu-min-runs", "1", "--cpu-budget-s", "0",
                       "--cpu-max-row-s", "0"])
    assert code == 0
    rows = json.loads((tmp_path / "linear_memory-nm.json").read_text())["rows"]
    assert {r["variant"] for r in rows if r["backend"] in ("triton", "torch", "cpp")} == {"dgd-nomom"}
    (row,) = [r for r in rows if r["device"] == "cuda" and r["backend"] == "torch" and r["shape"] == "B8-T2048-H16-D64"]
    counts = dict(chunk_size=64, dgd=True, momentum=False, mode="fwd")
    assert row["flops"] == bench.linear_memory_flops(8, 2048, 16, 64, 64, **counts) < \
        bench.linear_memory_flops(8, 2048, 16, 64, 64, **{**counts, "momentum": True})
    assert row["bytes"] == bench.linear_memory_bytes(8, 2048, 16, 64, 64, momentum=False, mode="fwd")

    from linear_memory_bench.callables import linear_memory_callable, make_inputs
    from linear_memory_bench.gate import correctness_gate
    from linear_memory_bench.settings import BenchShape, Variant
    from nested_kernels import linear_memory

    shape = BenchShape(1, 40, 2, 16)
    x = make_inputs(shape, device="cpu", dtype=torch.float32)
    fn, _ = linear_memory_callable(x, "torch", True, "fwd", momentum=False)
    kw = dict(dgd=True, chunk_size=64, scale=0.25, backend="torch")
    assert torch.equal(fn(), linear_memory(x.q, x.k, x.v, x.lr, x.retention, None, **kw)[0])
    assert not torch.equal(fn(), linear_memory(x.q, x.k, x.v, x.lr, x.retention, x.momentum, **kw)[0])
    gate = correctness_gate(shape, "torch", Variant("dgd-nomom", True, False), ["fwdbwd"], "cpu")
    assert gate["variant"] == "dgd-nomom" and gate["passed"] == {"fwdbwd": True}
    assert "dmomentum" not in gate["ratios"]["fwdbwd"] and "dlr" in gate["ratios"]["fwdbwd"]


def test_gpu_run_writes_after_every_row(bench, monkeypatch):
    """The GPU run rewrites its files after each timed row (the H100 run of 2026-11-27 lost a shape's
    timed rows when it was stopped mid-shape); the timing and the gate are stubbed, so it runs here."""
    import linear_memory_bench.gpu_run as gpu_run
    from linear_memory_bench.rows import Run
    from linear_memory_bench.settings import SHAPES

    timed, written = [], []

    def fake_time_row(row, make, args, *, max_call_s):
        row.ms = 1.0
        timed.append(row)

    monkeypatch.setattr(gpu_run, "_time_row", fake_time_row)
    monkeypatch.setattr(gpu_run, "correctness_gate", lambda shape, tier, variant, modes, device: {
        "passed": {m: True for m in modes}, "errors": {}})
    monkeypatch.setattr(gpu_run, "make_inputs", lambda *a, **k: None)
    monkeypatch.setattr(gpu_run, "_fla_function", lambda: (None, "fla not installed"))
    monkeypatch.setattr(gpu_run, "_release", lambda: None)
    run = Run({})
    args = argparse.Namespace(budget_s=None, keep_fla_hopper_guard=True, torch_max_call_s=60.0)
    gpu_run.run_gpu(run, SHAPES[:1], ["fwd", "fwdbwd"], args, lambda: written.append(len(run.rows)), device="cpu")
    assert len(timed) > 2
    # one write per timed row, taken with that row already in the run, and one at the end of the shape
    assert written[:-1] == [run.rows.index(row) + 1 for row in timed] and written[-1] == len(run.rows)


def test_isolate_triton_cpu(tmp_path):
    """benchmarks/isolate_triton.py runs its first configurations (interpreted here) and writes both files."""
    pytest.importorskip("triton")
    script = BENCHMARKS / "isolate_triton.py"
    proc = subprocess.run([sys.executable, str(script), "--device", "cpu", "--limit", "2", "--workers", "2",
                           "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads((tmp_path / "isolate-triton.json").read_text())
    assert [r["config"]["dtype"] for r in rows] == ["fp32", "bf16"] and all(r["passed"] for r in rows)
    assert set(rows[0]["errors"]) >= {"o", "h_T", "dq", "dk", "dv", "dlr", "dretention", "dh0"}
    assert "| yes |" in (tmp_path / "isolate-triton.md").read_text()


def test_isolate_triton_dtypes(tmp_path):
    """`--dtypes` keeps the rows of those dtypes alone, in the same order; an unknown one is refused."""
    pytest.importorskip("triton")
    script = BENCHMARKS / "isolate_triton.py"
    run = lambda *extra: subprocess.run([sys.executable, str(script), "--device", "cpu", "--workers", "1",
                                         "--out-dir", str(tmp_path), *extra], capture_output=True, text=True,
                                        timeout=300)
    proc = run("--dtypes", "bf16", "--limit", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads((tmp_path / "isolate-triton.json").read_text())
    assert [r["config"]["dtype"] for r in rows] == ["bf16"] and rows[0]["config"]["K"] == 64
    proc = run("--dtypes", "bf16,fp8")
    assert proc.returncode == 2 and "--dtypes: expected a comma-separated list" in proc.stderr


def test_profile_cpu(tmp_path):
    """benchmarks/profile_linear_memory.py runs on a CPU (operators, not kernels) and writes its table."""
    script = BENCHMARKS / "profile_linear_memory.py"
    proc = subprocess.run([sys.executable, str(script), "--out-dir", str(tmp_path), "--backends", "torch",
                           "--calls", "1", "--shapes", "B1-T128-H2-D16,B1-T64-H1-D32", "--chunks", "16,32"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    md = (tmp_path / "profile-linear_memory.md").read_text()
    for shape in ("B1-T128-H2-D16", "B1-T64-H1-D32"):
        assert md.count(f"### {shape} chunk 16 torch") == 4 and md.count(f"### {shape} chunk 32 torch") == 4
    assert "failed" not in md
    assert "| `aten::" in md
    assert md.count("synchronising operations: not checked (no CUDA)") == 16
    assert md.count("Python self time under cProfile") == 16 and "(nested_kernels/linear_memory/" in md


# Tiny cases by hand. Units per chunk of c tokens: [ckv] = 2·c·K·V, [cck] = c²·K, [ccv] = c²·V.
# K = 3, V = 5; c = 2: [ckv] = 60, [cck] = 12, [ccv] = 20;  c = 1: [ckv] = 30, [cck] = 3, [ccv] = 5.


def test_linear_memory_chunk_flops(bench):
    f = bench.linear_memory_chunk_flops
    # forward, momentum, no dgd: 5 [ckv] + 1 [cck] + 1 [ccv] = 300 + 12 + 20
    assert f(2, 3, 5, momentum=True, dgd=False, backward=False) == 332
    # forward, no momentum, no dgd: 3 [ckv] + 1 [cck] + 1 [ccv] = 180 + 12 + 20
    assert f(2, 3, 5, momentum=False, dgd=False, backward=False) == 212
    # forward, momentum, dgd: 6 [ckv] + 2 [cck] + 4 [ccv] = 360 + 24 + 80
    assert f(2, 3, 5, momentum=True, dgd=True, backward=False) == 464
    # forward, no momentum, dgd: 3 [ckv] + 2 [cck] + 4 [ccv] = 180 + 24 + 80 (E_r⊙W joins G_r⊙R)
    assert f(2, 3, 5, momentum=False, dgd=True, backward=False) == 284
    # backward, momentum, no dgd: 10 [ckv] + 3 [cck] + 2 [ccv] = 600 + 36 + 40
    assert f(2, 3, 5, momentum=True, dgd=False, backward=True) == 676
    # backward, momentum, dgd: 12 [ckv] + 5 [cck] + 8 [ccv] = 720 + 60 + 160
    assert f(2, 3, 5, momentum=True, dgd=True, backward=True) == 940
    # backward, no momentum, dgd: 6 [ckv] + 5 [cck] + 8 [ccv] = 360 + 60 + 160
    assert f(2, 3, 5, momentum=False, dgd=True, backward=True) == 580


def test_linear_memory_flops_chunks_and_modes(bench):
    f = bench.linear_memory_flops
    # one full chunk, B = H = 1
    assert f(1, 2, 1, 3, 5, chunk_size=2, momentum=True, dgd=False, mode="fwd") == 332
    # T = 3, C = 2: a full chunk (332) and a 1-token chunk: 5·30 + 3 + 5 = 158
    assert f(1, 3, 1, 3, 5, chunk_size=2, momentum=True, dgd=False, mode="fwd") == 490
    # B = 2, H = 3 scale it by 6; fwd+bwd adds the backward (676)
    assert f(2, 2, 3, 3, 5, chunk_size=2, momentum=True, dgd=False, mode="fwd") == 6 * 332
    assert f(1, 2, 1, 3, 5, chunk_size=2, momentum=True, dgd=False, mode="fwdbwd") == 332 + 676
    assert f(1, 2, 1, 3, 5, chunk_size=2, momentum=True, dgd=False, mode="fwd+bwd") == 332 + 676
    with pytest.raises(ValueError, match="mode"):
        f(1, 2, 1, 3, 5, mode="bwd")


def test_linear_memory_bytes(bench):
    b = bench.linear_memory_bytes
    # B = 1, T = 2, H = 1, K = 3, V = 5, momentum:
    # q, k, v: 2 tokens × (3 + 3 + 5) × 2 B = 44; gates: 2 × 3 × 4 B = 24; o: 2 × 5 × 2 B = 20;
    # final memory and momentum: 2 × 3 × 5 × 4 B = 120
    assert b(1, 2, 1, 3, 5, momentum=True, mode="fwd") == 208
    assert b(1, 2, 1, 3, 5, momentum=True, mode="fwd", final_state=False) == 88
    # no momentum: gates 2 × 2 × 4 = 16, one state 60
    assert b(1, 2, 1, 3, 5, momentum=False, mode="fwd") == 44 + 16 + 20 + 60
    # backward: q, k, v, do 2 × 16 × 2 = 64, gates 24; dq, dk, dv 44, d gates 24
    assert b(1, 2, 1, 3, 5, momentum=True, mode="fwdbwd") == 208 + 64 + 24 + 44 + 24


def test_sdpa_counts(bench):
    # B = 1, T = 4, H = 2, D = 8: causal forward 4 · 1 · 2 · 16 · 8 / 2 = 512; fwd+bwd 3.5 ×
    assert bench.sdpa_flops(1, 4, 2, 8, mode="fwd") == 512
    assert bench.sdpa_flops(1, 4, 2, 8, mode="fwdbwd") == 1792
    # 4 tensors of 1 · 4 · 2 · 8 bf16 values (128 B) forward, 12 forward + backward
    assert bench.sdpa_bytes(1, 4, 2, 8, mode="fwd") == 512
    assert bench.sdpa_bytes(1, 4, 2, 8, mode="fwdbwd") == 1536


def test_roofline_fraction(bench):
    # compute-bound: 800 GFLOP at 800 TFLOP/s is 1 ms; measured 2 ms -> 0.5
    assert bench.roofline_fraction(800e9, 1e6, 2.0, peak_tflops=800, peak_tbps=3) == pytest.approx(0.5)
    # memory-bound: 3 GB at 3 TB/s is 1 ms; measured 4 ms -> 0.25
    assert bench.roofline_fraction(1e9, 3e9, 4.0, peak_tflops=800, peak_tbps=3) == pytest.approx(0.25)
    # the defaults: H100 SXM's datasheet, 989 TFLOP/s and 3.35 TB/s
    assert bench.roofline_fraction(989e9, 1e6, 1.0) == pytest.approx(1.0)
    assert bench.roofline_fraction(1e6, 3.35e9, 2.0) == pytest.approx(0.5)


@pytest.mark.parametrize("name,tflops,tbps", [
    ("NVIDIA H200", 989, 4.8), ("NVIDIA H100 80GB HBM3", 989, 3.35), ("NVIDIA H100 PCIe", 756, 2.0),
    ("NVIDIA A100-SXM4-80GB", 312, 2.0), ("NVIDIA L4", 989, 3.35), (None, 989, 3.35)],
    ids=["h200", "h100-sxm", "h100-pcie", "a100", "unknown", "cpu"])
def test_peaks_by_card(name, tflops, tbps):
    """The roofline's peaks follow the card (gpu_check passed the H200's bandwidth by hand, nothing else
    did); given ones win, each on its own."""
    from linear_memory_bench.settings import card_peaks, resolve_peaks

    assert card_peaks(name)[:2] == (tflops, tbps)
    args = argparse.Namespace(peak_tflops=None, peak_tbps=None)
    assert resolve_peaks(args, name) == card_peaks(name)[2] and (args.peak_tflops, args.peak_tbps) == (tflops, tbps)
    args = argparse.Namespace(peak_tflops=500.0, peak_tbps=None)
    assert resolve_peaks(args, name).startswith("given, the rest from") and (args.peak_tflops, args.peak_tbps) == (
        500.0, tbps)


def test_percentiles(bench):
    assert bench._percentiles([4.0, 1.0, 3.0, 2.0, 5.0]) == pytest.approx([3.0, 1.8, 4.2])
    assert bench._percentiles([7.0]) == [7.0, 7.0, 7.0]


@pytest.mark.parametrize("hopper,triton_3_4,triton_3_7_1,lifted", [
    (True, True, False, True), (True, True, True, False), (False, True, False, False), (True, False, False, False)],
    ids=["hopper-triton3.6", "hopper-triton3.7.1", "ampere", "hopper-triton3.3"])
def test_lift_fla_hopper_guard(bench, monkeypatch, hopper, triton_3_4, triton_3_7_1, lifted):
    """fla's refusal of its gated backward (Hopper, Triton 3.4 to 3.7.0) is lifted for timing where
    it is in force, and only there."""
    import types

    from linear_memory_bench.callables import lift_fla_hopper_guard

    chunk_o = types.ModuleType("fla.ops.common.chunk_o")
    chunk_o.IS_NVIDIA_HOPPER, chunk_o.TRITON_ABOVE_3_4_0, chunk_o.TRITON_ABOVE_3_7_1 = hopper, triton_3_4, triton_3_7_1
    common = types.ModuleType("fla.ops.common")
    common.chunk_o = chunk_o
    for name, module in (("fla", types.ModuleType("fla")), ("fla.ops", types.ModuleType("fla.ops")),
                         ("fla.ops.common", common), ("fla.ops.common.chunk_o", chunk_o)):
        monkeypatch.setitem(sys.modules, name, module)
    assert lift_fla_hopper_guard() is lifted
    assert chunk_o.TRITON_ABOVE_3_7_1 is (triton_3_7_1 or lifted)


def test_lift_fla_hopper_guard_without_fla(bench, monkeypatch):
    """Without fla there is no guard to lift."""
    monkeypatch.setitem(sys.modules, "fla", None)                             # import fails
    from linear_memory_bench.callables import lift_fla_hopper_guard

    assert lift_fla_hopper_guard() is False
