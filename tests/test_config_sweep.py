"""benchmarks/config_sweep.py: the candidates around a shipped configuration, the grid of a new
value tile, and a dry run on the CPU that records every kernel of a forward and backward."""
import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("triton")
SWEEP = Path(__file__).resolve().parents[1] / "benchmarks" / "config_sweep.py"


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("config_sweep", SWEEP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_kernel(name):
    calls = []

    class Kernel:
        __name__ = name

        def __getitem__(self, grid):
            return lambda *args, **kwargs: calls.append((grid, args, kwargs))

    return Kernel(), calls


@pytest.mark.parametrize("V,expected_tiles", [(64, {16, 32, 64}), (32, {16, 32}), (40, {16, 32, 64})],
                         ids=["V64", "V32", "V40"])
def test_candidates_around_the_shipped_config(sweep, V, expected_tiles):
    kernel, _ = _fake_kernel("linear_memory_bwd_kernel_dq")
    launch = sweep.Launch(kernel, (4, 1, 2), (), dict(V=V, BV=32, num_warps=8, num_stages=1))
    configs = sweep.candidate_configs(launch)
    assert configs[0] == dict(BV=32, num_warps=8, num_stages=1)            # the shipped one first
    assert len({tuple(sorted(c.items())) for c in configs}) == len(configs)
    assert {c["BV"] for c in configs} == expected_tiles
    assert {c["num_warps"] for c in configs} == {4, 8, 16} and {c["num_stages"] for c in configs} == {1, 2}


def test_candidates_without_value_tile(sweep):
    kernel, _ = _fake_kernel("chunk_gates_fwd_kernel")
    configs = sweep.candidate_configs(sweep.Launch(kernel, (6,), (), dict(C=64, num_warps=1)))
    assert configs[0] == dict(num_warps=1, num_stages=3)                    # Triton's default stages
    assert all("BV" not in c for c in configs) and {c["num_warps"] for c in configs} == {1, 2}


@pytest.mark.parametrize("name,grid", [("linear_memory_fwd_kernel_h", (8, 4)), ("linear_memory_bwd_kernel_dq", (5, 1, 2))],
                         ids=["v-tiled-grid", "v-loop-grid"])
def test_relaunch_regrids_value_tiles(sweep, name, grid):
    kernel, calls = _fake_kernel(name)
    launch = sweep.Launch(kernel, grid, ("a",), dict(V=64, BV=16, num_warps=4, num_stages=1))
    sweep.relaunch(launch, dict(BV=64, num_warps=8, num_stages=2))()
    (new_grid, args, kwargs), = calls
    assert new_grid == ((8, 1) if name.endswith("fwd_kernel_h") else grid)
    assert args == ("a",) and kwargs == dict(V=64, BV=64, num_warps=8, num_stages=2)


def test_dry_run_records_every_kernel(sweep, tmp_path):
    assert sweep.main(["--dry-run", "--shape", "B1-T40-H2-D32", "--chunk", "16", "--out-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "config-sweep.json").read_text())
    kernels = set(data["kernels"])
    assert {"chunk_gates_fwd_kernel", "chunk_gates_bwd_kernel", "dgd_inverse_kernel", "linear_memory_fwd_kernel_h",
            "linear_memory_fwd_kernel_o", "linear_memory_bwd_kernel_dh", "linear_memory_bwd_kernel_dq",
            "linear_memory_bwd_kernel_dk", "linear_memory_bwd_kernel_dk_dgd",
            "linear_memory_bwd_kernel_dgd_inv"} <= kernels
    assert all(c["ms"] is None for cs in data["kernels"].values() for c in cs)   # nothing timed on a CPU
    assert "not measured" in (tmp_path / "config-sweep.md").read_text()
