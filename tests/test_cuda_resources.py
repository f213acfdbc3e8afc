"""The CUDA kernels of the compiled extension, without a GPU (issue 5's build check): for every
architecture the extension was built for, `cuobjdump --dump-resource-usage` on `_C` lists each
kernel, none uses local memory, and only the MLP decode step has a stack frame (its device
functions are called, not inlined: the frame saves registers around the calls; SASS shows the
CALLs), of at most STACK_LIMIT bytes. A register spill would grow a frame or appear elsewhere.
The chunked linear_memory kernels (forward and backward, both workspace variants) with bf16/fp16
inputs multiply on tensor cores: HMMA in their SASS."""
import importlib.util
import re
import subprocess

import pytest

from nested_kernels._extension import build_info

INFO = build_info()
STACK_LIMIT = {"mlp_memory_step": 64}                  # bytes; every other kernel: no stack frame
pytestmark = pytest.mark.skipif(not INFO.get("cuda"), reason="the extension was built without CUDA")


def _cuobjdump() -> str:
    from nested_kernels.triton_kernels.utils.aot import _nvidia_tool

    try:
        return _nvidia_tool("cuobjdump", 90)
    except FileNotFoundError:
        pytest.skip("no cuobjdump (neither Triton's bundled copy nor CUDA's)")


def resource_usage() -> dict:
    """{arch: {kernel: {"REG": n, "STACK": n, "SHARED": n, "LOCAL": n}}} of every kernel in `_C`."""
    library = importlib.util.find_spec("nested_kernels._C").origin
    out = subprocess.run([_cuobjdump(), "--dump-resource-usage", library], capture_output=True, text=True,
                         check=True).stdout
    usage, arch, name = {}, None, None
    for line in out.splitlines():
        if match := re.search(r"arch = (sm_\d+a?)", line):
            arch = match.group(1)
        elif match := re.search(r"Function (\S+?):?$", line.strip()):
            name = match.group(1)
        elif (match := re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)) and name:
            usage.setdefault(arch, {})[name] = dict(zip(("REG", "STACK", "SHARED", "LOCAL"), map(int, match.groups())))
            name = None
    return usage


def test_every_built_arch_has_the_kernels():
    usage = resource_usage()
    archs = {f"sm_{a.replace('.', '').replace('+PTX', '')}" for a in INFO["cuda_archs"].split(";") if a}
    assert archs <= set(usage), (archs, sorted(usage))
    expected = ("linear_memory_recurrent", "linear_memory_chunked_fwd", "linear_memory_chunked_bwd",
                "linear_memory_step", "mlp_memory_step")
    for arch in archs:
        for op in expected:
            assert any(op in name for name in usage[arch]), f"no {op} kernel for {arch}: {sorted(usage[arch])}"


def test_no_local_memory_and_bounded_stack():
    def stack_limit(name):
        return next((limit for op, limit in STACK_LIMIT.items() if op in name), 0)

    bad = {(arch, name): u for arch, kernels in resource_usage().items() for name, u in kernels.items()
           if u["LOCAL"] or u["STACK"] > stack_limit(name)}
    assert not bad, bad


def sass_by_kernel() -> dict:
    """{arch: {kernel: SASS text}} of every kernel in `_C`."""
    library = importlib.util.find_spec("nested_kernels._C").origin
    out = subprocess.run([_cuobjdump(), "--dump-sass", library], capture_output=True, text=True, check=True).stdout
    sass, arch, name = {}, None, None
    for line in out.splitlines():
        if match := re.search(r"arch = (sm_\d+a?)", line):
            arch, name = match.group(1), None
        elif match := re.search(r"Function : (\S+)", line):
            name = match.group(1)
            sass.setdefault(arch, {})[name] = ""
        elif name is not None:
            sass[arch][name] += line + "\n"
    return sass


@pytest.mark.parametrize("kernel", ["linear_memory_chunked_fwd", "linear_memory_chunked_bwd"])
def test_chunked_kernel_uses_tensor_cores(kernel):
    archs = {f"sm_{a.replace('.', '').replace('+PTX', '')}" for a in INFO["cuda_archs"].split(";") if a}
    sass = sass_by_kernel()
    for arch in archs:
        kernels = {name: text for name, text in sass[arch].items() if kernel in name}
        low_precision = {name: text for name, text in kernels.items() if "BFloat16" in name or "Half" in name}
        # {bf16, fp16} x momentum on/off x dgd on/off x workspace in shared memory only / spilling to global
        assert len(low_precision) == 16, (arch, sorted(kernels))
        for name, text in low_precision.items():
            assert "HMMA" in text, f"{arch} {name}: no HMMA (mma.sync) in its SASS"
