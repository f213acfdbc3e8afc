"""Inputs and timed callables: our tiers (`linear_memory`), fla's gated delta rule, causal SDPA."""
import importlib
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from nested_kernels import linear_memory

from . import settings
from .settings import FLA_MISSING, BenchShape, _mode
from .timing import Fn, _first_line


@dataclass
class Inputs:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    lr: torch.Tensor
    retention: torch.Tensor
    momentum: torch.Tensor
    do: torch.Tensor


def make_inputs(shape: BenchShape, *, device, dtype, seed: int = 0) -> Inputs:
    """q, v ~ N(0, 1), L2-normalised keys, lr ∈ (0, 0.1], retention ∈ [0.9, 1], momentum ∈ [0, 0.9]."""
    gen = torch.Generator(device=device).manual_seed(seed)
    B, T, H, D = shape.B, shape.T, shape.H, shape.D
    rand = lambda *s: torch.rand(*s, generator=gen, device=device)
    randn = lambda *s: torch.randn(*s, generator=gen, device=device)
    q = randn(B, T, H, D).to(dtype)
    k = F.normalize(randn(B, T, H, D), dim=-1).to(dtype)
    v = randn(B, T, H, D).to(dtype)
    lr = (0.1 * rand(B, T, H)).clamp_min(1e-3)
    retention = 0.9 + 0.1 * rand(B, T, H)
    momentum = 0.9 * rand(B, T, H)
    do = randn(B, T, H, D).to(dtype)
    return Inputs(q, k, v, lr, retention, momentum, do)


def linear_memory_callable(x: Inputs, backend: str, dgd: bool, mode: str, momentum: bool = True
                           ) -> Tuple[Fn, List[torch.Tensor]]:
    """(the timed call, the leaves whose .grad is reset between calls); without `momentum` the call
    has no momentum state (`x.momentum` unused)."""
    kw = dict(dgd=dgd, chunk_size=settings.CHUNK, scale=x.q.shape[-1] ** -0.5, output_final_state=True, backend=backend)
    inputs = (x.q, x.k, x.v, x.lr, x.retention) + ((x.momentum,) if momentum else ())
    if _mode(mode) == "fwd":
        def fwd():
            with torch.no_grad():
                return linear_memory(*inputs, **kw)[0]
        return fwd, []
    leaves = [t.detach().clone().requires_grad_() for t in inputs]

    def fwd_bwd():
        o, _ = linear_memory(*leaves, **kw)
        (o * x.do).sum().backward()
    return fwd_bwd, leaves


def _fla_function():
    """fla's `chunk_gated_delta_rule`, or (None, reason)."""
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except ImportError:
        return None, FLA_MISSING
    except Exception as e:  # noqa: BLE001 (a broken install is reported, not fatal)
        return None, f"fla import failed: {type(e).__name__}: {_first_line(e)}"
    return chunk_gated_delta_rule, None


def lift_fla_hopper_guard() -> bool:
    """Let fla's gated backward run on Hopper with Triton 3.4 to 3.7.0, which it refuses there
    (`fla.ops.common.chunk_o`, fla#640: its results may be wrong), so that the fwd+bwd row can time
    its kernels on the GPU machine's Triton 3.6. True where the guard was in force and is now lifted;
    the benchmark's row says so. False where fla is missing or the guard does not apply."""
    try:
        chunk_o = importlib.import_module("fla.ops.common.chunk_o")   # the module, not a backend's of that name
    except Exception:  # noqa: BLE001 (fla missing or broken: its rows say why)
        return False
    in_force = (getattr(chunk_o, "IS_NVIDIA_HOPPER", False) and getattr(chunk_o, "TRITON_ABOVE_3_4_0", False)
                and not getattr(chunk_o, "TRITON_ABOVE_3_7_1", True))
    if in_force:
        chunk_o.TRITON_ABOVE_3_7_1 = True
    return bool(in_force)


def _fla_version() -> Optional[str]:
    from importlib import metadata
    for dist in ("fla-core", "flash-linear-attention"):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return None


def fla_callable(fn, x: Inputs, mode: str) -> Tuple[Fn, List[torch.Tensor]]:
    """fla's gated delta rule on the same q, k, v: g = log(retention) (fp32), beta = lr (input dtype).

    Keyword arguments are filtered by the installed version's signature (`head_first` and
    `use_qk_l2norm_in_kernel` exist in some versions only; the keys are already L2-normalised).
    """
    import inspect
    params = inspect.signature(fn).parameters
    kw = dict(scale=x.q.shape[-1] ** -0.5, initial_state=None, output_final_state=True)
    if "use_qk_l2norm_in_kernel" in params:
        kw["use_qk_l2norm_in_kernel"] = False
    if "head_first" in params:
        kw["head_first"] = False
    has_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kw = {k: v for k, v in kw.items() if k in params or has_kwargs}
    g = torch.log(x.retention)
    beta = x.lr.to(x.q.dtype)
    if _mode(mode) == "fwd":
        def fwd():
            with torch.no_grad():
                return fn(x.q, x.k, x.v, g, beta, **kw)
        return fwd, []
    leaves = [t.detach().clone().requires_grad_() for t in (x.q, x.k, x.v, g, beta)]

    def fwd_bwd():
        out = fn(*leaves, **kw)
        o = out[0] if isinstance(out, (tuple, list)) else out
        (o * x.do).sum().backward()
    return fwd_bwd, leaves


def sdpa_callable(x: Inputs, mode: str) -> Tuple[Fn, List[torch.Tensor], str]:
    """Causal SDPA on `[B, H, T, D]` copies of q, k, v; the flash backend when it accepts the call."""
    q, k, v, do = (t.transpose(1, 2).contiguous() for t in (x.q, x.k, x.v, x.do))
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        ctx, label = (lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION)), "flash"
    except ImportError:  # older torch: let it choose
        import contextlib
        ctx, label = contextlib.nullcontext, "default"
    sdpa = F.scaled_dot_product_attention
    if _mode(mode) == "fwd":
        def fwd():
            with torch.no_grad(), ctx():
                return sdpa(q, k, v, is_causal=True)
        return fwd, [], label
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]

    def fwd_bwd():
        with ctx():
            o = sdpa(*leaves, is_causal=True)
        (o * do).sum().backward()
    return fwd_bwd, leaves, label
