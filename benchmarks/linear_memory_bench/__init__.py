"""The GPU benchmark of `linear_memory` (`benchmarks/bench_linear_memory.py`, its command line), one
module per concept:

* `settings`: problem sizes and constants, and the run's `CHUNK` and `VARIANTS`,
* `counts`: FLOP and byte counts, the roofline fraction,
* `rows`: the rows of a run,
* `callables`: inputs and timed callables (our tiers, fla, SDPA),
* `timing`: do_bench / CUDA events and CPU timing,
* `gate`: the correctness gate,
* `gpu_run`, `cpu_run`: the GPU run and the CPU run,
* `report`: the markdown and JSON report.
"""
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if importlib.util.find_spec("nested_kernels") is None:   # running from a checkout without `pip install -e .`
    sys.path.insert(0, ROOT)
