"""Launching a Triton kernel on the device of its tensors: compiled on a GPU, through Triton's
interpreter on the CPU (TRITON_INTERPRET=1, chosen when the package is imported)."""
import os

import torch


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def launch(kernel, grid, device: torch.device, *args, **kwargs):
    """`kernel[grid](*args, **kwargs)`, refusing a device the kernels cannot run on in this process."""
    if (device.type == "cpu") != interpreted():
        mode = "interpreted (TRITON_INTERPRET=1)" if interpreted() else "compiled for the GPU"
        raise RuntimeError(f"Triton kernels are {mode} in this process; they cannot run on {device} tensors")
    return kernel[grid](*args, **kwargs)
