"""The CPU run (no CUDA device): the CPU tiers timed at CPU_SHAPE, the GPU rows listed with their counts."""
import importlib
from typing import Dict, Sequence

import torch

from . import settings
from .callables import linear_memory_callable, make_inputs
from .gate import rms_ratio
from .gpu_run import _registered_kernel_tiers
from .rows import Run, _finish, _new_row
from .settings import CPU_SHAPE, NO_CUDA, BenchShape
from .timing import _first_line, time_cpu


def run_cpu(run: Run, shapes: Sequence[BenchShape], modes: Sequence[str], args) -> None:
    registry = importlib.import_module("nested_kernels.linear_memory").BACKENDS
    shape = CPU_SHAPE
    x = make_inputs(shape, device="cpu", dtype=torch.float32)
    for variant in settings.VARIANTS:
        outputs: Dict[str, torch.Tensor] = {}
        for mode in modes:
            for backend in ("torch", "cpp"):
                row = _new_row(shape, variant, mode, backend, "cpu")
                call = {"device": torch.device("cpu"), "dtype": torch.float32, "K": shape.D, "V": shape.D,
                        "chunk_size": settings.CHUNK, "requires_grad": mode == "fwdbwd"}
                try:
                    registry.resolve(backend, call)
                    reason = None
                except NotImplementedError as e:
                    reason = str(e).split(": ", 1)[-1]
                if reason is not None:
                    if backend == "cpp" and mode == "fwdbwd":
                        continue                               # forward-only tier: no training row
                    row.status = f"not available: {reason}"
                    run.rows.append(row)
                    continue
                run.rows.append(row)
                try:
                    fn, leaves = linear_memory_callable(x, backend, variant.dgd, mode, variant.momentum)
                    ms = time_cpu(fn, leaves, min_runs=args.cpu_min_runs, budget_s=args.cpu_budget_s,
                                  max_row_s=args.cpu_max_row_s)
                    _finish(row, ms, "perf_counter", None, args)
                    if mode == "fwd":
                        outputs[backend] = fn()
                except Exception as e:  # noqa: BLE001
                    row.status = f"error: {type(e).__name__}: {_first_line(e)}"
        if "torch" in outputs and "cpp" in outputs:
            ratio = rms_ratio(outputs["torch"], outputs["cpp"])
            for row in run.rows:
                if row.backend == "cpp" and row.variant == variant.name and row.timed:
                    row.note = f"rms(torch − cpp) / rms(torch) = {ratio:.1e}"
    # The GPU rows, listed with their counts.
    tiers = _registered_kernel_tiers() or ["triton"]
    for s in shapes:
        for mode in modes:
            for variant in settings.VARIANTS:
                for backend in (*tiers, "torch"):
                    row = _new_row(s, variant, mode, backend, "cuda")
                    row.status = NO_CUDA
                    run.rows.append(row)
            for backend in ("fla", "sdpa"):
                row = _new_row(s, "-", mode, backend, "cuda")
                row.status = NO_CUDA
                run.rows.append(row)
