"""The triton backend of `linear_memory` against the reference (SPEC §2, §7): outputs, final
state and every gradient (the final state in the loss). Without a GPU the kernels run in Triton's
interpreter on small shapes; the `gpu` tests run the full matrix."""
import itertools

import pytest
import torch

from nested_kernels import linear_memory
from nested_kernels.linear_memory import LinearMemoryState
from tests.helpers import gates, linear_state, qkv, record_launches, rms_ratio

pytest.importorskip("triton")

NAMES = ("o", "memory", "momentum")
GRAD_NAMES = ("dq", "dk", "dv", "dlr", "dretention", "dmomentum", "dh0_memory", "dh0_momentum")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


pytestmark = pytest.mark.usefixtures("interpreter_memcheck")   # tests/conftest.py


def run(backend, inputs, h0, dtype, final_state=True, **kw):
    """Forward and backward of one backend; q, k, v in `dtype`, gates and states as given; the loss
    reads the final state when `final_state` (its memory alone when "memory", its momentum alone
    when "momentum", the state without the output when "state")."""
    q, k, v, *gate_tensors = inputs
    leaves = [x.to(DEVICE, dtype).requires_grad_() for x in (q, k, v)]
    gate_leaves = [None if x is None else x.to(DEVICE).requires_grad_() for x in gate_tensors]
    state = None if h0 is None else LinearMemoryState(*(None if x is None else x.to(DEVICE).requires_grad_() for x in h0))
    o, final = linear_memory(*leaves, *gate_leaves, initial_state=state, output_final_state=bool(final_state),
                             backend=backend, **kw)
    if not final_state:
        outputs = [o]
    else:
        loss_reads = {"memory": [o, final.memory], "momentum": [o, final.momentum], "state": list(final)}
        outputs = loss_reads.get(final_state, [o, *final])
    gen = torch.Generator().manual_seed(1)
    cotangents = [None if x is None else torch.randn(x.shape, generator=gen, dtype=torch.float64) for x in outputs]
    loss = sum((x * c.to(x)).sum() for x, c in zip(outputs, cotangents) if x is not None)
    wrt = leaves + gate_leaves + ([None, None] if state is None else list(state))
    grads = torch.autograd.grad(loss, [x for x in wrt if x is not None], materialize_grads=True)   # q: zero
    it = iter(grads)
    return outputs, [None if x is None else next(it) for x in wrt]


def check(B, T, H, K, V, C, use_mom, dgd, use_h0, cu_seqlens=None, dtype=torch.float32, final_state=True):
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    q, k, v = (x.to(dtype).double() for x in qkv(B, T, H, K, V))             # the kernel's rounded inputs
    inputs = (q, k, v, *gates(B, T, H, momentum=use_mom))
    h0 = linear_state(N, H, K, V, momentum=use_mom) if use_h0 else None
    kw = dict(dgd=dgd, chunk_size=C, scale=K**-0.5)
    cu = None if cu_seqlens is None else cu_seqlens.to(DEVICE)
    ref_out, ref_grads = run("reference", inputs, h0, torch.float64, final_state, cu_seqlens=cu, **kw)
    f32 = lambda xs: [None if x is None else x.float() for x in xs]
    h0_32 = None if h0 is None else LinearMemoryState(*f32(h0))
    out, out_grads = run("triton", (*f32(inputs[:3]), *f32(inputs[3:])), h0_32, dtype, final_state, cu_seqlens=cu, **kw)
    assert out[0].dtype == dtype and all(s.dtype == torch.float32 for s in out[1:] if s is not None)
    fwd_bound, bwd_bound = (1e-5, 1e-5) if dtype == torch.float32 else (5e-3, 1e-2)
    for names, refs, outs, bound in ((NAMES, ref_out, out, fwd_bound), (GRAD_NAMES, ref_grads, out_grads, bwd_bound)):
        for name, r, o in zip(names, refs, outs):
            if r is None:
                assert o is None, name
                continue
            assert not o.isnan().any(), name
            assert rms_ratio(r, o) <= bound, (name, rms_ratio(r, o))


SMALL = [
    # B, T, H, K, V, chunk, momentum, dgd, initial state
    (2, 40, 2, 16, 16, 16, True, True, True),
    (2, 40, 2, 20, 36, 16, True, False, False),
    (1, 70, 1, 16, 16, 32, False, True, True),
    (2, 64, 2, 8, 24, 64, False, False, True),
    (1, 100, 2, 32, 32, 64, True, True, False),
    (2, 1, 1, 16, 16, 16, True, True, True),
    (1, 16, 128, 16, 16, 16, False, False, True),   # the most heads the issue names
]


@pytest.mark.parametrize("B,T,H,K,V,C,use_mom,dgd,use_h0",
                         [pytest.param(*c, id="B{}-T{}-H{}-K{}-V{}-C{}-mom{}-dgd{}-h0{}".format(*c)) for c in SMALL])
def test_triton_chunk(B, T, H, K, V, C, use_mom, dgd, use_h0):
    check(B, T, H, K, V, C, use_mom, dgd, use_h0)


def test_triton_chunk_initial_memory_without_momentum_state():
    """An initial state with a memory and no momentum state, with a momentum gate: the momentum
    starts from zeros (as in the reference), and the memory gets its gradient."""
    B, T, H, K, V = 1, 40, 2, 16, 16
    inputs = (*qkv(B, T, H, K, V), *gates(B, T, H))
    h0 = LinearMemoryState(linear_state(B, H, K, V).memory, None)
    kw = dict(dgd=True, chunk_size=16)
    ref_out, ref_grads = run("reference", inputs, h0, torch.float64, **kw)
    f32 = [x.float() for x in inputs]
    out, out_grads = run("triton", f32, LinearMemoryState(h0.memory.float(), None), torch.float32, **kw)
    for names, refs, outs in ((NAMES, ref_out, out), (GRAD_NAMES, ref_grads, out_grads)):
        for name, r, o in zip(names, refs, outs):
            assert (r is None) == (o is None), name
            if r is not None:
                assert rms_ratio(r, o) <= 1e-5, (name, rms_ratio(r, o))


@pytest.mark.parametrize("dgd", [False, True], ids=["plain", "dgd"])
@pytest.mark.parametrize("C", [16, 32, 64], ids=lambda c: f"C{c}")
def test_triton_chunk_varlen(C, dgd):
    """Packed sequences: one shorter than a chunk, one empty, one spanning chunks with a partial tail
    (at 32- and 64-token chunks, one shorter than a chunk but past the first 16 tokens too)."""
    check(1, 150, 2, 16, 16, C, True, dgd, True, cu_seqlens=torch.tensor([0, 5, 5, 45, 150]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_triton_chunk_half(dtype):
    check(2, 50, 2, 32, 32, 16, True, True, True, dtype=dtype)


def test_triton_chunk_value_tiles():
    """V wider than one value tile: the backward sums its partial products over tiles."""
    check(1, 33, 1, 16, 100, 16, True, True, True)


RECURRENT = ("fwd_h", "bwd_dh")  # hold the state as at most two row tiles of BK
RECURRENT_KERNELS = ("linear_memory_fwd_kernel_h", "linear_memory_bwd_kernel_dh")


def key_tiles(monkeypatch, BK, BK_state):
    """The launch table with K read in tiles of at most BK rows (BK_state in the recurrent kernels):
    the K = 256 path of the shipped table, on shapes the interpreter runs fast (the K = 64 rows of
    the table serve the small K of these tests)."""
    from nested_kernels.triton_kernels.linear_memory import configs

    for name in ("TABLE", "FP32_OPERANDS"):
        table = {kernel: {key: (*entry[:3], BK_state if kernel in RECURRENT else BK) for key, entry in rows.items()}
                 for kernel, rows in getattr(configs, name).items()}
        monkeypatch.setattr(configs, name, table)
    for name in ("SM90", "SM90_FP32_OPERANDS"):                                # the same tiles on a Hopper GPU
        monkeypatch.setattr(configs, name, {})


@pytest.mark.parametrize("K,BK,BK_state,C,full",
                         [(40, 16, 32, 16, True), (32, 16, 16, 32, True), (64, 32, 32, 64, True), (32, 16, 16, 16, False)],
                         ids=["K40-BK16-C16", "K32-BK16-C32", "K64-BK32-C64", "K32-BK16-C16-plain"])
def test_triton_chunk_key_tiles(monkeypatch, K, BK, BK_state, C, full):
    """K wider than the key tile (three tiles of 16 with the last one partial for K = 40, two
    state tiles with the second partial): products over K summed across tiles, the states and
    their adjoints held as two row tiles."""
    key_tiles(monkeypatch, BK, BK_state)
    check(1, 70, 1, K, 24, C, full, full, full)  # full: momentum, DGD, initial state


@pytest.mark.parametrize("final_state", [True, False], ids=["final-state", "output-only"])
@pytest.mark.parametrize("K,BK_state,C,use_mom,dgd,dtype",
                         [(32, 32, 16, True, True, torch.float32), (40, 32, 32, True, False, torch.float32),
                          (24, 16, 64, False, True, torch.float32), (16, 16, 64, False, False, torch.float32),
                          (40, 32, 64, True, True, torch.bfloat16)],
                         ids=["K32-C16-mom-dgd", "K40-BK32-C32-mom", "K24-BK16-C64-dgd", "K16-C64-plain",
                              "K40-BK32-C64-mom-dgd-bf16"])
def test_triton_chunk_transposed_states(monkeypatch, K, BK_state, C, use_mom, dgd, dtype, final_state):
    """Both recurrences with their states held transposed (`configs.transposed_states`: sm_90, fp32
    operands, K = 256 or K = 128 with 64-token chunks), on shapes the interpreter runs fast: one
    and two state tiles (the second partial), every chunk size, each combination of momentum and
    DGD, fp32 inputs and bf16 ones whose loads the kernels convert, with and without the final
    state in the loss (which starts the reverse recurrence from dM, dS or from zeros)."""
    from nested_kernels.triton_kernels.linear_memory import configs

    key_tiles(monkeypatch, 16, BK_state)
    monkeypatch.setattr(configs, "transposed_states", lambda kernel, K, BT, fp32_operands, arch: True)
    calls = record_launches(monkeypatch)
    check(1, 70, 2, K, 24, C, use_mom, dgd, True, dtype=dtype, final_state=final_state)
    recurrences = [kw for name, _, kw in calls if name in RECURRENT_KERNELS]
    assert len(recurrences) == 3 and all(kw["TRANSPOSED"] and kw["BK"] == BK_state for kw in recurrences)
    assert {(kw["k"].dtype, kw["FP32_OPERANDS"]) for kw in recurrences} == {(dtype, True)}
    (kw,) = [kw for name, _, kw in calls if name == "linear_memory_bwd_kernel_dh"]
    assert kw["USE_FINAL_STATE_GRADIENT"] == final_state


@pytest.mark.parametrize("final_state", [False, "memory", "momentum", "state"],
                         ids=["output-only", "memory-only", "momentum-only", "state-only"])
def test_triton_chunk_loss_without_final_state(monkeypatch, final_state):
    """A loss that reads the output alone (the reverse recurrence starts from zeros, not from a zero
    tensor read: `USE_FINAL_STATE_GRADIENT` off), the final memory but not the momentum or the
    momentum but not the memory (the adjoint not in the loss passed as zeros: the kernel reads both
    or neither), or the final state but not the output (dO passed as zeros)."""
    calls = record_launches(monkeypatch)
    check(1, 40, 2, 16, 16, 16, True, True, True, final_state=final_state)
    (kw,) = [kw for name, _, kw in calls if name == "linear_memory_bwd_kernel_dh"]
    assert kw["USE_FINAL_STATE_GRADIENT"] == bool(final_state)


def test_triton_chunk_sm90_entries(monkeypatch):
    """The launch entries of sm_90 (`configs.SM90`), run in the interpreter: at K = 64 with 64-token
    chunks the backward's parallel kernels take one key tile of 64 rows (two of 32 elsewhere), so
    their partial sums over key tiles are the sums themselves."""
    from nested_kernels.triton_kernels.utils import launch

    monkeypatch.setattr(launch, "device_arch", lambda device: 90)
    calls = record_launches(monkeypatch)
    check(1, 70, 1, 64, 64, 64, True, True, True)
    parallel = [(name, grid, kw["BK"]) for name, grid, kw in calls if name.startswith("linear_memory_bwd_kernel_d")
                and name != "linear_memory_bwd_kernel_dh"]
    assert len(parallel) == 4 and all(grid[1] == 1 and BK == 64 for _, grid, BK in parallel), parallel


def test_triton_chunk_k256(monkeypatch):
    """The shipped K = V = 256 launch entries themselves (fp32 operands: the table of the fp32 copies
    on Hopper, `configs.SM90` included), at the 64-token chunks whose bf16 run faulted once on an H200
    (benchmarks/results/h200-2026-11-26.md); under the interpreter's memcheck every access stays in
    bounds."""
    from nested_kernels.triton_kernels.utils import launch

    monkeypatch.setattr(launch, "device_arch", lambda device: 90)
    calls = record_launches(monkeypatch)
    check(1, 63, 1, 256, 256, 64, True, True, True)
    check(2, 1, 1, 256, 256, 64, False, False, True)                           # the faulting call's case
    # both recurrences hold their states transposed there (`configs.transposed_states`); the
    # backward runs the forward one again
    transposed = [(name, kw["TRANSPOSED"]) for name, _, kw in calls if name in RECURRENT_KERNELS]
    assert transposed == [("linear_memory_fwd_kernel_h", True), ("linear_memory_fwd_kernel_h", True),
                          ("linear_memory_bwd_kernel_dh", True)] * 2, transposed


def test_triton_chunk_k128_converted_loads(monkeypatch):
    """The shipped sm_90 launch entries at K = V = 128 with 64-token chunks for bf16 inputs whose
    products need fp32 operands (Hopper with Triton < 3.7.1; the interpreter too): their loads are
    converted in the kernels, not copied, both recurrences hold their states transposed
    (`configs.converts_loads`, `configs.transposed_states`), in one 128-row tile, and every kernel
    runs its entry of `configs.SM90_FP32_OPERANDS` (value tiles, warps, stages)."""
    from nested_kernels.triton_kernels.linear_memory import aot, configs
    from nested_kernels.triton_kernels.utils import launch

    monkeypatch.setattr(launch, "device_arch", lambda device: 90)
    calls = record_launches(monkeypatch)
    check(1, 63, 1, 128, 128, 64, True, True, True, dtype=torch.bfloat16)
    recurrences = [(name, kw["TRANSPOSED"], kw["BK"], kw["k"].dtype) for name, _, kw in calls
                   if name in RECURRENT_KERNELS]
    assert recurrences == [(name, True, 128, torch.bfloat16) for name in
                           ("linear_memory_fwd_kernel_h", "linear_memory_fwd_kernel_h", "linear_memory_bwd_kernel_dh")]
    launched = {(name, kw["BV"], kw["num_warps"], kw["num_stages"]) for name, _, kw in calls if "BV" in kw}
    expected = {(aot.KERNELS[part].__name__, *entries[(128, 64)][:3])
                for part, entries in configs.SM90_FP32_OPERANDS.items()}
    assert expected <= launched, expected - launched


def test_triton_chunk_k256_backward_copies(monkeypatch):
    """bf16 inputs at K = V = 256 with 64-token chunks whose products need fp32 operands (Hopper with
    Triton < 3.7.1; the interpreter too): the forward converts its loads, the backward (its
    recomputation of the chunk states included) takes fp32 copies, where converted loads spill its
    recurrence (`configs.converts_loads`); both recurrences hold their states transposed."""
    from nested_kernels.triton_kernels.utils import launch

    monkeypatch.setattr(launch, "device_arch", lambda device: 90)
    calls = record_launches(monkeypatch)
    check(1, 63, 1, 256, 256, 64, True, True, True, dtype=torch.bfloat16)
    recurrences = [(name, kw["TRANSPOSED"], kw["k"].dtype) for name, _, kw in calls if name in RECURRENT_KERNELS]
    assert recurrences == [("linear_memory_fwd_kernel_h", True, torch.bfloat16),
                           ("linear_memory_fwd_kernel_h", True, torch.float32),
                           ("linear_memory_bwd_kernel_dh", True, torch.float32)], recurrences


# the configurations whose bf16 products faulted (or gave a wrong dh0) on the H100 of 2026-11-27
# with Triton 3.6 (benchmarks/results/isolate-triton-h100-2026-11-27.md): B, T, H, K, V, chunk,
# momentum, dgd, initial state
SM90_16BIT_FAULTS = [(2, 1, 1, 256, 256, 64, False, False, True), (2, 150, 1, 64, 64, 64, True, True, True),
                     (2, 150, 1, 256, 256, 64, True, True, True)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter's view of the sm_90 entries: on a card "
                    "the operands follow its Triton (the GPU tests and isolate_triton.py's bf16-raw rows)")
@pytest.mark.parametrize("B,T,H,K,V,C,use_mom,dgd,use_h0", [
    pytest.param(*c, id="B{}-T{}-H{}-K{}-V{}-C{}-mom{}-dgd{}-h0{}".format(*c)) for c in SM90_16BIT_FAULTS])
def test_triton_chunk_sm90_16bit_entries(monkeypatch, B, T, H, K, V, C, use_mom, dgd, use_h0):
    """The sm_90 launch entries of 16-bit operands (what a Hopper runs with Triton >= 3.7.1, or with
    NESTED_KERNELS_TRITON_16BIT_DOTS=1), in the interpreter on fp16 inputs (whose products it
    computes right): every access of every kernel in bounds (memcheck) and every output and
    gradient within the 16-bit bounds, at the configurations that faulted on the H100. Their faults
    there are then not our kernels' addressing, which is the same on a card."""
    from nested_kernels.triton_kernels.utils import launch

    monkeypatch.setattr(launch, "device_arch", lambda device: 90)
    calls = record_launches(monkeypatch)
    check(B, T, H, K, V, C, use_mom, dgd, use_h0, dtype=torch.float16)
    chunk_kernels = [(name, kw) for name, _, kw in calls if name.startswith("linear_memory_")]
    assert chunk_kernels and all(kw["FP32_OPERANDS"] is False and kw["k"].dtype == torch.float16
                                 and not kw.get("TRANSPOSED", False) for _, kw in chunk_kernels), chunk_kernels


def test_triton_unsupported_chunk_size():
    q, k, v = qkv(1, 8, 1, 16, 16, dtype=torch.float32)
    with pytest.raises(NotImplementedError, match=r"chunk_size must be one of \(16, 32, 64\), got 8"):
        linear_memory(q, k, v, 0.1, 1.0, chunk_size=8, backend="triton")


GPU_MATRIX = list(itertools.product((1, 63, 1000), ((64, 64), (128, 128), (100, 60), (256, 256)), (16, 32, 64),
                                    (False, True), (False, True)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("T,KV,C,use_mom,dgd", [pytest.param(*c, id="T{}-KV{}-C{}-mom{}-dgd{}".format(*c))
                                                for c in GPU_MATRIX])
def test_triton_chunk_gpu(T, KV, C, use_mom, dgd, dtype):
    check(2, T, 4, *KV, C, use_mom, dgd, True, dtype=dtype)


# packed sequences at full size (K = V, chunk, DGD; momentum on), in the three input dtypes
GPU_VARLEN = list(itertools.product(((64, 64), (128, 128), (100, 60)), (16, 32, 64), (False, True)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("KV,C,dgd", [pytest.param(*c, id="KV{}-C{}-dgd{}".format(*c)) for c in GPU_VARLEN])
def test_triton_chunk_varlen_gpu(KV, C, dgd, dtype):
    check(1, 300, 4, *KV, C, True, dgd, True, cu_seqlens=torch.tensor([0, 1, 63, 63, 200, 300]), dtype=dtype)


# fp16 at full size (T, K = V, chunk, DGD; momentum on): the dense matrix runs fp32 and bf16
GPU_FP16 = list(itertools.product((63, 1000), ((64, 64), (256, 256)), (16, 64), (False, True)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("T,KV,C,dgd", [pytest.param(*c, id="T{}-KV{}-C{}-dgd{}".format(*c)) for c in GPU_FP16])
def test_triton_chunk_fp16_gpu(T, KV, C, dgd):
    check(2, T, 4, *KV, C, True, dgd, True, dtype=torch.float16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("dgd", [False, True], ids=["plain", "dgd"])
@pytest.mark.parametrize("T", [128, 100], ids=["T128", "T100"])
def test_triton_no_host_sync(T, dgd):
    """A batch call (no cu_seqlens), forward and backward, never waits for the GPU: the host can
    queue the next launches while the kernels run (torch's sync debug mode raises on a sync)."""
    leaves = [x.float().cuda().requires_grad_() for x in (*qkv(2, T, 2, 32, 32), *gates(2, T, 2))]

    def call():
        o, final = linear_memory(*leaves, dgd=dgd, chunk_size=32, output_final_state=True, backend="triton")
        (o.sum() + final.memory.sum()).backward()

    call()                                                                     # compiles, outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        call()
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("keep", [False, True], ids=["recompute", "keep"])
@pytest.mark.parametrize("use_mom,dgd", [(True, True), (False, False)], ids=["mom-dgd", "plain"])
def test_triton_opcheck(use_mom, dgd, keep):
    """The custom op's schema, fake kernel and autograd registration (torch.library.opcheck)."""
    from nested_kernels import keep_chunk_states
    from nested_kernels.linear_memory.triton import triton_op_args

    B, T, H, K, V = 1, 20, 1, 16, 16
    q, k, v = (x.to(DEVICE).requires_grad_() for x in qkv(B, T, H, K, V, dtype=torch.float32))
    lr, ret, mom = (None if x is None else x.to(DEVICE) for x in gates(B, T, H, momentum=use_mom, dtype=torch.float32))
    h0 = LinearMemoryState(*(None if x is None else x.to(DEVICE)
                             for x in linear_state(B, H, K, V, momentum=use_mom, dtype=torch.float32)))
    with keep_chunk_states(keep):
        _, args = triton_op_args(q, k, v, lr, ret, mom, dgd=dgd, chunk_size=16, scale=0.5, initial_state=h0,
                                 cu_seqlens=None)
    args = tuple(x.detach().requires_grad_() if isinstance(x, torch.Tensor) and x.is_floating_point() else x
                 for x in args)
    torch.library.opcheck(torch.ops.nested_kernels.linear_memory_triton_fwd.default, args)


@pytest.mark.parametrize("use_mom,dgd", [(True, True), (False, False)], ids=["mom-dgd", "plain"])
def test_kept_chunk_states_skip_the_recomputation(use_mom, dgd, monkeypatch):
    """Inside keep_chunk_states() the backward uses the forward's chunk states: same gradients, one
    forward pass. (With DGD the forward's K Kᵀ ⊙ G comes from the DGD inverse's kernel and the
    recomputation's from the chunk products: the same sums here, exact fp32 over one block of keys.)"""
    import nested_kernels.triton_kernels.linear_memory.chunk_fwd as chunk_fwd
    from nested_kernels import keep_chunk_states

    forward_passes = []
    run_forward = chunk_fwd.linear_memory_fwd
    monkeypatch.setattr(chunk_fwd, "linear_memory_fwd", lambda *a, **kw: forward_passes.append(1) or run_forward(*a, **kw))
    B, T, H, K, V = 1, 37, 2, 16, 16
    leaves = [x.to(DEVICE).requires_grad_() for x in qkv(B, T, H, K, V, dtype=torch.float32)]
    leaves += [x.to(DEVICE).requires_grad_() for x in gates(B, T, H, momentum=use_mom, dtype=torch.float32) if x is not None]
    grads = []
    for keep in (False, True):
        forward_passes.clear()
        with keep_chunk_states(keep):
            o, final = linear_memory(*leaves[:5], leaves[5] if use_mom else None, dgd=dgd, chunk_size=16,
                                     output_final_state=True, backend="triton")
        grads.append(torch.autograd.grad(o.pow(2).sum() + final.memory.sum(), leaves))
        assert len(forward_passes) == (1 if keep else 2)
    for a, b in zip(*grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
def test_output_kernel_states_in_operand_dtype(monkeypatch, dtype):
    """Chunk states that only the output kernel reads are stored in the kernels' operand dtype,
    the dtype it casts them to for its products: the output equals, bit for bit, that of the fp32
    states kept for the backward (fp16 halves their bytes; bf16 products run on fp32 operands on
    the CPU, and its states must stay fp32). q reaches the kernels in its own dtype either way:
    they convert their loads, no fp32 copy is made. The output kernel forms R itself, so the
    recurrence stores it only when the states are kept."""
    from nested_kernels import keep_chunk_states
    from nested_kernels.triton_kernels.utils.operand_precision import operand_dtype

    calls = record_launches(monkeypatch)
    q, k, v = (x.to(DEVICE, dtype) for x in qkv(2, 40, 2, 16, 16))
    lr, ret, mom = (x.to(DEVICE, torch.float32) for x in gates(2, 40, 2))
    outputs = []
    for keep in (False, True):
        calls.clear()
        with keep_chunk_states(keep):
            o, _ = linear_memory(q, k, v, lr, ret, mom, dgd=True, chunk_size=16, backend="triton")
        (kw,) = [kw for name, _, kw in calls if name == "linear_memory_fwd_kernel_o"]
        assert kw["q"].dtype == dtype and kw["FP32_OPERANDS"] == (operand_dtype(q.device, dtype) == torch.float32)
        assert kw["h"].dtype == kw["s"].dtype == (torch.float32 if keep else operand_dtype(q.device, dtype))
        (kw,) = [kw for name, _, kw in calls if name == "linear_memory_fwd_kernel_h"]
        assert kw["STORE_RES"] == keep and (kw["res"] is None) != keep          # R is stored for the backward only
        outputs.append(o)
    assert torch.equal(*outputs)


def test_backward_recomputes_the_states_only(monkeypatch):
    """Without kept states the backward runs the forward's state recurrence again, not its output
    kernel, and builds the BT × BT chunk products (DGD's included) once for both; the forward takes
    DGD's K Kᵀ ⊙ G from the DGD inverse's kernel, without the chunk products."""
    calls = record_launches(monkeypatch)
    leaves = [x.to(DEVICE).requires_grad_() for x in (*qkv(1, 20, 1, 16, 16, dtype=torch.float32),
                                                      *gates(1, 20, 1, momentum=False, dtype=torch.float32)[:2])]
    o, _ = linear_memory(*leaves, dgd=True, chunk_size=16, backend="triton")
    forward = [name for name, *_ in calls]
    o.sum().backward()
    backward = [name for name, *_ in calls[len(forward):]]
    assert forward.count("linear_memory_fwd_kernel_o") == 1 and "linear_memory_fwd_kernel_o" not in backward
    assert backward.count("linear_memory_fwd_kernel_h") == 1 and "linear_memory_bwd_kernel_dh" in backward
    assert backward.count("chunk_products_kernel") == 1
    assert "chunk_products_kernel" not in forward and forward.count("dgd_inverse_kernel") == 1


@pytest.mark.parametrize("dtype,dgd", [(torch.float32, True), (torch.bfloat16, False)], ids=["fp32-dgd", "bf16-plain"])
def test_triton_compile_fullgraph(dtype, dgd):
    """torch.compile(fullgraph=True) traces the op (opaque, through its fake kernels) with the gate
    algebra, forward and backward: bf16 without DGD takes the path without E and with bf16 dV."""
    B, T, H, K, V = 2, 32, 2, 16, 16
    leaves = [x.to(DEVICE, dtype).requires_grad_() for x in qkv(B, T, H, K, V)]
    lr, ret, mom = (x.to(DEVICE) for x in gates(B, T, H, dtype=torch.float32))

    def fn(q, k, v, lr, ret, mom):
        o, state = linear_memory(q, k, v, lr, ret, mom, dgd=dgd, chunk_size=16, output_final_state=True,
                                 backend="triton")
        return o, state.memory

    compiler = "inductor" if DEVICE == "cuda" else "aot_eager"
    results = []
    for run in (fn, torch.compile(fn, fullgraph=True, backend=compiler)):
        o, memory = run(*leaves, lr, ret, mom)
        results.append((o, memory, *torch.autograd.grad(o.float().sum() + memory.sum(), leaves)))
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    for e, a in zip(*results):
        assert a.dtype == e.dtype
        torch.testing.assert_close(a, e, **tol)


def test_triton_compile_loss_without_final_state(monkeypatch):
    """Under torch.compile a loss that reads the output alone still reaches the backward without a
    final-state gradient (None, not zeros: `USE_FINAL_STATE_GRADIENT` off, as in eager mode)."""
    leaves = [x.to(DEVICE, torch.float32).requires_grad_() for x in qkv(1, 32, 1, 16, 16)]
    lr, ret, mom = (x.to(DEVICE) for x in gates(1, 32, 1, dtype=torch.float32))

    def fn(q, k, v):
        o, _ = linear_memory(q, k, v, lr, ret, mom, chunk_size=16, output_final_state=True, backend="triton")
        return o

    calls = record_launches(monkeypatch)
    compiled = torch.compile(fn, fullgraph=True, backend="inductor" if DEVICE == "cuda" else "aot_eager")
    torch.autograd.grad(compiled(*leaves).sum(), leaves)
    assert [kw["USE_FINAL_STATE_GRADIENT"] for name, _, kw in calls if name == "linear_memory_bwd_kernel_dh"] == [False]


def test_double_backward_raises():
    """The backward is first-order: differentiating the gradients raises (the eager path of
    common/eager_ops.py as the custom op), instead of treating the kernels as constants."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 32, 2, 16, generator=gen).to(DEVICE).requires_grad_() for _ in range(3))
    lr, ret = (torch.rand(1, 32, 2, generator=gen).to(DEVICE) for _ in range(2))
    o, _ = linear_memory(q, k, v, lr, ret, chunk_size=16, backend="triton")
    (dq,) = torch.autograd.grad(o.sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="first-order"):
        dq.pow(2).sum().backward()


@pytest.mark.parametrize("use_mom,dgd", [(False, False), (True, True)], ids=["plain", "mom-dgd"])
def test_one_autograd_node_per_call(use_mom, dgd):
    """The call records one autograd node of its own (then the layout's view of o): the gates, the
    DGD inverse and the layout's copies run inside the op, so its node leads straight to the
    inputs (host time: the fwd+bwd at D64 was host-bound on an H100)."""
    q, k, v = (x.to(DEVICE, torch.float32).requires_grad_() for x in qkv(1, 32, 2, 16, 16))
    lr, retention, momentum = (None if x is None else x.to(DEVICE, torch.float32).requires_grad_()
                               for x in gates(1, 32, 2, momentum=use_mom))
    o, _ = linear_memory(q, k, v, lr, retention, momentum, dgd=dgd, chunk_size=16, backend="triton")
    (op_node,) = [node for node, _ in o.grad_fn.next_functions if node is not None]
    inputs = [node.variable for node, _ in op_node.next_functions if node is not None]
    assert [x for x in (q, k, v, lr, retention, momentum) if x is not None] == inputs


def test_op_takes_gates_of_any_strides():
    """The forward and backward ops read the gates `[B, T, H]` row-major in their kernels; called with
    transposed ones (the op is public, `torch.ops.nested_kernels.linear_memory_triton_fwd`), they
    give what the row-major ones give, the gates' gradients included (T = 24: a padding index)."""
    import importlib

    triton_backend = importlib.import_module("nested_kernels.linear_memory.triton")
    B, T, H, K = 2, 24, 3, 16
    q, k, v = (x.to(DEVICE, torch.float32) for x in qkv(B, T, H, K, K))
    gate_values = [x.to(DEVICE, torch.float32) for x in gates(B, T, H, momentum=True)]
    runs = []
    for strided in (False, True):
        leaves = [g.transpose(1, 2).contiguous().transpose(1, 2) if strided else g.clone() for g in gate_values]
        assert all(g.is_contiguous() != strided for g in leaves)
        leaves = [g.requires_grad_() for g in leaves]
        _, args = triton_backend.triton_op_args(q, k, v, *gate_values, dgd=True, chunk_size=16, scale=1.0,
                                                initial_state=None, cu_seqlens=None)
        o, ht, st, *_ = triton_backend._triton_fwd(q, k, v, *leaves, *args[6:])
        runs.append((o, ht, *torch.autograd.grad((o * o).sum() + ht.sum(), leaves)))
    assert all(torch.equal(a, b) for a, b in zip(*runs))
