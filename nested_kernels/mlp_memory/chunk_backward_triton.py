"""The hand-written backward of ONE chunk of `mlp_memory` (SPEC §3) with the Triton kernels of
`triton_kernels/mlp_memory/chunk_bwd.py`, every (sequence, head) of the chunk in one launch per
stage. Derivation: triton_kernels/mlp_memory/README_backward.md (BACKGROUND.md §4).

The gate matrices β, f, G, m, N, E of the chunk come from the Triton gate op
(`common/chunk_gates_triton.py`) and, with DGD, the chunk's (I + L)^{-1} from the Triton DGD
inverse kernel (`triton_kernels/common/dgd_inverse.py`; its gradient dL = −dRhs Wᵀ is formed in
the kernels). The kernels return the gradients of the gate matrices, and the gate op's own
backward (Triton for 16- and 32-row chunks) maps them to dlr, dretention, dmomentum.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from ..common.chunk_gates import ChunkGates
from ..common.chunk_gates_triton import chunk_gates_for, chunk_gates_vjp

GRAD_NAMES = ("dq", "dk", "dv", "dlr", "dretention", "dmomentum", "dw1", "dw2", "ds1", "ds2")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _padded_gate(g: torch.Tensor, BT: int, pad: float) -> torch.Tensor:
    """[B, C, H] -> [B, H, BT] fp32 with the tail padded by `pad` (η = 0, α = μ = 1: inert tokens)."""
    g = g.float().movedim(1, 2)
    return F.pad(g, (0, BT - g.shape[-1]), value=pad)


def _per_sequence(x: Optional[torch.Tensor], B: int) -> Optional[torch.Tensor]:
    """An fp32 contiguous state [B, H, ·, ·] (a leading 1 broadcasts)."""
    return None if x is None else x.float().expand(B, *x.shape[1:]).contiguous()


def _check(q, k, v, lr, momentum, w1, w2, s1, s2, do, activation, residual, dgd, self_target, read):
    from ..triton_kernels.common.activations import ACT_CODES

    B, C, H, K = q.shape
    V = v.shape[-1]
    if activation not in ACT_CODES:
        raise ValueError(f"activation: expected one of {sorted(ACT_CODES)}, got {activation!r}")
    if read not in ("current", "chunk_start"):
        raise ValueError(f"read: expected 'current' or 'chunk_start', got {read!r}")
    if (residual or self_target) and K != V:
        raise ValueError(f"residual / self_target: expected K == V, got K = {K}, V = {V}")
    if not 1 <= C <= 64:
        raise NotImplementedError(f"mlp_memory_chunk_backward_triton: chunks of 1 to 64 tokens, got C = {C}")
    if k.shape != q.shape or v.shape[:3] != (B, C, H) or do.shape != v.shape or lr.shape != (B, C, H):
        raise ValueError(f"expected q, k [B, C, H, K], v, do [B, C, H, V], gates [B, C, H]; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}, do {tuple(do.shape)}, lr {tuple(lr.shape)}")
    if (momentum is None) != (s1 is None) or (momentum is None) != (s2 is None):
        raise ValueError("momentum, s1, s2: expected all three or none")
    Dh = w1.shape[-1]
    if (w1.shape[1:] != (H, K, Dh) or w2.shape[1:] != (H, Dh, V) or w1.shape[0] not in (1, B)
            or w2.shape[0] != w1.shape[0]):
        raise ValueError(f"expected w1 [B | 1, H, K, Dh], w2 [B | 1, H, Dh, V]; got {tuple(w1.shape)}, "
                         f"{tuple(w2.shape)}")
    return B, C, H, K, V, Dh


def mlp_memory_chunk_backward_triton(q, k, v, lr, retention, momentum, w1, w2, s1, s2, do, dw1_next, dw2_next,
                                     ds1_next, ds2_next, *, activation, residual, dgd, self_target, read):
    """Gradients of one chunk of `mlp_memory` (the torch tier with `chunk_size=C`) w.r.t. its inputs.

    Args:
        q, k (torch.Tensor): `[B, C, H, K]`, the chunk's queries and keys (C ≤ 64 tokens; a partial
            last chunk is just a smaller C).
        v (torch.Tensor): `[B, C, H, V]`.
        lr, retention (torch.Tensor): `[B, C, H]` gates η, α.
        momentum (torch.Tensor, Optional): `[B, C, H]` gate μ, or None (no momentum state).
        w1, w2 (torch.Tensor): chunk-start weights `[B | 1, H, K, Dh]`, `[B | 1, H, Dh, V]` (fp32).
        s1, s2 (torch.Tensor, Optional): chunk-start momenta `[B, H, K, Dh]`, `[B, H, Dh, V]`; None
            without momentum.
        do (torch.Tensor): `[B, C, H, V]` gradient of the chunk's outputs.
        dw1_next, dw2_next, ds1_next, ds2_next (torch.Tensor, Optional): gradients of the chunk-END
            state (None: zero; ds*_next must be None without momentum).
        activation, residual, dgd, self_target, read: as `mlp_memory` (all combinations).

    Returns:
        (dq, dk, dv, dlr, dretention, dmomentum, dw1, dw2, ds1, ds2), each shaped and typed like
        its input (dmomentum, ds1, ds2 None without momentum; dw1, dw2 summed over the batch when
        w1, w2 have a leading 1).
    """
    from ..triton_kernels.mlp_memory.chunk_bwd import (
        mlp_memory_bwd_kernel_dd, mlp_memory_bwd_kernel_dres, mlp_memory_bwd_kernel_dw, mlp_memory_bwd_kernel_inner,
        mlp_memory_bwd_kernel_qk, mlp_memory_bwd_kernel_res,
    )
    from ..triton_kernels.mlp_memory.configs_bwd import chunk_tile, launch_config
    from ..triton_kernels.common.activations import ACT_CODES
    from ..triton_kernels.utils.launch import launch
    from ..triton_kernels.utils.operand_precision import dot_precision

    B, C, H, K, V, Dh = _check(q, k, v, lr, momentum, w1, w2, s1, s2, do, activation, residual, dgd, self_target,
                               read)
    device = q.device
    use_mom = momentum is not None
    current = read == "current"
    BT = chunk_tile(C)
    BH = B * H
    f32 = dict(dtype=torch.float32, device=device)
    # the kernels read every input as fp32; 16-bit inputs are converted on load
    q_, k_, v_, do_ = (x.contiguous() for x in (q, k, v, do))
    W1, W2, S1, S2 = (_per_sequence(x, B) for x in (w1, w2, s1, s2))
    zeros_like_state = lambda x, like: like.new_zeros(like.shape) if x is None else _per_sequence(x, B)
    dW1n, dW2n = zeros_like_state(dw1_next, W1), zeros_like_state(dw2_next, W2)
    dS1n = zeros_like_state(ds1_next, S1) if use_mom else None
    dS2n = zeros_like_state(ds2_next, S2) if use_mom else None

    gate_inputs = [_padded_gate(g, BT, pad).reshape(BH, BT).contiguous() for g, pad in ((lr, 0.0), (retention, 1.0))]
    gate_inputs.append(_padded_gate(momentum, BT, 1.0).reshape(BH, BT).contiguous() if use_mom else None)
    gates = chunk_gates_for(BT)(*gate_inputs)
    decay, carry, write, mom_decay, mom_write, dgd_write = gates                # [BH, BT + 1, (BT)]
    dgd_inv = None
    if dgd:                                                                   # (I + L)^{-1} of the padded chunk
        from ..triton_kernels.common.dgd_inverse import dgd_inverse_fwd

        k_pad = F.pad(k, (0, 0, 0, 0, 0, BT - C)).reshape(B * BT, H, K).contiguous()
        inv = dgd_inverse_fwd(k_pad, gates.dgd_write.view(B, H, BT + 1, BT).transpose(0, 1).contiguous(),
                              input_dtype=do.dtype)                           # [H, B, ..], as the forward's
        dgd_inv = inv.transpose(0, 1).reshape(BH, BT, BT).contiguous()

    common = dict(C=C, H=H, K=K, V=V, BT=BT, DOT_PRECISION=dot_precision(do.dtype))   # dO: the op's input dtype
    act = ACT_CODES[activation]
    res = torch.empty(BH, BT, V, **f32)
    cfg = launch_config("res", K, V, Dh, BT, dgd)
    launch(mlp_memory_bwd_kernel_res, (BH, _cdiv(V, cfg.BV)), device, k=k_, v=v_, w1=W1, w2=W2, res=res,
           **common, DH=Dh, BK=cfg.BK, BV=cfg.BV, BD=cfg.BD, ACT=act, IS_RESIDUAL=residual,
           IS_SELF_TARGET=self_target, num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    qk_dor = None
    if current or dgd:
        cfg = launch_config("qk", K, V, Dh, BT, dgd)
        qk_dor = torch.empty(BH, 7, BT, BT, **f32)
        launch(mlp_memory_bwd_kernel_qk, (BH,), device, q=q_, k=k_, do=do_, write=write, dgd_write=dgd_write, res=res,
               qk_dor=qk_dor, **common,
               BK=cfg.BK, BV=cfg.BV, USE_DGD=dgd, num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    cfg = launch_config("inner", K, V, Dh, BT, dgd)
    ND = _cdiv(Dh, cfg.BD)
    names = ("z_buf", "aq_buf", "dzq_buf", "dp_buf", "dz2_buf", "d_buf") + (("wp_buf", "drhs_buf") if dgd else ())
    scratch = {name: torch.empty(BH, BT, Dh, **f32) for name in names}
    scratch.update({name: None for name in ("wp_buf", "drhs_buf") if name not in scratch})
    dq_part, dr_part = torch.empty(ND, BH, BT, K, **f32), torch.empty(ND, BH, BT, V, **f32)
    # partial sums over Dh tiles; zeros: the slots a configuration leaves unwritten
    cc_part = torch.zeros(ND, BH, 5, BT, BT, **f32) if current or dgd else None
    dvec_part = torch.zeros(ND, BH, 8, BT, **f32)
    dlast_part = torch.zeros(ND, BH, 4, **f32)
    flags = dict(DH=Dh, ACT=act, USE_MOMENTUM=use_mom, IS_READ_CURRENT=current, USE_DGD=dgd)
    launch(mlp_memory_bwd_kernel_inner, (BH, ND), device, q=q_, k=k_, do=do_, w1=W1, w2=W2, s1=S1, s2=S2, dw1n=dW1n,
           dw2n=dW2n, ds1n=dS1n, ds2n=dS2n, decay=decay, carry=carry, dgd_write=dgd_write, dgd_inv=dgd_inv, res=res,
           qk_dor=qk_dor, z_buf=scratch["z_buf"], aq_buf=scratch["aq_buf"], dzq_buf=scratch["dzq_buf"],
           dz2_buf=scratch["dz2_buf"], d_buf=scratch["d_buf"], wp_buf=scratch["wp_buf"], dq_part=dq_part,
           cc_part=cc_part, dvec_part=dvec_part, dlast_part=dlast_part, **common, BK=cfg.BK, BV=cfg.BV, BD=cfg.BD,
           **flags, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    BD, cfg = cfg.BD, launch_config("dd", K, V, Dh, BT, dgd)
    assert cfg.BD == BD, f"configs_bwd: 'dd' must share the Dh tiles of 'inner' (its partials), got {cfg.BD} != {BD}"
    launch(mlp_memory_bwd_kernel_dd, (BH, ND), device, k=k_, w2=W2, s1=S1, dw1n=dW1n, dw2n=dW2n, ds1n=dS1n,
           ds2n=dS2n, write=write, mom_write=mom_write, dgd_write=dgd_write, dgd_inv=dgd_inv, res=res, qk_dor=qk_dor,
           z_buf=scratch["z_buf"], dzq_buf=scratch["dzq_buf"], dp_buf=scratch["dp_buf"], dz2_buf=scratch["dz2_buf"],
           d_buf=scratch["d_buf"], wp_buf=scratch["wp_buf"], drhs_buf=scratch["drhs_buf"], dr_part=dr_part,
           cc_part=cc_part, dvec_part=dvec_part, **common, BK=cfg.BK, BV=cfg.BV, BD=cfg.BD, **flags,
           num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    cc = None if cc_part is None else cc_part.sum(0)

    cfg = launch_config("dres", K, V, Dh, BT, dgd)
    dres = torch.empty(BH, BT, V, **f32)
    dq, dk, dv = torch.empty(B, C, H, K, **f32), torch.empty(B, C, H, K, **f32), torch.empty(B, C, H, V, **f32)
    d_gm = torch.empty(BH, BT, BT, **f32) if current else None
    d_em = torch.empty(BH, BT, BT, **f32) if current and dgd else None
    d_gprev = torch.empty(BH, BT, BT, **f32) if dgd else None
    d_eprev = torch.empty(BH, BT, BT, **f32) if dgd else None
    launch(mlp_memory_bwd_kernel_dres, (BH,), device, q=q_, k=k_, do=do_, write=write, dgd_write=dgd_write,
           qk_dor=qk_dor, cc=cc, dq_sum=dq_part.sum(0), dr_sum=dr_part.sum(0), dres=dres, dq=dq, dk=dk, dv=dv,
           d_gm=d_gm, d_em=d_em, d_gprev=d_gprev, d_eprev=d_eprev, **common, BK=cfg.BK, BV=cfg.BV, IS_RESIDUAL=residual,
           IS_SELF_TARGET=self_target, IS_READ_CURRENT=current, USE_DGD=dgd, num_warps=cfg.num_warps,
           num_stages=cfg.num_stages)

    cfg = launch_config("dw", K, V, Dh, BT, dgd)
    ND_dw = _cdiv(Dh, cfg.BD)                                                # the scratch layout does not depend on BD
    dW1, dW2 = torch.empty_like(W1), torch.empty_like(W2)
    dS1, dS2 = (torch.empty_like(S1), torch.empty_like(S2)) if use_mom else (None, None)
    dk_part = torch.empty(ND_dw, BH, BT, K, **f32)
    dv_part = torch.empty(ND_dw, BH, BT, K, **f32) if self_target else None
    launch(mlp_memory_bwd_kernel_dw, (BH, ND_dw), device, q=q_, k=k_, v=v_, do=do_, w1=W1, w2=W2, s1=S1, dw1n=dW1n,
           dw2n=dW2n, ds1n=dS1n, ds2n=dS2n, decay=decay, carry=carry, write=write, mom_decay=mom_decay,
           mom_write=mom_write, dgd_write=dgd_write, res=res, dres=dres, qk_dor=qk_dor, **scratch, dw1=dW1, dw2=dW2,
           ds1=dS1, ds2=dS2, dk_part=dk_part, dv_part=dv_part, **common, DH=Dh, BK=cfg.BK, BV=cfg.BV, BD=cfg.BD,
           ACT=act, USE_MOMENTUM=use_mom, IS_READ_CURRENT=current, IS_SELF_TARGET=self_target, USE_DGD=dgd,
           num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    # [ND, BH, BT, ·] -> [B, C, H, ·] (the last size named: -1 is ambiguous at H = 0)
    tokens = lambda part: part.sum(0).view(B, H, BT, part.shape[-1])[:, :, :C].transpose(1, 2)
    dk = dk + tokens(dk_part)
    if self_target:
        dv = dv + tokens(dv_part)

    # gradients of the gate matrices -> dlr, dretention, dmomentum through the gate op's backward
    dvec, dlast = dvec_part.sum(0), dlast_part.sum(0)                        # [BH, 8, BT], [BH, 4]
    d_decay = torch.zeros(BH, BT + 1, **f32)
    d_write = torch.zeros(BH, BT + 1, BT, **f32)
    if current:
        d_decay[:, 1:] += dvec[:, 0]
        d_write[:, 1:] += d_gm
    d_decay[:, C] += dlast[:, 0]
    d_write[:, C] += dvec[:, 2]
    cotangents = {"decay": d_decay, "write": d_write}
    if dgd:
        d_decay[:, :BT] += dvec[:, 4]                                         # rows before each token (Rhs)
        d_write[:, :BT] += d_gprev
        d_dgd_write = torch.zeros(BH, BT + 1, BT, **f32)
        if current:
            d_dgd_write[:, 1:] += d_em
        d_dgd_write[:, C] += dvec[:, 6]
        d_dgd_write[:, :BT] += d_eprev                                        # through the DGD system
        if not use_mom:                                                       # no momentum: E is G
            d_write += d_dgd_write
        else:
            cotangents["dgd_write"] = d_dgd_write
    if use_mom:
        d_carry, d_mom_decay = torch.zeros(BH, BT + 1, **f32), torch.zeros(BH, BT + 1, **f32)
        d_mom_write = torch.zeros(BH, BT + 1, BT, **f32)
        if current:
            d_carry[:, 1:] += dvec[:, 1]
        if dgd:
            d_carry[:, :BT] += dvec[:, 5]
        d_carry[:, C] += dlast[:, 1]
        d_mom_decay[:, C] += dlast[:, 2]
        d_mom_write[:, C] += dvec[:, 3]
        cotangents.update(carry=d_carry, mom_decay=d_mom_decay, mom_write=d_mom_write)
    if not use_mom:                                                           # G is the op's E output then
        cotangents["dgd_write"] = cotangents.pop("write")
    d_gates = chunk_gates_vjp(*gate_inputs, [cotangents.get(name) for name in ChunkGates._fields])
    dlr, dret, *dmom = (d.view(B, H, BT)[..., :C].movedim(2, 1).to(g.dtype)
                        for d, g in zip(d_gates, (lr, retention, momentum)) if d is not None)

    def like_state(grad, x):                                                  # a leading 1 sums over the batch
        if grad is None:
            return None
        return (grad.sum(0, keepdim=True) if x.shape[0] != grad.shape[0] else grad).to(x.dtype)

    return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dlr, dret, dmom[0] if use_mom else None,
            like_state(dW1, w1), like_state(dW2, w2), like_state(dS1, s1), like_state(dS2, s2))


