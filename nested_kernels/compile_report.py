"""`nested-kernels compile-report`: compile every shipped Triton kernel ahead of time, no GPU needed (SPEC §7).

Prints a markdown table (registers, spills, local and shared memory, wgmma/mma use) and exits
non-zero if a kernel fails to compile, spills, needs more shared memory than a block may have
(227 KiB on sm_90, 163 KiB on sm_80), or (sm_90) is GEMM-heavy without wgmma.
"""
import argparse
import importlib
import importlib.util
import sys
from importlib.metadata import version
from pathlib import Path


def triton_kernels_package():
    """`nested_kernels.triton_kernels`; in a source checkout that is not installed, loaded from `triton_kernels/`."""
    name = "nested_kernels.triton_kernels"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
    root = Path(__file__).resolve().parent.parent / "triton_kernels"
    if not (root / "__init__.py").exists():
        raise ModuleNotFoundError(f"{name} is not installed and there is no {root}", name=name)
    spec = importlib.util.spec_from_file_location(name, root / "__init__.py", submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--arch", type=int, choices=(90, 80), default=90,
                        help="compute capability to compile for (default: 90)")
    parser.add_argument("--kernel", help="only kernels whose name contains this")
    parser.add_argument("--out", help="also write the report to this markdown file")
    parser.add_argument("--fp32-inputs", action="store_true",
                        help="also the configurations fp32 inputs run beyond the default rows: tf32 products on "
                             "sm_80 (cms: on both) and exact fp32 products (torch's default: tf32 not allowed) on "
                             "both; not in CI")
    return parser


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("triton") is None:
        print("compile-report needs Triton: pip install 'nested_kernels[triton]'", file=sys.stderr)
        return 2
    triton_kernels_package()
    from nested_kernels.triton_kernels.aot_registry import aot_specs
    from nested_kernels.triton_kernels.utils.aot import compile_specs, format_report

    registered = aot_specs()
    specs = [s for s in aot_specs(args.arch, args.fp32_inputs) if not args.kernel or args.kernel in s.name]
    if not registered:
        text, code = "no kernels registered yet", 0
    elif not specs:
        text, code = f"no registered kernel matches {args.kernel!r}", 1
    else:
        print(f"compiling {len(specs)} kernel configuration(s) for sm_{args.arch}", file=sys.stderr)
        results = compile_specs([(spec, args.arch) for spec in specs])
        failed = [r for r in results if not r.ok]
        errors = "".join(f"\n\n{r.spec.name} ({r.spec.config}), sm_{r.arch}:\n```\n{r.error}\n```"
                         for r in results if r.error is not None)
        summary = f"{len(results) - len(failed)} ok, {len(failed)} failed (sm_{args.arch}, triton {version('triton')})"
        text = f"{format_report(results)}{errors}\n\n{summary}"
        code = 1 if failed else 0
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return code


def main(argv=None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="nested-kernels compile-report", description=__doc__))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
