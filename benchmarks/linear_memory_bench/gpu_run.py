"""The GPU run: per shape, the correctness gates, then the timed rows of every tier and peer."""
import importlib
import sys
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from . import settings
from .callables import (
    _fla_function, fla_callable, lift_fla_hopper_guard, linear_memory_callable, make_inputs, sdpa_callable,
)
from .gate import correctness_gate
from .rows import Row, Run, _finish, _new_row
from .settings import FLA_GUARD_LIFTED, GATE_FAILED, KERNEL_TIERS, MODE_LABEL, OUT_OF_BUDGET, BenchShape, _mode
from .timing import Fn, _first_line, _release, time_cuda


def _registered_kernel_tiers() -> List[str]:
    registry = importlib.import_module("nested_kernels.linear_memory").BACKENDS
    return [b for b in KERNEL_TIERS if b in registry.implemented()]


def _time_row(row: Row, make: Callable[[], Tuple[Fn, List[torch.Tensor]]], args, *, max_call_s: float) -> Row:
    fn = leaves = None
    try:
        fn, leaves = make()
        ms, method, peak, skip = time_cuda(fn, leaves, warmup_ms=args.warmup_ms, rep_ms=args.rep_ms,
                                           max_call_s=max_call_s)
        if skip is not None:
            row.status = skip
        else:
            _finish(row, ms, method, peak, args)
    except torch.cuda.OutOfMemoryError:
        row.status = "OOM"
    except Exception as e:  # noqa: BLE001 (recorded in the row and in the exit status)
        row.status = f"error: {type(e).__name__}: {_first_line(e)}"
    finally:
        del fn, leaves
        _release()
    return row


def run_gpu(run: Run, shapes: Sequence[BenchShape], modes: Sequence[str], args, write: Callable[[], None],
            device="cuda") -> None:
    device = torch.device(device)
    tiers = _registered_kernel_tiers()
    fla_fn, fla_reason = _fla_function()
    fla_guard_lifted = fla_fn is not None and not args.keep_fla_hopper_guard and lift_fla_hopper_guard()
    start = time.perf_counter()
    over_budget = lambda: args.budget_s is not None and time.perf_counter() - start > args.budget_s

    def time_row(row: Row, make: Callable[[], Tuple[Fn, List[torch.Tensor]]], max_call_s: float) -> None:
        """Time one row and rewrite the files: a run stopped mid-shape (a peer's autotuning can take
        a minute) keeps the rows it timed."""
        _time_row(row, make, args, max_call_s=max_call_s)
        write()

    for shape in shapes:
        def log(msg):
            print(f"[{time.perf_counter() - start:7.1f} s] {shape.name} {msg}", file=sys.stderr, flush=True)

        gate_ok: Dict[Tuple[str, str, str], bool] = {}
        gate_error: Dict[Tuple[str, str, str], str] = {}
        if not over_budget():
            for tier in tiers:
                for variant in settings.VARIANTS:
                    log(f"correctness gate {tier} {variant.name}")
                    g = correctness_gate(shape, tier, variant, modes, device)
                    run.gates.append(g)
                    for mode in modes:
                        gate_ok[(tier, variant.name, mode)] = bool(g["passed"].get(mode))
                        if mode in g["errors"]:
                            gate_error[(tier, variant.name, mode)] = g["errors"][mode]

        x, no_inputs = None, None              # the inputs, or why there are none
        if over_budget():
            no_inputs = OUT_OF_BUDGET
        else:
            try:
                x = make_inputs(shape, device=device, dtype=torch.bfloat16)
            except torch.cuda.OutOfMemoryError:
                no_inputs = "OOM (inputs)"
        not_run = lambda: OUT_OF_BUDGET if over_budget() else no_inputs
        for mode in modes:
            for variant in settings.VARIANTS:
                for backend in (*tiers, "torch"):
                    row = _new_row(shape, variant, mode, backend, "cuda")
                    run.rows.append(row)
                    if not_run() is not None:
                        row.status = not_run()
                        continue
                    if backend != "torch" and not gate_ok.get((backend, variant.name, mode), False):
                        error = gate_error.get((backend, variant.name, mode))
                        row.status = GATE_FAILED if error is None else f"not run: {error}"
                        continue
                    log(f"{MODE_LABEL[mode]} {variant.name} {backend}")
                    max_call_s = args.torch_max_call_s if backend == "torch" else 60.0
                    call = lambda: linear_memory_callable(x, backend, variant.dgd, mode, variant.momentum)
                    time_row(row, call, max_call_s)

            row = _new_row(shape, "-", mode, "fla", "cuda")
            run.rows.append(row)
            if fla_fn is None:
                row.status = fla_reason
            elif not_run() is not None:
                row.status = not_run()
            else:
                log(f"{MODE_LABEL[mode]} fla")
                time_row(row, lambda: fla_callable(fla_fn, x, mode), 60.0)
                if row.timed:
                    row.note = "chunk_gated_delta_rule (no momentum, decay before the error)"
                    if fla_guard_lifted and _mode(mode) != "fwd":
                        row.note += FLA_GUARD_LIFTED

            row = _new_row(shape, "-", mode, "sdpa", "cuda")
            run.rows.append(row)
            if not_run() is not None:
                row.status = not_run()
            else:
                log(f"{MODE_LABEL[mode]} sdpa")
                label = []

                def make_sdpa():
                    fn, leaves, name = sdpa_callable(x, mode)
                    label.append(name)
                    return fn, leaves
                time_row(row, make_sdpa, 60.0)
                row.note = f"causal, {label[0] if label else 'flash'} backend"
        x = None
        _release()
        write()
