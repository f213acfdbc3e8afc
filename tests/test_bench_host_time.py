"""`benchmarks/host_time.py` runs on the CPU: every row timed with the Triton launches stubbed, and the
kernels each call would launch listed."""
import json

import pytest

from tests.helpers import benchmark_script

pytest.importorskip("triton")


def test_host_time_rows(tmp_path):
    host_time = benchmark_script("host_time")
    assert host_time.main(["--calls", "1", "--repeats", "1", "--out-dir", str(tmp_path), "--tag", "t"]) == 0
    rows = json.loads((tmp_path / "host-time-t.json").read_text())["rows"]
    assert [(r["mode"], r["dgd"]) for r in rows] == [("fwd", False), ("fwd", True), ("fwd+bwd", False),
                                                    ("fwd+bwd", True)]
    assert all(r["us_per_call"] > 0 for r in rows)
    launches = {(r["mode"], r["dgd"]): r["launches_per_call"] for r in rows}
    assert launches[("fwd", False)] == 3 and launches[("fwd+bwd", True)] > launches[("fwd+bwd", False)] > 3
    assert "dgd_inverse_kernel" in rows[1]["kernels"] and "dgd_inverse_kernel" not in rows[0]["kernels"]


def test_host_time_refuses_no_calls():
    with pytest.raises(SystemExit):
        benchmark_script("host_time").main(["--calls", "0"])
