"""tests/conftest.py ends a process whose CUDA context a test poisoned: the check it runs after
each test (`tests.helpers.cuda_fault`), on a fake `torch.cuda` (no GPU here)."""
from types import SimpleNamespace

from tests.helpers import cuda_fault


def _fake_cuda(synchronize, initialized=True):
    return SimpleNamespace(is_available=lambda: True, is_initialized=lambda: initialized, synchronize=synchronize)


def test_fault_names_the_test_and_the_error():
    def synchronize():
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nSearch for ...")
    assert cuda_fault("tests/x.py::test_y[a]", _fake_cuda(synchronize)) == (
        "CUDA context poisoned during tests/x.py::test_y[a]: CUDA error: an illegal memory access was encountered")


def test_no_fault():
    assert cuda_fault("t", _fake_cuda(lambda: None)) is None


def test_unused_cuda_is_not_touched():
    def synchronize():
        raise AssertionError("synchronize called before CUDA was initialised")
    assert cuda_fault("t", _fake_cuda(synchronize, initialized=False)) is None
