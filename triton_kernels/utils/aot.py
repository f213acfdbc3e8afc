"""Ahead-of-time compile report for the Triton kernels (SPEC §7), with no GPU present.

`compile_spec` compiles one kernel at one shipped configuration for sm_90 or sm_80 through
`triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))` and reads back what the
hardware would see:

* registers, stack and local memory from the cubin Triton produced
  (`cuobjdump --dump-resource-usage`, the copy Triton bundles);
* spill stores/loads from `ptxas -v` run again on Triton's PTX with the flags Triton's own
  `make_cubin` passes (`-lineinfo -v --gpu-name=sm_90a`), since the cubin does not record them;
* shared memory: the dynamic amount Triton launches with (`metadata.shared`) and the static
  amount the cubin declares (1 KiB on sm_90 builds), checked against the per-block opt-in
  maximum of the architecture (`SHARED_MEMORY_LIMIT`): a block over it does not launch;
* the matrix units: `wgmma.mma_async` (Hopper) or `mma.sync.aligned` (Ampere) in the PTX.

Kernels decorated under TRITON_INTERPRET=1 (the CPU default of this package) are compiled in
fresh Python processes with the interpreter off, several at once (`compile_specs`). Works with Triton 3.6 through
3.8; Triton is imported only when a kernel is compiled.
"""
import dataclasses
import functools
import importlib
import inspect
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

ARCHS = (90, 80)
# Most shared memory one block may use (dynamic + static), in bytes: the opt-in maximum
# (cudaDevAttrMaxSharedMemoryPerBlockOptin) of H100/H200 (227 KiB) and A100 (163 KiB).
SHARED_MEMORY_LIMIT = {90: 232448, 80: 166912}
# Default bound on the fresh compile processes at once (`compile_specs`): each imports torch and
# this package (about half a GiB).
MAX_WORKERS = 8


# What the memory ops' kernels get as q, k, v: (variant name, Triton dtype of q/k/v, architectures,
# products' precision), as every variant below. bf16
# inputs as they are, and the fp32 copies of them that Hopper gets with Triton < 3.7.1
# (`operand_precision.py`), reported for sm_90 only: elsewhere fp32 operands come only from fp32
# inputs, whose products are exact ("ieee") unless torch allows tf32 (both in `FP32_INPUT_VARIANTS`).
# tf32 products either way, dO and o in the inputs' dtype (bf16).
OPERAND_VARIANTS = (("bf16", "bf16", ARCHS, "tf32"), ("fp32qkv", "fp32", (90,), "tf32"))
# What Hopper with Triton < 3.7.1 runs instead of fp32 copies in kernels that convert their q, k, v
# loads to fp32 (FP32_OPERANDS: linear_memory's, the chunk products): bf16 loads, fp32 operands.
# Their fp32qkv rows stand for fp32 inputs with tf32 allowed.
CONVERTED_VARIANT = ("bf16-fp32ops", "bf16", (90,), "tf32")
# What fp32 inputs run beyond those rows, reported only on request (`compile-report --fp32-inputs`,
# not in CI). With tf32 allowed on sm_80 too (the fp32qkv rows are sm_90's), and with exact fp32
# products ("ieee": torch's default, `torch.backends.cuda.matmul.allow_tf32` False) on both, the
# same launch configurations.
# (cms lists its own: fp32 inputs with tf32 allowed, on both.) Many of them spill
# (benchmarks/results/compile-fp32-inputs-2026-11-26.md: 19 tf32 rows on sm_80, by 4–64 B; of the
# 429 exact fp32 rows, which Triton runs on the FMA units with whole operand rows per thread, 161 on
# sm_80 and 187 on sm_90, by up to 27 KB), so they stay out of CI's clean check.
FP32_INPUT_VARIANTS = (("fp32qkv", "fp32", (80,), "tf32"), ("fp32exact", "fp32", ARCHS, "ieee"))
QKV = frozenset({"q", "k", "v"})


def pointer_types(names: Sequence[str], qkv: str, *, bf16=(), int32=(), scalars: Mapping[str, str] = {}
                  ) -> Dict[str, str]:
    """Triton types of the runtime arguments `names`: q, k, v as `qkv`, the `bf16` ones (dO, o),
    the `int32` tables and the `scalars` as named, every other one an fp32 pointer."""
    def of(n):
        return f"*{qkv}" if n in QKV else "*bf16" if n in bf16 else "*i32" if n in int32 else "*fp32"
    return {n: scalars.get(n, of(n)) for n in names}


@dataclasses.dataclass(frozen=True)
class AotSpec:
    """One kernel at one shipped configuration.

    `signature` maps every runtime argument to a Triton type ("*fp32", "*bf16", "i32", "i64",
    "fp32", ...); `constexprs` gives the `tl.constexpr` arguments (those left out take their
    default). `divisible_by_16` names the arguments the launch can promise are multiples of 16
    (pointers: 16-byte aligned), as Triton's JIT specialises them; None means every pointer,
    which is what a launch on fresh torch tensors gets. `gemm_heavy` kernels must use the
    matrix units (wgmma on sm_90, mma on sm_80); with `mma_sync_on_hopper`, whose products have
    fewer rows than wgmma's 64 by design, mma on sm_90 too. `num_warps`, `num_stages` default to what a launch
    that does not pass them gets (4, 3). `archs`: the architectures the configuration
    launches on, those the report compiles it for.
    """

    name: str
    kernel: Any
    signature: Mapping[str, str]
    constexprs: Mapping[str, object] = dataclasses.field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3                     # Triton's own default at launch (CUDAOptions.num_stages)
    gemm_heavy: bool = False
    mma_sync_on_hopper: bool = False
    divisible_by_16: Optional[Sequence[str]] = None
    archs: Tuple[int, ...] = ARCHS

    @property
    def config(self) -> str:
        meta = [f"{k}={v}" for k, v in self.constexprs.items()]
        return ", ".join(meta + [f"warps={self.num_warps}", f"stages={self.num_stages}"])


@dataclasses.dataclass
class CompileResult:
    spec: AotSpec
    arch: int
    registers: Optional[int] = None          # per thread
    spill_stores: int = 0                    # bytes per thread
    spill_loads: int = 0
    stack_bytes: int = 0                     # stack frame (spills and local arrays), per thread
    local_bytes: int = 0                     # other local memory, per thread
    shared_bytes: int = 0                    # dynamic shared memory Triton launches with, per block
    static_shared_bytes: int = 0             # static shared memory in the cubin, per block
    matrix_unit: str = "none"                # "wgmma" | "mma" | "none"
    error: Optional[str] = None              # compile or tool failure, at most 12 lines

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0

    @property
    def total_shared_bytes(self) -> int:
        return self.shared_bytes + self.static_shared_bytes

    def problems(self) -> List[str]:
        """Why this result fails the report; empty when it passes."""
        if self.error is not None:
            lines = self.error.splitlines() or ["?"]
            return [f"error: {lines[0]}" + (f" … {lines[-1].strip()}" if len(lines) > 1 else "")]
        out = []
        if self.spills:
            out.append(f"spills {self.spill_stores}/{self.spill_loads} B")
        limit = SHARED_MEMORY_LIMIT.get(self.arch)
        if limit is not None and self.total_shared_bytes > limit:
            out.append(f"smem {self.total_shared_bytes} B > {limit} B")
        wgmma_expected = self.arch >= 90 and not self.spec.mma_sync_on_hopper
        if self.spec.gemm_heavy and wgmma_expected and self.matrix_unit != "wgmma":
            out.append(f"GEMM-heavy kernel without wgmma ({self.matrix_unit})")
        elif self.spec.gemm_heavy and self.arch >= 80 and self.matrix_unit == "none":
            out.append("GEMM-heavy kernel without mma")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems()

    @property
    def status(self) -> str:
        return "; ".join(self.problems()) or "ok"


def kernel_params(kernel) -> Tuple[List[str], set]:
    """(runtime argument names, constexpr names) of a jitted or interpreted kernel: what an op's
    `aot.py` needs to write the signature and the constexprs of its specs."""
    params = inspect.signature(getattr(kernel, "fn", kernel)).parameters.values()
    is_constexpr = lambda p: "constexpr" in str(p.annotation)
    return [p.name for p in params if not is_constexpr(p)], {p.name for p in params if is_constexpr(p)}


def _kernel_chain(kernel) -> list:
    """`kernel` and what it wraps, down to the @triton.jit function (`.fn` of autotune/heuristics)."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    chain = [kernel]
    while not isinstance(chain[-1], (JITFunction, InterpretedFunction)):
        if not hasattr(chain[-1], "fn"):
            raise TypeError(f"expected a @triton.jit kernel (or an autotune/heuristics wrapper), got {kernel!r}")
        chain.append(chain[-1].fn)
    return chain


def unwrap(kernel) -> Any:
    """The `triton.JITFunction` under `@triton.autotune` / `@triton.heuristics` wrappers (`.fn` chain)."""
    from triton.runtime.jit import JITFunction

    fn = _kernel_chain(kernel)[-1]
    if not isinstance(fn, JITFunction):
        raise TypeError(f"{fn.__name__} was decorated under TRITON_INTERPRET=1; compile it with compile_specs")
    return fn


def _interpreted(kernel) -> bool:
    """Whether `kernel`, or Triton's own @jit library (tl.cdiv, the reductions' combiners), was made
    under TRITON_INTERPRET=1: then nothing here compiles in this process."""
    import triton.language.standard as standard
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    return not isinstance(standard.cdiv, JITFunction) or isinstance(_kernel_chain(kernel)[-1], InterpretedFunction)


def _ast_arguments(fn, spec: AotSpec) -> Tuple[Dict[str, str], Dict[str, object], Dict[tuple, list]]:
    """ASTSource's arguments: full signature (constexprs marked "constexpr"), constexpr values, divisibility attrs."""
    names = [p.name for p in fn.params]
    unknown = sorted((set(spec.signature) | set(spec.constexprs)) - set(names))
    if unknown:
        raise ValueError(f"{spec.name}: {fn.__name__} has no argument(s) {unknown}; its arguments are {names}")
    signature, constexprs = {}, {}
    for p in fn.params:
        if p.name in spec.constexprs:
            signature[p.name], constexprs[p.name] = "constexpr", spec.constexprs[p.name]
        elif p.is_constexpr:
            if p.default is inspect.Parameter.empty:
                raise ValueError(f"{spec.name}: constexpr argument {p.name!r} of {fn.__name__} needs a value")
            signature[p.name], constexprs[p.name] = "constexpr", p.default
        elif p.name in spec.signature:
            signature[p.name] = spec.signature[p.name]
        else:
            raise ValueError(f"{spec.name}: argument {p.name!r} of {fn.__name__} needs a type in the signature")
    aligned = spec.divisible_by_16
    if aligned is None:
        aligned = [n for n, t in signature.items() if t.startswith("*")]
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if n in aligned and signature[n] != "constexpr"}
    return signature, constexprs, attrs


def _nvidia_tool(name: str, arch: int) -> str:
    """Path of the ptxas / cuobjdump Triton itself resolves (its bundled copy or TRITON_*_PATH), else CUDA's."""
    try:
        if name == "ptxas":
            from triton.backends.nvidia.compiler import get_ptxas

            return get_ptxas(arch).path
        from triton import knobs

        return getattr(knobs.nvidia, name).path
    except Exception:  # older or newer Triton without knobs: look where CUDA keeps it
        for path in (shutil.which(name), os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", name)):
            if path and os.access(path, os.X_OK):
                return path
    raise FileNotFoundError(f"cannot find {name} (neither Triton's bundled copy nor CUDA's)")


def _sm_name(arch: int) -> str:
    try:
        from triton.backends.nvidia.compiler import sm_arch_from_capability

        return sm_arch_from_capability(arch)
    except ImportError:
        return f"sm_{arch}{'a' if arch >= 90 else ''}"


def _triton_ptxas_flags(metadata) -> List[str]:
    """The ptxas flags Triton's `make_cubin` adds besides `-v --gpu-name` (so the rerun allocates registers alike)."""
    flags = ["-lineinfo"]
    if not getattr(metadata, "enable_fp_fusion", True):
        flags.append("--fmad=false")
    try:  # Triton 3.8 passes --regAllocOptLevel=2 (a ptxas 13 workaround); 3.6 does not
        from triton.backends.nvidia.compiler import CUDABackend

        flags += re.findall(r"--regAllocOptLevel=\d+", inspect.getsource(CUDABackend.make_cubin))[:1]
    except (ImportError, OSError, TypeError):
        pass
    if getattr(metadata, "ptx_options", None):
        flags += metadata.ptx_options.split()
    return flags


def _ptxas_usage(ptx: str, arch: int, metadata, workdir: str) -> Dict[str, int]:
    """`ptxas -v` on the PTX: registers, stack frame, spill stores/loads (bytes per thread)."""
    src, out = os.path.join(workdir, "kernel.ptx"), os.path.join(workdir, "rerun.cubin")
    with open(src, "w") as f:
        f.write(ptx)
    cmd = [_nvidia_tool("ptxas", arch), "-v", *_triton_ptxas_flags(metadata), f"--gpu-name={_sm_name(arch)}",
           src, "-o", out]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed ({proc.returncode}): {log.strip()[-2000:]}")
    frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    regs = re.findall(r"Used (\d+) registers", log)
    if not frames or not regs:
        raise RuntimeError(f"cannot parse the ptxas -v log: {log.strip()[-2000:]}")
    return dict(
        registers=max(int(r) for r in regs),
        stack=max(int(f[0]) for f in frames),
        spill_stores=sum(int(f[1]) for f in frames),
        spill_loads=sum(int(f[2]) for f in frames),
    )


def _cubin_usage(cubin: bytes, arch: int, workdir: str) -> Optional[Dict[str, int]]:
    """`cuobjdump --dump-resource-usage` on Triton's cubin: REG, STACK, SHARED, LOCAL; None if unavailable."""
    try:
        tool = _nvidia_tool("cuobjdump", arch)
    except FileNotFoundError:
        return None
    path = os.path.join(workdir, "kernel.cubin")
    with open(path, "wb") as f:
        f.write(cubin)
    proc = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True)
    rows = re.findall(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", proc.stdout)
    if proc.returncode != 0 or not rows:
        return None
    return dict(
        registers=max(int(r[0]) for r in rows),
        stack=max(int(r[1]) for r in rows),
        shared=max(int(r[2]) for r in rows),
        local=max(int(r[3]) for r in rows),
    )


def matrix_unit(ptx: str) -> str:
    """"wgmma" (Hopper warpgroup MMA), "mma" (mma.sync, Ampere-style tensor cores) or "none"."""
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    if re.search(r"\bmma\.sync\.aligned\b", ptx):
        return "mma"
    return "none"


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines if len(lines) <= 12 else lines[:1] + lines[-11:])  # Triton puts the cause last


def compile_spec(spec: AotSpec, arch: int) -> CompileResult:
    """Compile `spec` for sm_`arch` with no GPU; failures come back in `CompileResult.error`, never raised."""
    return compile_specs([(spec, arch)])[0]


def compile_specs(jobs: Sequence[Tuple[AotSpec, int]], fresh_process: Optional[bool] = None,
                  workers: Optional[int] = None) -> List[CompileResult]:
    """`compile_spec` for each (spec, arch), in the order given.

    Kernels decorated under TRITON_INTERPRET=1 (this package turns the interpreter on when it is
    imported on a machine without a GPU) are not compilable in this process; they are compiled in
    fresh Python processes with the interpreter off, which import each kernel again by module and
    name: `workers` of them at once (default: one per CPU this process may use, at most
    MAX_WORKERS, since each imports torch), each taking every `workers`-th job. `fresh_process`
    forces (True) or forbids (False) that; None decides per job.
    """
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"compile_specs: workers must be a positive int or None, got {workers!r}")
    results: List[Optional[CompileResult]] = [None] * len(jobs)
    away = []
    for i, (spec, arch) in enumerate(jobs):
        try:
            isolate = _interpreted(spec.kernel) if fresh_process is None else fresh_process
        except Exception as exc:
            results[i] = CompileResult(spec, arch, error=_short(exc))
            continue
        if isolate:
            away.append(i)
        else:
            results[i] = _compile_here(spec, arch)
    if away:
        for i, result in zip(away, _compile_in_fresh_process([jobs[i] for i in away], workers)):
            results[i] = result
    return results


def _compile_here(spec: AotSpec, arch: int) -> CompileResult:
    """Compile in this process (Triton imported without the interpreter) and measure the binary."""
    result = CompileResult(spec, arch)
    try:
        import triton
        from triton import knobs
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        fn = unwrap(spec.kernel)
        signature, constexprs, attrs = _ast_arguments(fn, spec)
        with knobs.runtime.scope():  # constexpr functions fold differently while TRITON_INTERPRET=1
            knobs.runtime.interpret = False
            compiled = triton.compile(
                ASTSource(fn, signature, constexprs, attrs),
                target=GPUTarget("cuda", arch, 32),
                options=dict(num_warps=spec.num_warps, num_stages=spec.num_stages),
            )
    except Exception as exc:  # a kernel that does not compile is a row of the report
        result.error = _short(exc)
        return result
    try:
        ptx, cubin = compiled.asm["ptx"], compiled.asm["cubin"]
        result.matrix_unit = matrix_unit(ptx)
        result.shared_bytes = int(getattr(compiled.metadata, "shared", 0) or 0)
        with tempfile.TemporaryDirectory(prefix="nested_kernels_aot_") as workdir:
            usage = _ptxas_usage(ptx, arch, compiled.metadata, workdir)
            binary = _cubin_usage(cubin, arch, workdir)
        result.spill_stores, result.spill_loads = usage["spill_stores"], usage["spill_loads"]
        result.registers, result.stack_bytes = usage["registers"], usage["stack"]
        if binary is not None:  # the shipped cubin is the truth where the rerun differs
            result.registers = binary["registers"]
            result.stack_bytes = max(result.stack_bytes, binary["stack"])
            result.local_bytes = binary["local"]
            result.static_shared_bytes = binary["shared"]
    except Exception as exc:
        result.error = _short(exc)
    return result


_FIELDS = [f.name for f in dataclasses.fields(CompileResult) if f.name not in ("spec", "arch")]

# Run by `python -c` in the fresh process: load this package under the same name, then `_serve`.
_BOOTSTRAP = """
import importlib, importlib.util, sys
sys.path[:0] = {path!r}
name, root = {package!r}, {root!r}
try:
    importlib.import_module(name)
except ModuleNotFoundError as exc:
    if exc.name != name:
        raise
    spec = importlib.util.spec_from_file_location(name, root + "/__init__.py", submodule_search_locations=[root])
    sys.modules[name] = module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
importlib.import_module({module!r})._serve({jobs!r}, {results!r})
"""


def _compile_in_fresh_process(jobs: Sequence[Tuple[AotSpec, int]], workers: Optional[int] = None) -> List[CompileResult]:
    results: List[Optional[CompileResult]] = [None] * len(jobs)
    wire = []  # (index, module, qualname, spec without its kernel, arch)
    for i, (spec, arch) in enumerate(jobs):
        try:
            raw = _kernel_chain(spec.kernel)[-1].fn  # the undecorated Python function
            if raw.__module__ == "__main__" or "<locals>" in raw.__qualname__:
                raise ValueError(f"{raw.__qualname__} in {raw.__module__} cannot be imported again by name; "
                                 "define the kernel at module level, or import Triton before this package")
            entry = (i, raw.__module__, raw.__qualname__, dataclasses.replace(spec, kernel=None), arch)
            pickle.dumps(entry)
            wire.append(entry)
        except Exception as exc:
            results[i] = CompileResult(spec, arch, error=_short(exc))
    n = min(workers if workers is not None else min(_cpus(), MAX_WORKERS), len(wire))
    if n:
        with ThreadPoolExecutor(n) as pool:                                 # each thread waits on one process
            for share, fields in enumerate(pool.map(_run_share, [wire[w::n] for w in range(n)])):
                for (i, *_), out in zip(wire[share::n], fields):
                    results[i] = CompileResult(jobs[i][0], jobs[i][1], **out)
    return results


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _run_share(wire: list) -> List[dict]:
    """One fresh process's jobs; a process that fails makes each of its jobs an error row."""
    try:
        return _run_fresh_process([w[1:] for w in wire])
    except Exception as exc:
        return [{"error": f"the fresh compile process failed: {_short(exc)}"}] * len(wire)


def _run_fresh_process(wire: list) -> List[dict]:
    package = __name__.rsplit(".", 2)[0]  # <package>.utils.aot
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["NESTED_KERNELS_TRITON_INTERPRET"] = "0"
    with tempfile.TemporaryDirectory(prefix="nested_kernels_aot_") as workdir:
        jobs_path, results_path = os.path.join(workdir, "jobs.pkl"), os.path.join(workdir, "results.pkl")
        with open(jobs_path, "wb") as f:
            pickle.dump(wire, f)
        code = _BOOTSTRAP.format(path=[p for p in sys.path if p], package=package, root=root, module=__name__,
                                 jobs=jobs_path, results=results_path)
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.exists(results_path):
            raise RuntimeError(f"exit code {proc.returncode}\n{proc.stderr.strip()[-3000:]}")
        with open(results_path, "rb") as f:
            return pickle.load(f)


def _serve(jobs_path: str, results_path: str) -> None:
    """In the fresh process: import each kernel by module and name, compile it, pickle the fields back."""
    with open(jobs_path, "rb") as f:
        jobs = pickle.load(f)
    out = []
    for module, qualname, spec, arch in jobs:
        try:
            kernel = functools.reduce(getattr, qualname.split("."), importlib.import_module(module))
            result = _compile_here(dataclasses.replace(spec, kernel=kernel), arch)
        except Exception as exc:
            result = CompileResult(spec, arch, error=_short(exc))
        out.append({name: getattr(result, name) for name in _FIELDS})
    with open(results_path, "wb") as f:
        pickle.dump(out, f)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def format_report(results: Sequence[CompileResult]) -> str:
    """A markdown table, one row per (kernel, config, arch)."""
    columns = ["kernel", "config", "arch", "registers", "spills st/ld (B)", "local: stack/other (B)", "shared (B)",
               "matrix unit", "status"]
    rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in results:
        if r.error is not None:
            cells = ["-"] * 5
        else:
            shared = f"{r.shared_bytes}" + (f" + {r.static_shared_bytes} static" if r.static_shared_bytes else "")
            cells = [str(r.registers), f"{r.spill_stores}/{r.spill_loads}", f"{r.stack_bytes}/{r.local_bytes}", shared,
                     r.matrix_unit]
        cells = [r.spec.name, r.spec.config, f"sm_{r.arch}", *cells, r.status]
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows)
