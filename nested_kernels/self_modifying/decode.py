"""`self_modifying_step`: HOPE's self-modifying memories (SPEC §6) continued a few tokens at a time."""
from typing import Optional, Tuple

import torch

from ..common.activations import get_activation
from ..mlp_memory import MLPMemoryDecodeState, mlp_memory_step
from .memories import read_memories, write_inputs


def self_modifying_step(
    x_tilde: torch.Tensor,
    state: MLPMemoryDecodeState,
    *,
    lr_max: float = 0.1,
    momentum: Optional[torch.Tensor] = None,
    dgd: bool = True,
    activation: str = "silu",
    lr_bias: Optional[torch.Tensor] = None,
    retention_bias: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""T new tokens of `self_modifying_titans` from a decode state, updating `state` in place.

    `state` is the decode state of the four memories stacked as 4·H heads (M_k, M_v, M_η, M_α,
    H heads each; build it with `MLPMemoryDecodeState.from_state(stack_memories(states, ...), chunk_size,
    batch_size=B, momentum=momentum is not None)`). Per token: k, v, η, α are read from each
    sequence's chunk-start weights (the running ones at a chunk start), then the four memories take
    one `mlp_memory_step` (`read="chunk_start"`, `self_target=True`, residual). Any split of a stream
    gives the outputs of one `self_modifying_titans` call; arguments as there.

    Returns:
        k, v `[B, T, H, D]`; lr, retention `[B, T, H]`, in the state's dtype (fp32, or fp64).
    """
    B, T, H, D = x_tilde.shape
    if not isinstance(state, MLPMemoryDecodeState):
        raise TypeError(f"state: expected an MLPMemoryDecodeState of 4·H heads, got {type(state).__name__}")
    if state.w1.dim() != 4 or tuple(state.w1.shape[:3]) != (B, 4 * H, D):
        raise ValueError(f"state.w1: expected [B, 4·H, D, Dh] = [{B}, {4 * H}, {D}, Dh] (four memories stacked), "
                         f"got {tuple(state.w1.shape)}")
    phi, dtype = get_activation(activation), state.w1.dtype
    x = x_tilde.to(dtype)
    b_eta = 0.0 if lr_bias is None else lr_bias.to(dtype)
    b_alpha = 0.0 if retention_bias is None else retention_bias.to(dtype)
    mu = None if momentum is None else momentum.to(dtype).repeat(4).expand(B, 1, 4 * H)
    reads = []
    for t in range(T):
        starts = (state.position == 0)[:, None, None, None]                  # W^c is the running state there
        w1c = torch.where(starts, state.w1, state.chunk_w1)
        w2c = torch.where(starts, state.w2, state.chunk_w2)
        read = read_memories(x[:, t:t + 1], w1c, w2c, phi, lr_max, b_eta, b_alpha)
        k4, v4, eta4, alpha4 = write_inputs(*read)
        mlp_memory_step(k4, k4, v4, eta4, alpha4, mu, state, activation=activation, residual=True, dgd=dgd,
                        self_target=True, read="chunk_start", backend=backend)
        reads.append(read)
    if not reads:
        return x.new_zeros(B, 0, H, D), x.new_zeros(B, 0, H, D), x.new_zeros(B, 0, H), x.new_zeros(B, 0, H)
    return tuple(torch.cat(parts, 1) for parts in zip(*reads))
