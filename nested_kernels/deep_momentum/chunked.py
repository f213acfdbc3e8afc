"""Torch tier of `deep_momentum`: one DMGD step (SPEC §5) as one `mlp_memory` chunk step.

The n gradient rows of each matrix are the tokens of a single chunk (chunk_size = n), with
keys = values = rows, so every row's inner gradient is taken at φ_i. The retention gate is 0
on the first row and 1 on the others, hence the chunk's final state is the inner step alone,
Δ_i = −η ∇_φ Σ_rows ½‖m_φ(u) − u‖² |_{φ_i}; retention and momentum are then applied at the
granularity of the optimiser step (SPEC §5), which per-token gates of one chunk cannot express.
The backward of Δ is mlp_memory's gradient-of-gradient block (BACKGROUND.md §4).
"""
import torch

from ..common.activations import get_activation
from ..mlp_memory import MLPMemoryState, mlp_memory


def mlp_read(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, activation: str = "silu",
             residual: bool = True) -> torch.Tensor:
    """`f_W(x) = [x +] φ(x W1) W2` for rows x `[..., n, K]`, w1 `[..., K, Dh]`, w2 `[..., Dh, V]`."""
    y = get_activation(activation).fn(x @ w1) @ w2
    return x + y if residual else y


def deep_momentum_chunked(u, w1, w2, s1, s2, eta, alpha, mu, lr, *, activation, mlp_backend="torch"):
    """u `[H, n, d]`, w1 `[H, d, Dh]`, w2 `[H, Dh, d]`, s1/s2 like them or None, gates `[H]`."""
    H, n, _ = u.shape
    x = u.transpose(0, 1)[None]                                              # [1, n, H, d]: rows = tokens of one chunk
    reset = torch.ones(1, n, H, dtype=u.dtype, device=u.device)
    reset[:, 0] = 0                                                          # α = 0 on row 1: final state = Δ_i
    _, step = mlp_memory(
        x, x, x, eta.expand(1, n, H), reset, None, initial_state=MLPMemoryState(w1[None], w2[None]),
        activation=activation, residual=True, read="chunk_start", chunk_size=n, output_final_state=True,
        backend=mlp_backend,
    )
    d1, d2 = step.w1[0], step.w2[0]                                          # Δ_i = −η ∇_φ Σ ½‖m_φ(u) − u‖²
    a = alpha[:, None, None]
    if mu is not None:                                                       # S_{i+1} = μ S_i + Δ_i
        s1, s2 = mu[:, None, None] * s1 + d1, mu[:, None, None] * s2 + d2
        d1, d2 = s1, s2
    w1, w2 = a * w1 + d1, a * w2 + d2                                        # φ_{i+1} = α φ_i + S_{i+1}
    update = lr[:, None, None] * mlp_read(u, w1, w2, activation)             # lr · m_{φ_{i+1}}(U_i)
    return update, (w1, w2, s1, s2)
