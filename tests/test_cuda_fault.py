"""tests/conftest.py ends a process whose CUDA context a test poisoned: the check it runs after
each test (`tests.helpers.cuda_fault`), with CUDA's state faked on a machine without a GPU."""
import torch

from tests.helpers import cuda_fault


def _fake_cuda(monkeypatch, synchronize, initialized=True):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: initialized)
    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)


def test_fault_names_the_test_and_the_error(monkeypatch):
    def synchronize():
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nSearch for ...")
    _fake_cuda(monkeypatch, synchronize)
    assert cuda_fault("tests/x.py::test_y[a]") == (
        "CUDA context poisoned during tests/x.py::test_y[a]: CUDA error: an illegal memory access was encountered")


def test_no_fault(monkeypatch):
    _fake_cuda(monkeypatch, lambda: None)
    assert cuda_fault("t") is None


def test_unused_cuda_is_not_touched(monkeypatch):
    def synchronize():
        raise AssertionError("synchronize called before CUDA was initialised")
    _fake_cuda(monkeypatch, synchronize, initialized=False)
    assert cuda_fault("t") is None
