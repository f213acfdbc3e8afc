"""The mode switches of SPEC §3's MLP memory, checked once for `mlp_memory` and `mlp_memory_step`."""
from ..common.activations import ACTIVATIONS
from ..common.validation import check_choice, check_flag

READ_MODES = ("current", "chunk_start")


def check_mlp_options(activation, residual, dgd, self_target, read, K: int, V: int) -> None:
    check_choice("activation", activation, sorted(ACTIVATIONS))
    check_choice("read", read, READ_MODES)
    for name, flag in (("residual", residual), ("dgd", dgd), ("self_target", self_target)):
        check_flag(name, flag)
    if residual and K != V:
        raise ValueError(f"residual: expected K == V for f(x) = x + φ(x W1) W2, got K = {K}, V = {V}")
    if self_target and K != V:
        raise ValueError(f"self_target: expected K == V, since the target f_W(v) feeds v to the memory, got K = {K}, V = {V}")
