"""FLOP and byte counts of `linear_memory` and SDPA, and the roofline fraction."""
from . import settings
from .settings import PEAK_TBPS, PEAK_TFLOPS, SDPA_FWDBWD_FACTOR, _mode

# linear_memory, chunked algorithm (triton_kernels/linear_memory/README.md), per chunk of c tokens
# per head, K = key dim, V = value dim. Only matrix products are counted, the fewest the formulas
# need (products with a shared operand that add into one result count once), in three units:
#   [ckv] = 2·c·K·V (a c×K by K×V product or its transposes), [cck] = c²·K, [ccv] = c²·V: every c×c
#   product is triangular (a masked Q Kᵀ, K Kᵀ, a lower-triangular matrix times R, W, Ō, dP, or a
#   product of which only the lower triangle is used) and counts half a dense one, as SDPA's causal
#   count below does.
# Forward:
#   always    K·X (R = K X − V), Q·X (read), Kᵀ·(G_r⊙R [+ E_r⊙W]) (X')                 3 [ckv]
#             Q·Kᵀ                                                                  1 [cck]
#             (QKᵀ⊙G)·R                                                             1 [ccv]
#   momentum  Q·S (read), Kᵀ·(N_r⊙R) (S')                                          +2 [ckv]
#   dgd       K·S in P, with momentum                                              +1 [ckv]
#             K·Kᵀ                                                                 +1 [cck]
#             (KKᵀ⊙G)·R (P), (I+L)⁻¹·P (W), (QKᵀ⊙E)·W (read)                       +3 [ccv]
# Backward (given the chunk states; their recomputation is not counted):
#   always    K·dX', Qᵀ·(β⊙Ō), Kᵀ·(dR [+ β⊙dP]) (dX), Ō·Xᵀ (dQ), (dR [+ β⊙dP])·Xᵀ,
#             (G_r⊙R [+ E_r⊙W])·dX'ᵀ (dK)                                            6 [ckv]
#             Q·Kᵀ, dQ̃·K (dQ), dQ̃ᵀ·Q (dK)                                         3 [cck]
#             (QKᵀ⊙G)ᵀ·Ō (dR), Ō·Rᵀ (dQ̃, dG)                                       2 [ccv]
#   momentum  K·dS', Qᵀ·(f⊙Ō) (dS), Ō·Sᵀ (dQ), (N_r⊙R)·dS'ᵀ (dK)                  +4 [ckv]
#   dgd       Kᵀ·(f⊙dP) (dS), dP·Sᵀ (dK), with momentum                            +2 [ckv]
#             K·Kᵀ, (dÂ + dÂᵀ)·K (dK)                                               +2 [cck]
#             (KKᵀ⊙G)ᵀ·dP (dR), (QKᵀ⊙E)ᵀ·Ō (dW), (I+L)⁻ᵀ·dW (dP), Ō·Wᵀ (dQ̃, dE),
#             dP·Rᵀ (dÂ), dW·Pᵀ (d(I+L)⁻¹)                                         +6 [ccv]
# Not counted: the gate algebra (per-chunk c×c products of gates and the O(c³) triangular inverse
# of the DGD system, independent of K and V), element-wise work, state recomputation.
# A call's count sums the chunks of each of the B·H (sequence, head) pairs; the last chunk of a
# sequence has T mod C tokens when C does not divide T.
#
# Minimal bytes (each tensor touched once): forward reads q, k, v and the gates (lr, retention,
# momentum) and writes o and the final state (memory, momentum; fp32, N·H·K·V each, written once);
# the backward reads q, k, v, the gates and do and writes dq, dk, dv and the gate gradients.
# q/k/v/o and their gradients in the input dtype (bf16: 2 bytes), gates fp32 (4 bytes).
#
# SDPA (causal): forward 4·B·H·T²·D / 2 FLOPs (QKᵀ and PV, half masked); forward+backward
# 3.5 × that (FlashAttention's count: the backward's five products are 2.5 × the forward's two).
# Bytes: forward reads q, k, v and writes o; the backward reads q, k, v, o, do and writes
# dq, dk, dv (the fp32 log-sum-exp, B·H·T values, is left out).


def linear_memory_chunk_flops(c: int, K: int, V: int, *, momentum: bool, dgd: bool, backward: bool) -> int:
    """Matrix-product FLOPs of one chunk of `c` tokens of one head (the table above)."""
    m, d = int(momentum), int(dgd)
    if not backward:
        ckv, cck, ccv = 3 + 2 * m + d * m, 1 + d, 1 + 3 * d
    else:
        ckv, cck, ccv = 6 + 4 * m + 2 * d * m, 3 + 2 * d, 2 + 6 * d
    return 2 * c * K * V * ckv + c * c * K * cck + c * c * V * ccv


def linear_memory_flops(B: int, T: int, H: int, K: int, V: int, *, chunk_size: int = settings.CHUNK,
                        momentum: bool = True, dgd: bool = False, mode: str = "fwd") -> int:
    """FLOPs of one `linear_memory` call (`mode="fwd"`) or forward + backward (`"fwdbwd"`)."""
    mode = _mode(mode)
    full, tail = divmod(T, chunk_size)
    total = 0
    for backward in ((False,) if mode == "fwd" else (False, True)):
        per_seq = full * linear_memory_chunk_flops(chunk_size, K, V, momentum=momentum, dgd=dgd, backward=backward)
        if tail:
            per_seq += linear_memory_chunk_flops(tail, K, V, momentum=momentum, dgd=dgd, backward=backward)
        total += B * H * per_seq
    return total


def linear_memory_bytes(B: int, T: int, H: int, K: int, V: int, *, momentum: bool = True, mode: str = "fwd",
                        io_bytes: int = 2, gate_bytes: int = 4, state_bytes: int = 4,
                        final_state: bool = True) -> int:
    """Minimal HBM bytes of one call (`"fwd"`) or forward + backward (`"fwdbwd"`)."""
    mode = _mode(mode)
    tok = B * T * H
    gates = (2 + int(momentum)) * tok * gate_bytes
    fwd = tok * (2 * K + V) * io_bytes + gates + tok * V * io_bytes            # q, k, v, gates; o
    if final_state:
        fwd += (1 + int(momentum)) * B * H * K * V * state_bytes               # memory (+ momentum), once
    if mode == "fwd":
        return fwd
    bwd = tok * (2 * K + 2 * V) * io_bytes + gates                             # q, k, v, do, gates
    bwd += tok * (2 * K + V) * io_bytes + gates                                # dq, dk, dv, d gates
    return fwd + bwd


def sdpa_flops(B: int, T: int, H: int, D: int, *, mode: str = "fwd") -> int:
    fwd = 4 * B * H * T * T * D // 2
    return fwd if _mode(mode) == "fwd" else int(SDPA_FWDBWD_FACTOR * fwd)


def sdpa_bytes(B: int, T: int, H: int, D: int, *, mode: str = "fwd", io_bytes: int = 2) -> int:
    tensors = 4 if _mode(mode) == "fwd" else 4 + 8
    return tensors * B * T * H * D * io_bytes


def roofline_fraction(flops: float, nbytes: float, ms: float, *, peak_tflops: float = PEAK_TFLOPS,
                      peak_tbps: float = PEAK_TBPS) -> float:
    """Roofline time `max(flops / peak, bytes / bandwidth)` over the measured time."""
    bound_s = max(flops / (peak_tflops * 1e12), nbytes / (peak_tbps * 1e12))
    return bound_s / (ms * 1e-3)
