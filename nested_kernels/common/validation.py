"""Argument checks shared by every public op: each error names the argument, what was
expected and what was given (TypeError for types and dtypes, ValueError for the rest)."""
import numbers
from typing import List, Optional, Sequence, Tuple

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INT64_MAX = 2**63 - 1


def type_name(x) -> str:
    """The type of `x` as an error message names it: `float`, `numpy.bool` (not a bare `bool`)."""
    t = type(x)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _fmt_shape(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def check_tensor(
    name: str,
    t,
    *,
    ndim: Optional[int] = None,
    shape: Optional[Sequence[Optional[int]]] = None,
    dims: str = "",
    dtypes: Sequence[torch.dtype] = FLOAT_DTYPES,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Check type, dtype, rank, shape (None entries are free) and device of `t`."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type_name(t)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if shape is not None:
        ndim = len(shape)
    if ndim is not None and t.dim() != ndim:
        layout = f" {dims}" if dims else ""
        raise ValueError(f"{name}: expected a {ndim}-d tensor{layout}, got shape {_fmt_shape(t.shape)}")
    if shape is not None and any(e is not None and e != s for e, s in zip(shape, t.shape)):
        want = _fmt_shape("*" if e is None else e for e in shape)
        raise ValueError(f"{name}: expected shape {want}{' ' + dims if dims else ''}, got {_fmt_shape(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (the device of the inputs), got {t.device}")
    return t


def check_same_dtype(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        given = ", ".join(f"{n}={t.dtype}" for n, t in zip(names, tensors))
        raise TypeError(f"{'/'.join(names)}: expected one dtype, got {given}")


def check_gate(name: str, gate, B: int, T: int, H: int, device: torch.device, *, optional: bool = False):
    """A gate is a Python float (broadcast) or a float tensor `[B, T, H]`."""
    if gate is None and optional:
        return None
    if isinstance(gate, bool) or not isinstance(gate, (int, float, torch.Tensor)):
        raise TypeError(f"{name}: expected a float or a tensor [B, T, H], got {type_name(gate)}")
    if isinstance(gate, torch.Tensor):
        check_tensor(name, gate, shape=(B, T, H), dims="[B, T, H]", device=device)
    return gate


def check_chunk_size(chunk_size, name: str = "chunk_size") -> int:
    """An int in [1, 2^63 − 1] (the compiled ops take an int64; a chunk longer than a sequence is the
    whole sequence)."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"{name}: expected an int >= 1, got {type_name(chunk_size)}")
    if chunk_size < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {chunk_size}")
    if chunk_size > INT64_MAX:
        raise ValueError(f"{name}: expected an int <= 2^63 - 1 (an int64), got {chunk_size}")
    return chunk_size


def check_scale(scale) -> None:
    """The read's factor: a real number, Python's or NumPy's (the ops read it as `float(scale)`)."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):               # numpy.bool is not Real
        raise TypeError(f"scale: expected a float, got {type_name(scale)}")


def check_choice(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")


def check_cu_seqlens(cu_seqlens, B: int, T: int, device: torch.device) -> int:
    """Validate fla-style `cu_seqlens` and return the number of sequences N (B when absent)."""
    if cu_seqlens is None:
        return B
    check_tensor("cu_seqlens", cu_seqlens, ndim=1, dims="[N + 1]", dtypes=(torch.int32, torch.int64), device=device)
    if B != 1:
        raise ValueError(f"cu_seqlens: expected batch size B == 1 with cu_seqlens, got B = {B}")
    if cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens: expected at least 2 entries [N + 1], got {cu_seqlens.numel()}")
    offsets = cu_seqlens.tolist()
    if offsets[0] != 0 or offsets[-1] != T:
        raise ValueError(f"cu_seqlens: expected to start at 0 and end at T = {T}, got {offsets[0]} ... {offsets[-1]}")
    if any(b < a for a, b in zip(offsets, offsets[1:])):
        raise ValueError(f"cu_seqlens: expected non-decreasing offsets, got {offsets}")
    return len(offsets) - 1


def check_state_tensor(name: str, t, shape: Sequence[int], dims: str, device: torch.device) -> torch.Tensor:
    return check_tensor(name, t, shape=shape, dims=dims, dtypes=(torch.float32, torch.float64), device=device)


def check_qkv(q, k, v):
    """q, k `[B, T, H, K]` and v `[B, T, H, V]` of one float dtype on one device; returns (B, T, H, K, V)."""
    check_tensor("q", q, ndim=4, dims="[B, T, H, K]")
    B, T, H, K = q.shape
    check_tensor("k", k, shape=(B, T, H, K), dims="[B, T, H, K] (the shape of q)", device=q.device)
    check_tensor("v", v, shape=(B, T, H, None), dims="[B, T, H, V]", device=q.device)
    check_same_dtype(("q", "k", "v"), (q, k, v))
    return B, T, H, K, v.shape[-1]


def check_memory_gates(lr, retention, momentum, B: int, T: int, H: int, device: torch.device) -> None:
    check_gate("lr", lr, B, T, H, device)
    check_gate("retention", retention, B, T, H, device)
    check_gate("momentum", momentum, B, T, H, device, optional=True)


def check_flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type_name(value)}")
    return value


def check_momentum_state(name: str, state, momentum, shape: Sequence[int], dims: str, device: torch.device) -> None:
    """A momentum state is only meaningful when the op runs with a `momentum` gate."""
    if state is None:
        return
    if momentum is None:
        raise ValueError(f"{name}: expected None when momentum=None (no momentum state), got a tensor")
    check_state_tensor(name, state, shape, dims, device)


def check_decode_position(state, N: int, device: torch.device) -> None:
    """`state.position [N]` int64 in [0, chunk_size) and `state.chunk_size` of a decode state (`*_step`
    ops). The values are read on a CPU alone: on a GPU that would wait for the device on every call."""
    position = check_tensor("state.position", state.position, shape=(N,), dims="[N]", dtypes=(torch.int64,),
                            device=device)
    chunk_size = check_chunk_size(state.chunk_size, "state.chunk_size")
    if position.device.type == "cpu":
        outside = ((position < 0) | (position >= chunk_size)).nonzero()
        if outside.numel():
            n = outside[0, 0].item()
            raise ValueError(f"state.position: expected values in [0, state.chunk_size = {chunk_size}), got "
                             f"position[{n}] = {position[n].item()} ({outside.shape[0]} of {N} outside)")


def _byte_range(t: torch.Tensor) -> Tuple[int, int]:
    """The first and last byte a (non-empty) tensor's elements occupy."""
    span = sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return t.data_ptr(), t.data_ptr() + (span + 1) * t.element_size() - 1


def _may_overlap_itself(t: torch.Tensor) -> bool:
    """Whether two elements of `t` may share memory (an expanded tensor): False whenever each stride,
    from the smallest, is past the extent of the dimensions of smaller strides (every dense layout)."""
    extent = 0
    for stride, n in sorted((s, n) for n, s in zip(t.shape, t.stride()) if n > 1):
        if stride <= extent:
            return True
        extent += (n - 1) * stride
    return False


def decode_state_tensors(state) -> List[Tuple[str, torch.Tensor]]:
    """(field, tensor) of every tensor field of a decode state (a NamedTuple; absent ones are None),
    in field order: what a step updates in place."""
    return [(name, t) for name, t in zip(state._fields, state) if isinstance(t, torch.Tensor)]


def check_state_memory(state) -> None:
    """The tensors of a decode state, which a step updates in place: no element stored twice within
    one, no memory shared by two (e.g. a state built with chunk_memory = memory)."""
    present = [(f"state.{name}", t) for name, t in decode_state_tensors(state)
               if t.numel() > 0 and t.device.type != "meta"]
    for name, t in present:
        if _may_overlap_itself(t):
            raise ValueError(f"{name}: expected a tensor whose elements do not share memory (it is updated in "
                             f"place), got shape {_fmt_shape(t.shape)} with strides {_fmt_shape(t.stride())}")
    for i, (name_a, a) in enumerate(present):
        for name_b, b in present[i + 1:]:
            (a0, a1), (b0, b1) = _byte_range(a), _byte_range(b)
            if a.device == b.device and a0 <= b1 and b0 <= a1:
                raise ValueError(f"{name_b}: expected memory of its own (the step updates it in place), got a "
                                 f"tensor overlapping {name_a}")
