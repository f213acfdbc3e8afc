"""Which devices run the Triton kernels' products on fp32 operands for 16-bit inputs, as fp32 copies or
converted loads (operand_precision.py)."""
import pytest
import torch

pytest.importorskip("triton")

from nested_kernels.triton_kernels.utils import launch, operand_precision as op  # noqa: E402
from tests.helpers import record_launches  # noqa: E402

CUDA = torch.device("cuda", 0)


@pytest.fixture
def compiled(monkeypatch):
    """Pretend the kernels are compiled for a GPU of a chosen capability and Triton version."""
    monkeypatch.setattr(op, "interpreted", lambda: False)
    monkeypatch.delenv("NESTED_KERNELS_TRITON_16BIT_DOTS", raising=False)
    launch._cuda_arch.cache_clear()

    def set_gpu(capability, triton_version):
        import triton
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
        monkeypatch.setattr(triton, "__version__", triton_version)
        launch._cuda_arch.cache_clear()

    yield set_gpu
    launch._cuda_arch.cache_clear()


@pytest.mark.parametrize("capability,version,upcast", [
    ((9, 0), "3.6.0", True), ((9, 0), "3.7.0", True), ((9, 0), "3.4.0", True), ((9, 0), "3.7.1", False),
    ((9, 0), "3.7+git1a2b", True),
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


@pytest.fixture
def allow_tf32():
    """Set torch's switch for tf32 fp32 matrix products (a property, so not monkeypatch) for one test."""
    saved = torch.backends.cuda.matmul.allow_tf32

    def set_allow_tf32(value: bool):
        torch.backends.cuda.matmul.allow_tf32 = value
    yield set_allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("dtype, tf32_allowed, expected", [
    (torch.bfloat16, False, "tf32"), (torch.float16, False, "tf32"), (torch.float32, False, "ieee"),
    (torch.float32, True, "tf32"), (torch.bfloat16, True, "tf32"),
], ids=lambda x: str(x).replace("torch.", ""))
def test_dot_precision(allow_tf32, dtype, tf32_allowed, expected):
    """From the op's input dtype; fp32 follows torch's switch for tf32 matrix products."""
    allow_tf32(tf32_allowed)
    assert op.dot_precision(dtype) == expected


def _linear_memory(dtype, K, C):
    from nested_kernels import linear_memory
    from tests.helpers import gates, qkv

    q, k, v = (x.to(dtype).requires_grad_() for x in qkv(1, C, 1, K, K))
    lr, retention, momentum = (x.float() for x in gates(1, C, 1))
    o, _ = linear_memory(q, k, v, lr, retention, momentum, dgd=True, chunk_size=C, backend="triton")
    o.float().sum().backward()


def _mlp_memory(dtype, K, C):
    from nested_kernels import mlp_memory
    from nested_kernels.mlp_memory import MLPMemoryState
    from tests.helpers import gates, mlp_state, qkv

    q, k, v = (x.to(dtype).requires_grad_() for x in qkv(1, C, 1, K, K))
    lr, retention, momentum = (x.float() for x in gates(1, C, 1))
    state = MLPMemoryState(*(x.float() for x in mlp_state(1, 1, K, K, K)))
    o, _ = mlp_memory(q, k, v, lr, retention, momentum, initial_state=state, dgd=True, chunk_size=C, backend="triton")
    o.float().sum().backward()


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreted run: the CPU's fp32 operands of bf16 inputs")
@pytest.mark.parametrize("dtype, expected", [(torch.bfloat16, "tf32"), (torch.float32, "ieee")],
                         ids=["bf16", "fp32"])
@pytest.mark.parametrize("run_op", [_linear_memory, _mlp_memory], ids=["linear_memory", "mlp_memory"])
def test_kernels_take_the_inputs_precision(monkeypatch, allow_tf32, run_op, dtype, expected):
    """bf16 products run on fp32 operands here (the interpreter's reason, the same path as Hopper's
    with Triton < 3.7.1): fp32 copies for mlp_memory, loads converted in every kernel that takes
    q, k or v for linear_memory (FP32_OPERANDS). Every forward and backward product still runs at
    the bf16 inputs' precision, tf32, not fp32's "ieee"; fp32 inputs keep exact fp32 products, but
    for the DGD inverse's backward, which runs three-pass tf32 (close to fp32: exact spilled)."""
    allow_tf32(False)
    calls = record_launches(monkeypatch)
    run_op(dtype, 16, 16)
    if run_op is _linear_memory:
        operands = [(kw["FP32_OPERANDS"], kw["k"].dtype) for name, _, kw in calls if name.startswith("linear_memory")]
        assert len(operands) >= 6 and set(operands) == {(True, dtype)}, operands
        (dv,) = [kw["dv"] for name, _, kw in calls if name == "linear_memory_bwd_kernel_dk"]
        assert dv.dtype == dtype                                              # stored by the kernel, not converted
    precisions = {name: kw["DOT_PRECISION"] for name, _, kw in calls if "DOT_PRECISION" in kw}
    assert any("bwd" in name for name in precisions) and any("fwd" in name for name in precisions), precisions
    exact_fp32_instead = {"dgd_inverse_bwd_kernel": "tf32x3"} if expected == "ieee" else {}
    assert precisions == {name: exact_fp32_instead.get(name, expected) for name in precisions}, precisions


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreted run: the CPU's fp32 operands of bf16 inputs")
def test_fp32_operands_take_their_launch_configs(monkeypatch):
    """bf16 inputs whose products run on fp32 operands get the fp32-operand entries of the launch
    table (fewer pipeline stages for the reverse recurrence at K = 64 with 64-token chunks: two
    stages do not fit shared memory)."""
    from nested_kernels.triton_kernels.linear_memory.configs import launch_config

    assert launch_config("bwd_dh", 64, 64, 64, fp32_operands=True) != launch_config("bwd_dh", 64, 64, 64)
    calls = record_launches(monkeypatch)
    _linear_memory(torch.bfloat16, 64, 64)
    (stages,) = [kw["num_stages"] for name, _, kw in calls if name == "linear_memory_bwd_kernel_dh"]
    assert stages == launch_config("bwd_dh", 64, 64, 64, fp32_operands=True).num_stages


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreted run: the CPU's fp32 operands of bf16 inputs")
@pytest.mark.parametrize("K,C,copied", [(64, 64, False), (128, 64, False), (256, 32, False), (256, 64, True)],
                         ids=["K64-C64-converted", "K128-C64-converted", "K256-C32-converted", "K256-C64-copied"])
def test_linear_memory_copies_where_converted_loads_spill(monkeypatch, K, C, copied):
    """bf16 inputs whose products need fp32 operands reach linear_memory's kernels as they are, their
    loads converted in the kernels, but for the backward at K = 256 with 64-token chunks, where
    converted loads spill the reverse recurrence (`configs.converts_loads`): its kernels (the chunk
    states' recomputation included) get fp32 copies; the forward's still convert."""
    from nested_kernels import linear_memory
    from tests.helpers import gates, qkv

    calls = record_launches(monkeypatch)
    q, k, v = (x.to(torch.bfloat16).requires_grad_() for x in qkv(1, 4, 1, K, K))
    lr, retention, momentum = (x.float() for x in gates(1, 4, 1))
    o, _ = linear_memory(q, k, v, lr, retention, momentum, chunk_size=C, backend="triton")
    forward = len(calls)
    o.float().sum().backward()
    operands = lambda launches: {(kw["k"].dtype, kw["FP32_OPERANDS"]) for name, _, kw in launches
                                 if name.startswith("linear_memory")}
    assert operands(calls[:forward]) == {(torch.bfloat16, True)}
    assert operands(calls[forward:]) == {(torch.float32 if copied else torch.bfloat16, True)}, operands(calls[forward:])
    assert {"linear_memory_fwd_kernel_h", "linear_memory_bwd_kernel_dh"} <= {name for name, _, _ in calls[forward:]}
    assert (q.grad.dtype, k.grad.dtype, v.grad.dtype) == (torch.bfloat16,) * 3


def test_warning_names_the_op_at_its_callers_line(compiled, monkeypatch):
    """The RuntimeWarning of `warn_fp32_operands` names the op and points `stacklevel` frames up from
    its caller (linear_memory warns once per call, from outside its custom ops)."""
    import inspect
    import types

    from nested_kernels.common.triton_backend import warn_fp32_operands

    compiled((9, 0), "3.6.0")
    monkeypatch.setattr(launch, "interpreted", lambda: False)
    q = types.SimpleNamespace(device=CUDA, dtype=torch.bfloat16)

    def backend_entry():                                     # stands for linear_memory_triton
        return warn_fp32_operands(q, "linear_memory", stacklevel=2)

    with pytest.warns(RuntimeWarning, match=r"linear_memory\(backend='triton'\): Triton 3\.6\.0 .*#640") as record:
        line = inspect.currentframe().f_lineno + 1
        reason = backend_entry()
    assert reason is not None and len(record) == 1
    assert (record[0].filename, record[0].lineno) == (__file__, line)
    compiled((9, 0), "3.7.1")
    assert warn_fp32_operands(q, "linear_memory", stacklevel=2) is None
