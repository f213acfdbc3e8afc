"""The decode benchmark runs end to end without a GPU: CPU tiers timed and gated, GPU rows marked."""
import json
import os
import sys

BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def test_bench_decode_cpu(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(BENCH_DIR)
    sys.modules.pop("bench_decode", None)
    import bench_decode
    assert bench_decode.main(["--batches", "2", "--device", "cpu", "--out-dir", str(tmp_path), "--tag", "t"]) == 0
    rows = json.loads((tmp_path / "decode-t.json").read_text())["rows"]
    by = {(r["op"], r["backend"]): r for r in rows}
    for op in ("linear_memory_step", "mlp_memory_step"):
        torch_row = by[(op, "torch")]
        assert torch_row["us"][0] > 0 and torch_row["gate_error"] == 0.0 and torch_row["bandwidth_fraction"] is None
        assert by[(op, "cuda")]["note"] == "not measured (no CUDA device)"
        cpp = by[(op, "cpp")]
        assert cpp["us"] is not None and cpp["gate_error"] <= 1e-4 or cpp["note"].startswith("not run")
    assert "| linear_memory_step | torch | 2 |" in (tmp_path / "decode-t.md").read_text()
