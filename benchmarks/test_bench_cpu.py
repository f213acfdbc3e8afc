"""pytest-benchmark microbenchmarks of every op × backend × shape × mode in `registry.py` (CPU).

    pytest benchmarks/test_bench_cpu.py --benchmark-only                      # everything, ~1 min on 2 cores
    pytest benchmarks/test_bench_cpu.py --benchmark-only -m "not slow"        # without the reference at T ≥ 1024
    pytest benchmarks/test_bench_cpu.py --benchmark-only -k "linear_memory and fwd-"

`--benchmark-only` overrides the `--benchmark-skip` of pyproject's addopts (pytest-benchmark ≥ 4).
The default test run (`pytest` from the root, testpaths = ["tests"]) does not collect this file.
Cases are grouped by op, mode and shape, so pytest-benchmark's table compares the backends.
"""
import pytest
import torch

import registry

SLOW_T = 1024          # the reference tier at T ≥ SLOW_T takes seconds per call: marked slow


def _rounds(case: registry.Case) -> int:
    return 2 if case.backend == "reference" else 5


def _param(case: registry.Case):
    marks = []
    if case.skip:
        marks.append(pytest.mark.skip(reason=case.skip))
    elif case.backend == "reference" and case.shape.T >= SLOW_T:
        marks.append(pytest.mark.slow)
    return pytest.param(case, id=case.id, marks=marks)


CASES = registry.cases(device="cpu")


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bench_cpu(benchmark, case: registry.Case):
    torch.manual_seed(42)
    fn = case.build(device="cpu", seed=0)
    benchmark.group = f"{case.op}-{case.mode}-T{case.shape.T}-{case.shape.tag}"
    benchmark.extra_info.update(op=case.op, shape=case.shape.name, backend=case.backend, mode=case.mode,
                                tokens=case.shape.tokens, torch_threads=torch.get_num_threads())
    outs = benchmark.pedantic(fn, rounds=_rounds(case), warmup_rounds=1, iterations=1)
    assert all(torch.isfinite(t).all() for t in outs), f"{case.id}: non-finite outputs"
