"""`cms_level`: one level of the Continuum Memory System (SPEC §4), and its backends."""
from typing import Optional, Tuple

import torch

from ..backends import OpBackends
from ..common.inputs import needs_grad
from ..common.validation import check_flag
from .checks import check_cms_inputs
from .chunked import cms_level_chunked
from .decode import CMSDecodeState, cms_level_step
from .reference import cms_level_reference
from .state import CMSState
from ..common.triton_backend import auto_reason as _triton_auto
from .triton import cms_level_triton, unsupported_reason as _triton_unsupported

__all__ = ["cms_level", "CMSState", "BACKENDS", "cms_level_reference", "cms_level_chunked", "cms_level_step",
           "CMSDecodeState"]

BACKENDS = OpBackends("cms_level")
BACKENDS.register("reference", cms_level_reference)
BACKENDS.register("torch", cms_level_chunked)
BACKENDS.register("triton", cms_level_triton, _triton_unsupported, _triton_auto)


def cms_level(
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    *,
    period: int,
    lr,
    retention=1.0,
    target: Optional[torch.Tensor] = None,
    grad_y: Optional[torch.Tensor] = None,
    activation: str = "silu",
    output_final_state: bool = False,
    backend: str = "auto",
) -> Tuple[torch.Tensor, Optional[CMSState]]:
    r"""
    One level of the Continuum Memory System: a residual MLP `y = x + φ(x W1) W2` whose
    weights are frozen inside each chunk of `period` tokens and take one accumulated
    gradient step at the chunk's end (SPEC §4, paper eq. 71). For each chunk c:

        y_t     = x_t + φ(x_t W1^c) W2^c                           (t in chunk c)
        e_t     = grad_y_t  if grad_y is given  else  y_t − target_t
        W^{c+1} = retention · W^c − Σ_{t∈c} lr_t ∇_W ⟨e_t, y_t⟩ |_{W^c}

    with ∇_{W2} = a_tᵀ e_t and ∇_{W1} = x_tᵀ ((e_t W2ᵀ) ⊙ φ'(z_t)), z_t = x_t W1, a_t = φ(z_t).

    Semantics that are easy to misread:
    - Chunks are counted from the start of the call. Every token of chunk c reads the
      weights W^c of the chunk start: a token never sees its own chunk's update.
    - The step is taken at the end of every chunk, the partial last chunk included: the end
      of the call is a chunk boundary [decision, SPEC §1]. Splitting a stream at multiples of
      `period` and passing `final_state` as the next call's `w1`, `w2` reproduces one call.
    - `retention` multiplies the chunk-start weights once per chunk (not once per token).
    - In the inner gradient e_t is a constant (for `target` this is the gradient of the
      local loss ½‖y_t − target_t‖², with SPEC §1's ½ [decision]). The outer gradient is
      exact: it flows through e_t, `target`, `grad_y`, `lr`, `retention` and through the
      inner gradient itself (φ'' terms).
    - Shared weights `[D, Dh]` / `[Dh, D]` are the meta-learned starting point of every
      sequence; their gradient is summed over the batch. Per-sequence weights
      `[B, D, Dh]` / `[B, Dh, D]` continue a stream.
    - A level whose `period` is at least T never updates inside the call; `y` is then one
      plain MLP and the final state takes one step with all T tokens.
    - [decision] Python-float `lr` and `retention` are range-checked (η ≥ 0, 0 ≤ α ≤ 1);
      tensor gates are not, as that would synchronise with the device.

    Args:
        x (torch.Tensor):
            inputs of shape `[B, T, D]`, fp32, bf16, fp16 or fp64.
        w1 (torch.Tensor):
            input-side weight, shared `[D, Dh]` or per sequence `[B, D, Dh]`.
        w2 (torch.Tensor):
            output-side weight, `[Dh, D]` or `[B, Dh, D]`: shared exactly when `w1` is.
        period (int):
            chunk length C ≥ 1: the level updates once every `period` tokens.
        lr (float or torch.Tensor):
            inner learning rate η_t ≥ 0, a Python float (broadcast) or a tensor `[B, T]`.
        retention (float or torch.Tensor, Optional):
            α ∈ [0, 1] multiplying the old weights at each step, a Python float or a 0-d
            tensor. Default: `1.0`.
        target (torch.Tensor, Optional):
            regression target `[B, T, D]` of the local objective ½‖y − target‖².
            Exactly one of `target` / `grad_y` is given. Default: `None`.
        grad_y (torch.Tensor, Optional):
            external teach signal `[B, T, D]` used as e_t, e.g. ∂L/∂y of the outer loss.
            Default: `None`.
        activation (str, Optional):
            φ: `"silu"` or `"gelu"` (tanh approximation). Default: `"silu"`.
        output_final_state (bool, Optional):
            whether to return the weights after the last step. Default: `False`.
        backend (str, Optional):
            `"auto"`, `"reference"` (token loop, the oracle), `"torch"` (chunked PyTorch) or
            `"triton"` (fused kernels; fp32/bf16/fp16 inputs; interpreted on a CPU, so `"auto"`
            picks it on CUDA devices only); `"cuda"` and `"cpp"` are not implemented yet.
            Default: `"auto"`.

    Returns:
        y (torch.Tensor):
            outputs of shape `[B, T, D]`, in x's dtype.
        final_state (CMSState, Optional):
            `CMSState(w1 [B, D, Dh], w2 [B, Dh, D])` in fp32 (fp64 for fp64 inputs) if
            `output_final_state=True`, else `None`.

    Examples::
        >>> import torch
        >>> from nested_kernels.cms import cms_level
        >>> B, T, D, Dh = 2, 100, 64, 256
        >>> x = torch.randn(B, T, D)
        >>> w1 = torch.randn(D, Dh) / D ** 0.5            # shared, meta-learned
        >>> w2 = torch.zeros(Dh, D)
        >>> y, state = cms_level(x, w1, w2, period=16, lr=1e-2, target=x, output_final_state=True)
        >>> y.shape, state.w1.shape                      # 7 chunks: 6 full, 1 of 4 tokens
        (torch.Size([2, 100, 64]), torch.Size([2, 64, 256]))
        >>> # continue the stream; 100 is not a multiple of 16, so the chunk grid restarts here
        >>> x2 = torch.randn(B, 32, D)
        >>> y2, state = cms_level(x2, *state, period=16, lr=1e-2, target=x2, output_final_state=True)
    """
    check_cms_inputs(x, w1, w2, period, lr, retention, target, grad_y, activation)
    check_flag("output_final_state", output_final_state)

    B, T, D = x.shape
    tensors = [t for t in (x, w1, w2, target, grad_y) if t is not None]
    call = {"device": x.device, "requires_grad": needs_grad(x, w1, w2, lr, retention, target, grad_y),
            "dtype": torch.float64 if any(t.dtype == torch.float64 for t in tensors) else x.dtype, "period": period,
            "T": T, "D": D, "Dh": w1.shape[-1]}
    fn = BACKENDS.resolve(backend, call)
    return fn(
        x, w1, w2, period=period, lr=lr, retention=retention, target=target, grad_y=grad_y,
        activation=activation, output_final_state=output_final_state,
    )
