"""The memory MLPs' activations φ and their explicit derivatives φ' and φ'' (SPEC §3).

The inner gradient of a memory is written with φ' in closed form, so autograd through it
yields the φ'' terms of the outer gradient (BACKGROUND.md §4); the hand-written backward
kernels need φ'' itself (`grad2`).
"""
import math
from typing import Callable, NamedTuple

import torch

_GELU_C = math.sqrt(2.0 / math.pi)


class Activation(NamedTuple):
    fn: Callable[[torch.Tensor], torch.Tensor]
    grad: Callable[[torch.Tensor], torch.Tensor]
    grad2: Callable[[torch.Tensor], torch.Tensor]


def _silu_grad(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))                       # φ'(z) = s (1 + z (1 − s))


def _silu_grad2(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1 - s) * (2 + z * (1 - 2 * s))         # φ''(z) = s (1 − s) (2 + z (1 − 2s))


def _gelu_tanh(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * z * (1 + torch.tanh(_GELU_C * (z + 0.044715 * z**3)))


def _gelu_tanh_grad(z: torch.Tensor) -> torch.Tensor:
    th = torch.tanh(_GELU_C * (z + 0.044715 * z**3))
    return 0.5 * (1 + th) + 0.5 * z * (1 - th**2) * _GELU_C * (1 + 3 * 0.044715 * z**2)


def _gelu_tanh_grad2(z: torch.Tensor) -> torch.Tensor:
    u1 = _GELU_C * (1 + 3 * 0.044715 * z**2)           # u = c (z + 0.044715 z³): u', u''
    u2 = _GELU_C * 6 * 0.044715 * z
    th = torch.tanh(_GELU_C * (z + 0.044715 * z**3))
    return (1 - th**2) * (u1 + 0.5 * z * (u2 - 2 * th * u1**2))


ACTIVATIONS = {
    "silu": Activation(torch.nn.functional.silu, _silu_grad, _silu_grad2),
    "gelu": Activation(_gelu_tanh, _gelu_tanh_grad, _gelu_tanh_grad2),
}


def get_activation(name: str) -> Activation:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]
