"""benchmarks/config_sweep.py: the candidates around a shipped configuration, the grid of a new
value tile, and a dry run on the CPU that records every kernel of a forward and backward."""
import json

import pytest

from tests.helpers import benchmark_script

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def sweep():
    return benchmark_script("config_sweep")


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


@pytest.mark.parametrize("warps,expected", [(1, {1, 2}), (8, {2, 4, 8, 16})], ids=["w1", "w8"])
def test_candidates_without_value_tile(sweep, warps, expected):
    kernel, _ = _fake_kernel("dgd_inverse_kernel")
    configs = sweep.candidate_configs(sweep.Launch(kernel, (6,), (), dict(C=64, num_warps=warps)))
    assert configs[0] == dict(num_warps=warps, num_stages=3)                # Triton's default stages
    assert all("BV" not in c for c in configs) and {c["num_warps"] for c in configs} == expected


def test_candidates_leave_out_what_broke_the_context(sweep):
    """dgd_inverse_bwd_kernel at 16 warps broke the CUDA context on an H100 (BREAKS_CONTEXT): its
    sweep around 8 warps stops at 8; the forward's still reaches 16."""
    for name, expected in (("dgd_inverse_bwd_kernel", {2, 4, 8}), ("dgd_inverse_kernel", {2, 4, 8, 16})):
        kernel, _ = _fake_kernel(name)
        configs = sweep.candidate_configs(sweep.Launch(kernel, (6,), (), dict(C=64, num_warps=8)))
        assert {c["num_warps"] for c in configs} == expected, name


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


def _sweep_of(sweep, names_ms):
    launches, sweeps = [], {}
    for name, ms in names_ms:
        kernel, _ = _fake_kernel(name)
        launch = sweep.Launch(kernel, (1,), (), dict(V=64, BV=32, num_warps=4, num_stages=1, ms=ms))
        launches.append(launch)
        sweeps[name] = [sweep.Candidate(c, shipped=i == 0) for i, c in enumerate(sweep.candidate_configs(launch))]
    return launches, sweeps


def test_sweep_order_budget_and_fault(sweep):
    """Largest shipped time first; a broken context stops the sweep; the report is written after
    the shipped pass and after every kernel."""
    launches, sweeps = _sweep_of(sweep, [("small", 1.0), ("large", 3.0), ("middle", 2.0)])
    timed, writes = [], []

    def time_one(launch, candidate):
        name = launch.kernel.__name__
        timed.append((name, candidate.shipped))
        candidate.ms = launch.kwargs["ms"] * (1.0 if candidate.shipped else 0.5)
        if name == "middle" and not candidate.shipped and len([t for t in timed if t[0] == "middle"]) == 3:
            return "CUDA context broken"
        return None

    stop = sweep.run_sweep(launches, sweeps, time_one, lambda: False, "budget", writes.append)
    assert stop == "CUDA context broken"
    assert list(sweeps) == ["large", "middle", "small"]
    assert timed[:3] == [("small", True), ("large", True), ("middle", True)]
    assert all(n == "large" for n, _ in timed[3:3 + len(sweeps["large"]) - 1])
    assert not any(n == "small" and not shipped for n, shipped in timed)   # after the fault, nothing
    assert writes[0] is None and writes[-1] == "CUDA context broken" and len(writes) == 1 + len(launches)
    md = "\n".join(sweep.report("t", sweeps, []))
    assert "| `large` | BV=32, num_warps=4, num_stages=1 | 3.0000 |" in md and "| 2.00 |" in md


def test_sweep_budget(sweep):
    launches, sweeps = _sweep_of(sweep, [("a", 1.0), ("b", 2.0)])
    calls = []
    stop = sweep.run_sweep(launches, sweeps, lambda la, c: calls.append(c) or None, lambda: len(calls) >= 4,
                           "budget spent", lambda stop: None)
    assert stop == "budget spent" and len(calls) == 4                       # 2 shipped, then 2 more candidates
    assert sum(c.shipped for c in calls) == 2
