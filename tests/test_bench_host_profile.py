"""`benchmarks/host_profile.py`: the Python hotspots of a call, and its synchronising torch operations
on CUDA (the Triton tier's calls have none: a sync would leave the GPU idle while the host queues)."""
import pytest
import torch

from tests.helpers import benchmark_script


def test_python_hotspots_rank_functions():
    host_profile = benchmark_script("host_profile")
    x = torch.randn(64, 64, requires_grad=True)

    def slow_python():
        return sum(i * i for i in range(20000))

    lines = host_profile.python_hotspots(lambda: (slow_python(), (x @ x).sum().backward()), [x], calls=2, top=5)
    assert lines[0].startswith("Python self time under cProfile")
    rows = [row.split("|")[1:5] for row in lines[4:]]                 # function, calls, self ms, cumulative ms
    assert len(rows) == 5
    self_ms = [float(row[2]) for row in rows]
    assert self_ms == sorted(self_ms, reverse=True)
    (generator,) = [row for row in rows if "<genexpr> (tests/test_bench_host_profile.py:" in row[0]]
    assert generator[1].strip() == "20001"                              # calls per call: the generator's steps
    assert x.grad is not None


def test_synchronising_ops_none_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine: the GPU test checks it")
    assert benchmark_script("host_profile").synchronising_ops(lambda: None, []) is None


@pytest.mark.gpu
def test_synchronising_ops_found():
    host_profile = benchmark_script("host_profile")
    x = torch.ones(4, device="cuda")
    assert len(host_profile.synchronising_ops(lambda: x.sum().item(), [])) == 1
    assert host_profile.synchronising_ops(lambda: x.sum(), []) == []


@pytest.mark.gpu
@pytest.mark.parametrize("dgd", [False, True], ids=["nodgd", "dgd"])
def test_linear_memory_triton_does_not_synchronise(dgd):
    from nested_kernels.linear_memory import linear_memory

    host_profile = benchmark_script("host_profile")
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 100, 2, 32, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
               for _ in range(3))
    lr, retention, momentum = (torch.rand(2, 100, 2, device="cuda", generator=gen).requires_grad_() for _ in range(3))
    leaves = [q, k, v, lr, retention, momentum]

    def call():
        o, _ = linear_memory(*leaves, dgd=dgd, chunk_size=64, backend="triton")
        o.float().square().sum().backward()

    call()                                                              # compile first
    assert host_profile.synchronising_ops(call, leaves) == []
