"""The HOPE-layer vs Transformer-layer benchmark (SPEC §8) runs end to end on a CPU."""
import json
import os
import sys

BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def test_bench_hope_layer_cpu(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(BENCH_DIR)
    sys.modules.pop("bench_hope_layer", None)
    import bench_hope_layer
    args = ["--device", "cpu", "--T", "32", "--backend", "torch", "--out-dir", str(tmp_path), "--tag", "t"]
    assert bench_hope_layer.main(args) == 0
    rows = json.loads((tmp_path / "hope_layer-t.json").read_text())["rows"]
    assert {(r["layer"], r["mode"]) for r in rows if r["ms"]} == {
        (layer, mode) for layer in ("hope", "transformer") for mode in ("fwd", "fwdbwd")}
    assert "HOPE / Transformer = " in (tmp_path / "hope_layer-t.md").read_text()
