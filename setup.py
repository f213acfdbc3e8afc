"""Build of `nested_kernels` and its compiled extension `nested_kernels._C`.

Metadata lives in pyproject.toml; this file only adds the packages and the extension.

Environment:
  NESTED_KERNELS_BUILD   cuda | cpu | none. Default: cuda when nvcc is found and torch is a
                         CUDA build, else cpu. `none` installs the pure-Python package.
  TORCH_CUDA_ARCH_LIST   CUDA architectures, e.g. "8.0;9.0" (the default).
  MAX_JOBS               parallel compile jobs. Default: free RAM / 5 GB, at most the core count.
  CUDA_HOME              the CUDA toolkit (else CUDA_PATH, else found from nvcc).

The source list is csrc/SOURCES.txt, shared with CMakeLists.txt.
"""
import os
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
SOURCE_KINDS = ("cpu", "cuda", "test")
BUILD_MODES = ("cuda", "cpu", "none")
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def read_sources(path=CSRC / "SOURCES.txt"):
    """{kind: [path relative to the repo root]} from csrc/SOURCES.txt (`<kind> <path>` lines, `#` comments)."""
    sources = {kind: [] for kind in SOURCE_KINDS}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in SOURCE_KINDS:
            raise ValueError(f"{path}:{lineno}: expected '<kind> <path>' with kind in {SOURCE_KINDS}, got {line!r}")
        kind, rel = parts
        if not (ROOT / rel).is_file():
            raise FileNotFoundError(f"{path}:{lineno}: {rel} does not exist")
        sources[kind].append(rel)
    return sources


def find_cuda_home():
    """The CUDA toolkit root: CUDA_HOME, CUDA_PATH, nvcc's toolkit, /usr/local/cuda; None if absent.

    torch guesses the root as nvcc's grandparent folder, which is wrong when nvcc on PATH is a
    wrapper script (e.g. /usr/local/bin/nvcc); a root must hold bin/nvcc and include/cuda_runtime.h.
    """
    def is_toolkit(root):
        return root is not None and (Path(root) / "bin" / "nvcc").is_file() and (
            Path(root) / "include" / "cuda_runtime.h"
        ).is_file()

    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var] if is_toolkit(os.environ[var]) else None
    nvcc = shutil.which("nvcc")
    candidates = []
    if nvcc is not None:
        candidates += [Path(nvcc).parent.parent, Path(os.path.realpath(nvcc)).parent.parent]
    candidates.append(Path("/usr/local/cuda"))
    for root in candidates:
        if is_toolkit(root):
            return str(root)
    return None


def build_mode(torch_cuda, cuda_home):
    mode = os.environ.get("NESTED_KERNELS_BUILD", "").strip().lower()
    if mode and mode not in BUILD_MODES:
        raise ValueError(f"NESTED_KERNELS_BUILD must be one of {BUILD_MODES}, got {mode!r}")
    if mode == "cuda" and (torch_cuda is None or cuda_home is None):
        raise RuntimeError(
            "NESTED_KERNELS_BUILD=cuda needs a CUDA build of torch and the CUDA toolkit (nvcc): "
            f"torch.version.cuda={torch_cuda}, CUDA toolkit={cuda_home}"
        )
    if not mode:
        mode = "cuda" if torch_cuda is not None and cuda_home is not None else "cpu"
    return mode


def available_memory_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def set_default_max_jobs():
    """MAX_JOBS = free RAM / 5 GB per compile job, at least 1, at most the core count."""
    if os.environ.get("MAX_JOBS"):
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    jobs = max(1, min(cores, available_memory_bytes() // (5 * 1024**3)))
    os.environ["MAX_JOBS"] = str(jobs)


def libstdcxx_link_flags():
    """Link flags that keep a second, private copy of libstdc++ out of `_C` (Linux).

    torch's libraries use the shared libstdc++.so.6. A compiler driver that links libstdc++
    statically (seen: the /opt/gcc/bin/g++ of a CUDA image, torch 2.11, Python 3.12, g++ 13)
    copies the parts `_C` uses from libstdc++.a into it; the two copies do not share their
    iostream/locale state (with the -Wl,-Bsymbolic-functions of Debian/Ubuntu Pythons, `_C`'s
    calls bind to its own copy). There the first number streamed into an error message (a
    TORCH_CHECK naming a shape: `got shape [2, 10, 2]`) crashed the interpreter with a
    segmentation fault in std::ostream::_M_insert<long> instead of raising. An explicit -lstdc++,
    placed before the driver's own (static) one, binds every libstdc++ symbol to the shared
    library; --exclude-libs keeps anything still taken from a static archive private to `_C`.
    """
    if not sys.platform.startswith("linux"):
        return []
    return ["-lstdc++", "-Wl,--exclude-libs,ALL"]


def packages():
    """nested_kernels*, plus triton_kernels/ installed as nested_kernels.triton_kernels (SPEC §0)."""
    pkgs = find_packages(where=str(ROOT), include=["nested_kernels", "nested_kernels.*"])
    pkgs.append("nested_kernels.triton_kernels")
    pkgs += ["nested_kernels.triton_kernels." + p for p in find_packages(where=str(ROOT / "triton_kernels"))]
    return pkgs


def extensions():
    """(ext_modules, cmdclass) for the build mode."""
    mode = os.environ.get("NESTED_KERNELS_BUILD", "").strip().lower()
    if mode == "none":
        return [], {}

    cuda_home = find_cuda_home()
    if cuda_home is not None:
        os.environ.setdefault("CUDA_HOME", cuda_home)  # before torch.utils.cpp_extension reads it
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    mode = build_mode(torch.version.cuda, cuda_home)
    sources = read_sources()
    set_default_max_jobs()

    defines = [f'-DNK_TORCH_VERSION="{torch.__version__}"']
    # No -std: torch.utils.cpp_extension adds the standard its headers need (-std=c++17 with
    # torch 2.11, -std=c++20 with torch 2.14).
    cxx_flags = ["-O3", "-fopenmp"]
    link_flags = ["-fopenmp"] + libstdcxx_link_flags()
    kwargs = dict(include_dirs=[str(CSRC)], extra_link_args=link_flags)

    if mode == "cuda":
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_CUDA_ARCHS
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs  # read by torch when it writes the -gencode flags
        defines += ["-DNK_WITH_CUDA=1", f'-DNK_CUDA_ARCHS="{archs}"']
        nvcc_flags = ["-O3", "-lineinfo"]
        ext = CUDAExtension(
            "nested_kernels._C",
            sources=sources["cpu"] + sources["cuda"],
            extra_compile_args={"cxx": cxx_flags + defines, "nvcc": nvcc_flags + defines},
            **kwargs,
        )
    else:
        defines += ["-DNK_WITH_CUDA=0"]
        ext = CppExtension(
            "nested_kernels._C",
            sources=sources["cpu"],
            extra_compile_args={"cxx": cxx_flags + defines},
            **kwargs,
        )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()

setup(
    packages=packages(),
    package_dir={"nested_kernels.triton_kernels": "triton_kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
