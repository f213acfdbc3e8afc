"""Launching a Triton kernel on the device of its tensors: compiled on a GPU, through Triton's
interpreter on the CPU (TRITON_INTERPRET=1, chosen when the package is imported)."""
import functools
import os
from typing import Optional

import torch


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _cuda_arch(index: int) -> int:
    major, minor = torch.cuda.get_device_capability(index)
    return 10 * major + minor


def device_arch(device: torch.device) -> Optional[int]:
    """The compute capability of a CUDA device as the number of its sm_XY (90 for Hopper), which picks
    the launch configurations compiled for it; None elsewhere (the CPU's interpreter)."""
    if device.type != "cuda":
        return None
    return _cuda_arch(device.index if device.index is not None else torch.cuda.current_device())


# CUDA's grid limits: 2^31 − 1 programs on axis 0, 65535 on axes 1 and 2. The memory ops'
# launchers put what grows with the input (sequences × heads, chunks) on axis 0; cms keeps batch
# and row tiles on axes 2 and 1.
GRID_LIMITS = (2**31 - 1, 65535, 65535)


def launch(kernel, grid: tuple, device: torch.device, *args, **kwargs):
    """`kernel[grid](*args, **kwargs)`, refusing a device the kernels cannot run on in this process
    and a grid beyond CUDA's limits (checked in the interpreter too, which has none)."""
    if (device.type == "cpu") != interpreted():
        mode = "interpreted (TRITON_INTERPRET=1)" if interpreted() else "compiled for the GPU"
        raise RuntimeError(f"Triton kernels are {mode} in this process; they cannot run on {device} tensors")
    if len(grid) > len(GRID_LIMITS):
        raise ValueError(f"{kernel.__name__}: grid {tuple(grid)} has {len(grid)} axes, CUDA has {len(GRID_LIMITS)}")
    for axis, (size, limit) in enumerate(zip(grid, GRID_LIMITS)):
        if size > limit:
            raise ValueError(f"{kernel.__name__}: grid {tuple(grid)} has {size} programs on axis {axis}, "
                             f"CUDA allows at most {limit}: the input is too large for this kernel")
    return kernel[grid](*args, **kwargs)
