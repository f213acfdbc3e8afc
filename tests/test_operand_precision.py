"""Which devices get fp32 copies of 16-bit inputs before the Triton kernels (operand_precision.py)."""
import pytest
import torch

pytest.importorskip("triton")

from nested_kernels.triton_kernels.utils import operand_precision as op  # noqa: E402

CUDA = torch.device("cuda", 0)


@pytest.fixture
def compiled(monkeypatch):
    """Pretend the kernels are compiled for a GPU of a chosen capability and Triton version."""
    monkeypatch.setattr(op, "interpreted", lambda: False)
    monkeypatch.delenv("NESTED_KERNELS_TRITON_16BIT_DOTS", raising=False)
    op._hopper_with_broken_triton.cache_clear()

    def set_gpu(capability, triton_version):
        import triton
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
        monkeypatch.setattr(triton, "__version__", triton_version)
        op._hopper_with_broken_triton.cache_clear()

    yield set_gpu
    op._hopper_with_broken_triton.cache_clear()


@pytest.mark.parametrize("capability,version,upcast", [
    ((9, 0), "3.6.0", True), ((9, 0), "3.7.0", True), ((9, 0), "3.4.0", True), ((9, 0), "3.7.1", False),
    ((9, 0), "3.8.0+git1234", False), ((8, 0), "3.6.0", False), ((10, 0), "3.6.0", False),
], ids=lambda x: "-".join(map(str, x)) if isinstance(x, tuple) else str(x))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_hopper_triton_versions(compiled, capability, version, upcast, dtype):
    compiled(capability, version)
    reason = op.fp32_operands_reason(CUDA, dtype)
    assert (reason is not None) == upcast, reason
    if upcast:
        assert version in reason and "#640" in reason


def test_fp32_inputs_never_change(compiled):
    compiled((9, 0), "3.6.0")
    assert op.fp32_operands_reason(CUDA, torch.float32) is None


def test_opt_out(compiled, monkeypatch):
    compiled((9, 0), "3.6.0")
    monkeypatch.setenv("NESTED_KERNELS_TRITON_16BIT_DOTS", "1")
    assert op.fp32_operands_reason(CUDA, torch.bfloat16) is None


def test_interpreter_bf16_only(monkeypatch):
    monkeypatch.setattr(op, "interpreted", lambda: True)
    monkeypatch.delenv("NESTED_KERNELS_TRITON_16BIT_DOTS", raising=False)
    cpu = torch.device("cpu")
    assert "interpreter" in op.fp32_operands_reason(cpu, torch.bfloat16)
    assert op.fp32_operands_reason(cpu, torch.float16) is None
