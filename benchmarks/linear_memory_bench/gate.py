"""Correctness gate: a kernel tier at T = GATE_T against the torch tier in fp32."""
import math
from typing import Dict, List, Sequence, Tuple

import torch

from nested_kernels import linear_memory

from . import settings
from .callables import Inputs, make_inputs
from .settings import GATE_T, GATE_TOL_GRAD, GATE_TOL_OUT, BenchShape
from .timing import _first_line, _release


def rms_ratio(ref: torch.Tensor, out: torch.Tensor) -> float:
    """`rms(ref − out) / rms(ref)` in float64 (fla's ratio test); inf if `out` has a NaN."""
    ref, out = ref.double(), out.double()
    if not torch.isfinite(out).all():
        return math.inf
    den = ref.pow(2).mean().sqrt().item()
    num = (ref - out).pow(2).mean().sqrt().item()
    return num / den if den > 0 else num


def _gate_run(x: Inputs, backend: str, variant: settings.Variant, *, grads: bool) -> List[Tuple[str, torch.Tensor]]:
    kw = dict(dgd=variant.dgd, chunk_size=settings.CHUNK, scale=x.q.shape[-1] ** -0.5, output_final_state=True,
              backend=backend)
    names = ("q", "k", "v", "lr", "retention", "momentum")[:6 if variant.momentum else 5]
    tensors = (x.q, x.k, x.v, x.lr, x.retention, x.momentum)[:len(names)]
    if not grads:
        with torch.no_grad():
            o, _ = linear_memory(*tensors, **kw)
        return [("o", o)]
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    o, _ = linear_memory(*leaves, **kw)
    gs = torch.autograd.grad((o * x.do.to(o.dtype)).sum(), leaves)
    return [("o", o.detach())] + [(f"d{n}", g) for n, g in zip(names, gs)]


def correctness_gate(shape: BenchShape, backend: str, variant: settings.Variant, modes: Sequence[str],
                     device) -> Dict[str, object]:
    """The tier at T = GATE_T on bf16 inputs against the torch tier in fp32 on the same rounded inputs."""
    small = BenchShape(shape.B, min(GATE_T, shape.T), shape.H, shape.D)
    x = make_inputs(small, device=device, dtype=torch.bfloat16, seed=1)
    x32 = Inputs(*(t.float() for t in (x.q, x.k, x.v)), x.lr, x.retention, x.momentum, x.do.float())
    result: Dict[str, object] = {"shape": shape.name, "gate_shape": small.name, "backend": backend,
                                 "variant": variant.name, "ratios": {}, "passed": {}, "errors": {}}
    for mode in modes:                          # a mode the tier cannot run (e.g. a forward-only tier's
        grads = mode == "fwdbwd"                # backward) fails that mode's gate only
        try:
            ref = dict(_gate_run(x32, "torch", variant, grads=grads))
            out = dict(_gate_run(x, backend, variant, grads=grads))
            ratios = {name: rms_ratio(ref[name], out[name]) for name in ref}
            result["ratios"][mode] = ratios
            result["passed"][mode] = all(
                r <= (GATE_TOL_OUT if name == "o" else GATE_TOL_GRAD) for name, r in ratios.items())
        except Exception as e:  # noqa: BLE001 (a crash fails the gate; the run goes on)
            result["errors"][mode] = f"{type(e).__name__}: {_first_line(e)}"
            result["passed"][mode] = False
    del x, x32
    _release()
    return result
