import os
import sys

import pytest
import torch

# Before anything imports Triton: on a machine without a GPU this selects Triton's interpreter,
# so the triton backends run on CPU tensors (see triton_kernels/__init__.py).
import nested_kernels.triton_kernels  # noqa: F401,E402
from tests.helpers import cuda_fault  # noqa: E402


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(42)


@pytest.fixture(autouse=True)
def cuda_fault_ends_process(request):
    """A kernel fault (an illegal memory access) poisons the process's CUDA context: every later
    test in it fails with the same error and the culprit is lost among them (the H200 run of
    2026-11-26: one fault, 128 errors). After each test, a fault ends the process: under
    pytest-xdist the worker is replaced (the test it crashed in is reported) and the rest run on a
    fresh context; in one process the run stops, naming the test."""
    yield
    message = cuda_fault(request.node.nodeid)
    if message is not None:
        if os.environ.get("PYTEST_XDIST_WORKER"):
            capture = request.config.pluginmanager.getplugin("capturemanager")
            if capture is not None:                                           # or the message is lost
                capture.suspend_global_capture(in_=True)
            sys.stderr.write(message + "\n")
            sys.stderr.flush()
            os._exit(70)
        pytest.exit(message, returncode=70)


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch):
    """Fill fresh float tensors (torch.empty, torch.empty_like) with NaN so an output a kernel
    forgets to write fails its test (fla)."""
    def poisoning(allocate):
        def poisoned(*args, **kwargs):
            out = allocate(*args, **kwargs)
            if out.is_floating_point():
                out.fill_(float("nan"))
            return out
        return poisoned

    monkeypatch.setattr(torch, "empty", poisoning(torch.empty))
    monkeypatch.setattr(torch, "empty_like", poisoning(torch.empty_like))


@pytest.fixture
def interpreter_memcheck():
    """On a CPU (Triton interpreted), every load and store of a kernel must stay inside the
    launch's tensors (tests/triton_memcheck.py); on a GPU, nothing to do. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("interpreter_memcheck")`."""
    if torch.cuda.is_available():
        yield
        return
    from tests.triton_memcheck import memcheck

    with memcheck():
        yield
