"""The four memories M_k, M_v, M_η, M_α as one MLP memory of 4·H heads (SPEC §6), shared by
the torch tier and the decode step: stacking, the reads of k, v, η, α, the write's inputs."""
import torch
import torch.nn.functional as F

from ..mlp_memory import MLPMemoryState


def _cat_heads(xs):                                                           # four [N, H, ·, ·] -> [N, 4H, ·, ·]
    if xs[0] is None:
        return None
    n = max(x.shape[0] for x in xs)
    return torch.cat([x.expand(n, *x.shape[1:]) for x in xs], 1)


def stack_memories(states, dtype) -> MLPMemoryState:
    """Four `MLPMemoryState`s `[N | 1, H, ·, ·]` -> one of 4H heads in `dtype` (momenta None if any is)."""
    fields = [[None if x is None else x.to(dtype) for x in field] for field in zip(*states)]
    if any(x is None for x in fields[2] + fields[3]):
        fields[2] = fields[3] = [None]
    return MLPMemoryState(*(_cat_heads(f) for f in fields))


def split_memories(state: MLPMemoryState, H: int):
    """One `MLPMemoryState` of 4H heads -> the four memories' states, H heads each."""
    def heads(x, i):
        return None if x is None else x[:, i * H:(i + 1) * H]
    return tuple(MLPMemoryState(*(heads(x, i) for x in state)) for i in range(4))


def read_memories(x, w1, w2, phi, lr_max, b_eta, b_alpha):
    """k, v `[B, C, H, D]`, η, α `[B, C, H]` of tokens x `[B, C, H, D]` read by the four memories
    at weights w1 `[N | 1, 4H, D, Dh]`, w2 `[N | 1, 4H, Dh, D]` (residual MLPs, SPEC §6)."""
    H = x.shape[2]
    xh = x.transpose(1, 2).repeat(1, 4, 1, 1)                                # [B, 4H, C, D]
    read = xh + phi.fn(xh @ w1) @ w2                                          # f_{W^c}(x̃) of all four memories
    k, v, e, a = read.transpose(1, 2).split(H, 2)                             # each [B, C, H, D]
    k = F.normalize(k, dim=-1)                                                # k_t = L2norm(M_k(x̃_t))
    eta = lr_max * torch.sigmoid(e.mean(-1) + b_eta)                          # η_t = lr_max·σ(mean M_η(x̃_t) + b_η)
    alpha = torch.sigmoid(a.mean(-1) + b_alpha)                               # α_t = σ(mean M_α(x̃_t) + b_α)
    return k, v, eta, alpha


def write_inputs(k, v, eta, alpha):
    """The same k, v, η, α for each of the four memories: `[B, C, 4H, ·]` and `[B, C, 4H]`."""
    return k.repeat(1, 1, 4, 1), v.repeat(1, 1, 4, 1), eta.repeat(1, 1, 4), alpha.repeat(1, 1, 4)
