"""Triton launch grids within CUDA's limits (`triton_kernels/utils/launch.py`): the launcher refuses
a grid beyond them with a clear error, and every kernel of the memory ops puts what grows with the
input (sequences × heads, chunks) on axis 0, the one allowed 2^31 − 1 programs, so axes 1 and 2
(at most 65535) depend only on the head count and the feature sizes."""
import pytest
import torch

pytest.importorskip("triton")

import triton  # noqa: E402

from nested_kernels import linear_memory, mlp_memory  # noqa: E402
from nested_kernels.mlp_memory import MLPMemoryState  # noqa: E402
from nested_kernels.triton_kernels.utils.launch import launch  # noqa: E402
from tests.helpers import gates, mlp_state, qkv, record_launches  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

pytestmark = pytest.mark.usefixtures("interpreter_memcheck")   # tests/conftest.py


@triton.jit
def _never_launched(x):
    pass


@pytest.mark.parametrize("grid, axis, limit", [
    ((2**31, 1, 1), 0, 2**31 - 1), ((1, 65536), 1, 65535), ((4, 2, 70000), 2, 65535),
], ids=["axis0", "axis1", "axis2"])
def test_launch_refuses_a_grid_beyond_cuda_limits(grid, axis, limit):
    with pytest.raises(ValueError, match=rf"_never_launched: grid .* {grid[axis]} programs on axis {axis}.* {limit}"):
        launch(_never_launched, grid, DEVICE, torch.zeros(1, device=DEVICE))


def test_launch_refuses_a_fourth_axis():
    with pytest.raises(ValueError, match=r"_never_launched: grid \(1, 1, 1, 1\) has 4 axes, CUDA has 3"):
        launch(_never_launched, (1, 1, 1, 1), DEVICE, torch.zeros(1, device=DEVICE))


class _RecordingKernel:
    """Stands for a jitted kernel: records the grid it is launched on, runs nothing."""
    __name__ = "recording_kernel"

    def __init__(self):
        self.grids = []

    def __getitem__(self, grid):
        self.grids.append(grid)
        return lambda *args, **kwargs: None


def test_launch_takes_a_grid_at_cuda_limits():
    kernel = _RecordingKernel()
    launch(kernel, (2**31 - 1, 65535, 65535), DEVICE)
    assert kernel.grids == [(2**31 - 1, 65535, 65535)]


def _run_linear_memory(cu_seqlens, H=2, K=16):
    T = int(cu_seqlens[-1])
    leaves = [x.to(DEVICE).requires_grad_() for x in (*qkv(1, T, H, K, K, dtype=torch.float32),
                                                      *gates(1, T, H, dtype=torch.float32))]
    o, _ = linear_memory(*leaves, dgd=True, chunk_size=16, cu_seqlens=cu_seqlens.to(DEVICE), backend="triton")
    o.sum().backward()


def _run_mlp_memory(cu_seqlens, H=2, K=16):
    T, N = int(cu_seqlens[-1]), cu_seqlens.numel() - 1
    leaves = [x.to(DEVICE).requires_grad_() for x in (*qkv(1, T, H, K, K, dtype=torch.float32),
                                                      *gates(1, T, H, dtype=torch.float32))]
    state = MLPMemoryState(*(x.float().to(DEVICE) for x in mlp_state(N, H, K, K, K)))
    o, _ = mlp_memory(*leaves, initial_state=state, dgd=True, chunk_size=16, cu_seqlens=cu_seqlens.to(DEVICE),
                      backend="triton")
    o.sum().backward()


@pytest.mark.parametrize("run_op", [_run_linear_memory, _run_mlp_memory], ids=["linear_memory", "mlp_memory"])
def test_sequences_and_chunks_grow_axis_zero_only(monkeypatch, run_op):
    """One sequence of one chunk, then three sequences of 1, 2 and 1 chunks (one partial): every
    kernel's axes 1 and 2 stay the same, forward and backward."""
    grids = []
    for cu_seqlens in ([0, 16], [0, 16, 48, 53]):
        calls = record_launches(monkeypatch)
        run_op(torch.tensor(cu_seqlens))
        by_kernel = {}
        for name, grid, _ in calls:
            by_kernel.setdefault(name, set()).add(grid[1:])
        grids.append(by_kernel)
        monkeypatch.undo()
    small, large = grids
    assert any("bwd" in name for name in small) and small.keys() == large.keys()
    assert small == large
