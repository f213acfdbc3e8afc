"""The fused accumulate / scale / zero of `MultiFrequencyOptimizer` (SPEC §5): one launch over a
list of (gradient, accumulator) pairs of any sizes and gradient dtypes, in place.

Multi-tensor layout: a table of addresses, not a packed buffer. The launcher fills one int64
table on the device in one host-to-device copy:

* `tensors` `[N, 6]`, one row per pair: gradient offset, accumulator offset, numel, gradient
  dtype code (index in GRAD_DTYPE_NAMES), due (0/1), divisor;
* `programs` `[P, 2]`, one row per program: tensor row, chunk index in that tensor.

Offsets count elements (of the gradient's dtype, of fp32 for the accumulator) from the table's
own address, which is 16-byte aligned: `tensors.to(pointer_type(dtype)) + offset` is then the
tensor's address, and when every address is 16-byte aligned (fresh torch tensors are) the
offsets carry `tl.multiple_of`, so the compiler knows the alignment and the loads and stores
vectorise (128-bit). Raw addresses cast from int64 would carry no alignment: Triton 3.8 then
emits scalar loads.

Each program handles NB blocks of BLOCK elements of one tensor: full blocks without masks,
the tail masked. A step reads every gradient and accumulator once and writes each once (the
memory-bound minimum), whatever the number of tensors; nothing is copied into a flat buffer.
"""
import triton
import triton.language as tl

from ..utils.host_math import cdiv, next_power_of_2

# dtype code = index here; the kernel's branches follow this order
GRAD_DTYPE_NAMES = ("float32", "bfloat16", "float16")
TENSOR_COLUMNS = 6                       # grad offset, acc offset, numel, dtype code, due, divisor
MAX_BLOCK = 1024


def num_warps(block: int) -> int:
    """Warps per program for a BLOCK (shared with the compile report)."""
    return max(1, min(4, block // 256))


MAX_BLOCKS_PER_PROGRAM = 16


@triton.jit
def round_to_bf16(b_x):
    """fp32 -> bf16 rounding to nearest even in integer arithmetic, as torch and the GPU's `.to`
    do (Triton 3.8's interpreter truncates fp32 -> bf16 casts, so `.to` would differ on the CPU)."""
    b_bits = b_x.to(tl.uint32, bitcast=True)
    b_bits = (b_bits + 0x7FFF + ((b_bits >> 16) & 1)) >> 16
    b_bits = tl.where(b_x != b_x, 0x7FC0, b_bits)                            # NaN stays NaN
    return b_bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def multi_frequency_accumulate_block(grad, acc, o_x, m_x, due, divisor, IS_FULL: tl.constexpr, IS_BF16: tl.constexpr):
    """s = acc + grad in fp32; due: grad = s / divisor (correctly rounded, then to grad's dtype),
    acc = 0; not due: acc = s, grad = 0."""
    if IS_FULL:
        b_g = tl.load(grad + o_x).to(tl.float32)
        b_a = tl.load(acc + o_x)
    else:
        b_g = tl.load(grad + o_x, mask=m_x, other=0.0).to(tl.float32)
        b_a = tl.load(acc + o_x, mask=m_x, other=0.0)
    b_s = b_a + b_g
    b_zero = tl.zeros_like(b_s)
    b_g_new = tl.where(due, tl.math.div_rn(b_s, divisor), b_zero)
    if IS_BF16:
        b_g_new = round_to_bf16(b_g_new)
    else:
        b_g_new = b_g_new.to(grad.dtype.element_ty)
    b_a_new = tl.where(due, b_zero, b_s)
    if IS_FULL:
        tl.store(grad + o_x, b_g_new)
        tl.store(acc + o_x, b_a_new)
    else:
        tl.store(grad + o_x, b_g_new, mask=m_x)
        tl.store(acc + o_x, b_a_new, mask=m_x)


@triton.jit
def multi_frequency_accumulate_chunk(grad, acc, o_chunk, numel, NB, due, divisor, BLOCK: tl.constexpr,
                                     IS_BF16: tl.constexpr):
    """The NB blocks of BLOCK elements from element `o_chunk` on, of one (gradient, accumulator) pair."""
    for i_b in range(NB):
        o_block = o_chunk + i_b * BLOCK
        o_x = o_block + tl.arange(0, BLOCK)
        if o_block + BLOCK <= numel:
            multi_frequency_accumulate_block(grad, acc, o_x, o_x < numel, due, divisor, IS_FULL=True, IS_BF16=IS_BF16)
        elif o_block < numel:
            multi_frequency_accumulate_block(grad, acc, o_x, o_x < numel, due, divisor, IS_FULL=False, IS_BF16=IS_BF16)


@triton.jit(do_not_specialize=["NB"])
def multi_frequency_accumulate_kernel(tensors, programs, NB, BLOCK: tl.constexpr, IS_ALIGNED: tl.constexpr):
    tl.static_assert(BLOCK <= 1024, "BLOCK is at most 1024 elements")
    i_p = tl.program_id(0).to(tl.int64)
    i_t = tl.load(programs + 2 * i_p)
    i_c = tl.load(programs + 2 * i_p + 1)
    p_row = tensors + 6 * i_t                                                 # TENSOR_COLUMNS
    o_grad = tl.load(p_row)                                                   # in elements of the grad's dtype
    o_acc = tl.load(p_row + 1)                                                # in fp32 elements
    o_grad_32, o_grad_16 = o_grad, o_grad
    if IS_ALIGNED:                                                            # 16 bytes: 4 fp32 or 8 bf16/fp16 elements
        o_acc = tl.multiple_of(o_acc, 4)
        o_grad_32 = tl.multiple_of(o_grad, 4)
        o_grad_16 = tl.multiple_of(o_grad, 8)
    acc = tensors.to(tl.pointer_type(tl.float32)) + o_acc
    numel = tl.load(p_row + 2)
    code = tl.load(p_row + 3)
    due = tl.load(p_row + 4) != 0
    divisor = tl.load(p_row + 5).to(tl.float32)
    o_chunk = i_c * NB * BLOCK
    if code == 0:
        multi_frequency_accumulate_chunk(tensors.to(tl.pointer_type(tl.float32)) + o_grad_32, acc, o_chunk, numel, NB,
                                         due, divisor, BLOCK=BLOCK, IS_BF16=False)
    elif code == 1:
        multi_frequency_accumulate_chunk(tensors.to(tl.pointer_type(tl.bfloat16)) + o_grad_16, acc, o_chunk, numel, NB,
                                         due, divisor, BLOCK=BLOCK, IS_BF16=True)
    else:
        multi_frequency_accumulate_chunk(tensors.to(tl.pointer_type(tl.float16)) + o_grad_16, acc, o_chunk, numel, NB,
                                         due, divisor, BLOCK=BLOCK, IS_BF16=False)


def multi_frequency_accumulate(grads, accs, due, divisors):
    """In place, in one launch, for every i: `s = accs[i] + grads[i]` in fp32, then
    `grads[i] = s / divisors[i]` (correctly rounded, then rounded to the gradient's dtype) and
    `accs[i] = 0` if `due[i]`, else `accs[i] = s` and `grads[i] = 0`.

    Args:
        grads (List[torch.Tensor]): contiguous fp32 / bf16 / fp16 gradients on one device, any shapes.
        accs (List[torch.Tensor]): contiguous fp32 accumulators, `accs[i]` with the numel of `grads[i]`.
        due (List[bool]): whether the pair's parameter group steps now.
        divisors (List[int]): in [1, 2^24); the period for a mean, 1 for a sum.
    """
    import torch

    from ..utils.launch import launch

    n = len(grads)
    assert len(accs) == n and len(due) == n and len(divisors) == n, "multi_frequency: one acc, due, divisor per grad"
    pairs = [(g, a, d, q) for g, a, d, q in zip(grads, accs, due, divisors) if g.numel() > 0]
    if not pairs:
        return
    device = pairs[0][0].device
    dtypes = tuple(getattr(torch, name) for name in GRAD_DTYPE_NAMES)
    for g, a, _, q in pairs:
        assert g.device == device and a.device == device, f"multi_frequency: one device, got {g.device}, {a.device}"
        assert g.dtype in dtypes, f"multi_frequency: gradients in {GRAD_DTYPE_NAMES}, got {g.dtype}"
        assert a.dtype == torch.float32, f"multi_frequency: fp32 accumulators, got {a.dtype}"
        assert g.is_contiguous() and a.is_contiguous(), "multi_frequency: contiguous gradients and accumulators"
        assert g.numel() == a.numel(), f"multi_frequency: numel {g.numel()} (grad) != {a.numel()} (acc)"
        assert g.data_ptr() % g.element_size() == 0, "multi_frequency: gradients aligned to their element size"
        assert isinstance(q, int) and 1 <= q < 2**24, f"multi_frequency: integer divisor in [1, 2^24), got {q}"

    numels = [g.numel() for g, *_ in pairs]
    max_numel = max(numels)
    BLOCK = min(MAX_BLOCK, next_power_of_2(max_numel))
    NB = min(MAX_BLOCKS_PER_PROGRAM, cdiv(max_numel, BLOCK))
    chunks = torch.tensor([cdiv(x, NB * BLOCK) for x in numels], dtype=torch.int64)
    prog_tensor = torch.repeat_interleave(torch.arange(len(pairs)), chunks)
    prog_chunk = torch.arange(prog_tensor.numel()) - (torch.cumsum(chunks, 0) - chunks)[prog_tensor]
    n_rows = TENSOR_COLUMNS * len(pairs)
    table = torch.empty(n_rows + 2 * prog_tensor.numel(), dtype=torch.int64, device=device)
    base = table.data_ptr()
    assert base % 16 == 0, "multi_frequency: the address table must be 16-byte aligned"
    rows = []
    for g, a, d, q in pairs:
        rows += [(g.data_ptr() - base) // g.element_size(), (a.data_ptr() - base) // 4, g.numel(),
                 dtypes.index(g.dtype), int(bool(d)), q]
    host = torch.cat([torch.tensor(rows, dtype=torch.int64), torch.stack([prog_tensor, prog_chunk], 1).flatten()])
    if device.type == "cuda":                      # pinned: the copy is asynchronous (the allocator tracks its use)
        host = host.pin_memory()
    table.copy_(host, non_blocking=device.type == "cuda")
    launch(
        multi_frequency_accumulate_kernel, (prog_tensor.numel(),), device,
        tensors=table[:n_rows], programs=table[n_rows:], NB=NB, BLOCK=BLOCK,
        IS_ALIGNED=all(t.data_ptr() % 16 == 0 for g, a, *_ in pairs for t in (g, a)),
        num_warps=num_warps(BLOCK),
    )
