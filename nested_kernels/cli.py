"""The `nested-kernels` command (also `python -m nested_kernels`): info, check, compile-report, demo, train."""
import argparse
import platform
import sys

import torch


def _info(args) -> int:
    from . import __version__
    from ._extension import build_info
    from .check import CASES

    print(f"nested_kernels {__version__}")
    print(f"python {platform.python_version()} on {platform.machine()}, torch {torch.__version__}", end="")
    try:
        import triton
        print(f", triton {triton.__version__}")
    except ImportError:
        print(", triton not installed")
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    print(f"devices: cpu ({torch.get_num_threads()} threads)" + "".join(f", cuda:{i} {n}" for i, n in enumerate(gpus)))
    info = build_info()
    if info.get("built"):
        extras = ", ".join(f"{k}={v}" for k, v in info.items() if k != "built")
        print(f"compiled extension nested_kernels._C: built ({extras})")
    else:
        print(f"compiled extension nested_kernels._C: not available ({info.get('error')})")
    print("backends (implemented; runnable here for a small fp32 CPU inference / training call):")
    seen = set()
    for case in CASES:
        if case.op in seen:
            continue
        seen.add(case.op)
        reg = case.backends
        infer = reg.available(case.backend_call(torch.device("cpu"), requires_grad=False))
        train = reg.available(case.backend_call(torch.device("cpu"), requires_grad=True))
        print(f"  {case.op:14s} {', '.join(reg.implemented()):32s} inference: {', '.join(infer)}; training: {', '.join(train)}")
    return 0


def _check(args) -> int:
    from tqdm import tqdm

    from .check import check_case, format_table, plan

    device = torch.device(args.device)
    pairs = plan(device, args.op)
    rows = []
    for case, backend in tqdm(pairs, desc="checking", unit="case", file=sys.stderr, disable=args.quiet):
        rows.append(check_case(case, backend, device))
    print(format_table(rows))
    failed = [r for r in rows if not r.passed]
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed or not rows else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="nested-kernels", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices and the backends built and runnable here")
    check = sub.add_parser("check", help="every op x runnable backend against the reference, forward and backward")
    check.add_argument("--device", default="cpu", help="device to check on (default: cpu)")
    check.add_argument("--op", action="append", help="only this op (repeatable)")
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    from .compile_report import add_arguments, run as _compile_report
    add_arguments(sub.add_parser("compile-report", help="compile Triton kernels for sm_90/80, no GPU"))
    from .demo import add_arguments as _demo_arguments, run as _demo
    _demo_arguments(sub.add_parser("demo", help="train a small HOPE and a Transformer on MQAR on this machine"))
    from .train import add_arguments as _train_arguments, run as _train
    _train_arguments(sub.add_parser("train", help="train a HOPE language model on a local text or dataset"))
    args = parser.parse_args(argv)
    commands = {"info": _info, "check": _check, "compile-report": _compile_report, "demo": _demo, "train": _train}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
