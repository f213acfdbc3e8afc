"""`dgd_inverse` (chunk_state.py) computed by the Triton kernel of
`triton_kernels/common/dgd_inverse.py` from the keys in the flat chunk layout and the gate matrix E,
as a torch.library custom op. Backward (PyTorch, batched over chunks): with A = I + L and
inv = A^{-1}, dA = −invᵀ d(inv) invᵀ, kept strictly lower; L = (K Kᵀ) ∘ E_prev gives
d(K Kᵀ) = dL ∘ E_prev, dE_prev = dL ∘ (K Kᵀ), and dK = (d(K Kᵀ) + d(K Kᵀ)ᵀ) K."""
import torch


def _chunked_keys(k: torch.Tensor, NC: int, C: int) -> torch.Tensor:
    """[T', H, K] -> [H, NC, C, K] in fp32."""
    return k.float().unflatten(0, (NC, C)).permute(2, 0, 1, 3)


@torch.library.custom_op("nested_kernels::dgd_inverse_triton", mutates_args=())
def dgd_inverse_triton(k: torch.Tensor, dgd_write: torch.Tensor) -> torch.Tensor:
    """(I + L)^{-1} `[H, NC, C, C]` for keys `[T', H, K]` and E `[H, NC, C+1, C]` (fp32)."""
    from ..triton_kernels.common.dgd_inverse import dgd_inverse_fwd

    return dgd_inverse_fwd(k.contiguous(), dgd_write.contiguous())


@dgd_inverse_triton.register_fake
def _(k, dgd_write):
    H, NC, _, C = dgd_write.shape
    return dgd_write.new_empty(H, NC, C, C)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs, output)


def _backward(ctx, d_inv):
    k, dgd_write, inv = ctx.saved_tensors
    H, NC, _, C = dgd_write.shape
    kc = _chunked_keys(k, NC, C)
    kk = kc @ kc.transpose(-1, -2)
    inv_t = inv.transpose(-1, -2)
    d_lower = torch.tril(-(inv_t @ d_inv @ inv_t), diagonal=-1)
    d_kk = d_lower * dgd_write[..., :C, :]
    d_k = ((d_kk + d_kk.transpose(-1, -2)) @ kc).permute(1, 2, 0, 3).flatten(0, 1)
    d_dgd_write = torch.zeros_like(dgd_write)
    d_dgd_write[..., :C, :] = d_lower * kk
    return d_k.to(k.dtype), d_dgd_write


dgd_inverse_triton.register_autograd(_backward, setup_context=_setup_context)
