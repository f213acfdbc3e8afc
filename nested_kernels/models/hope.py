"""HOPE (SPEC §6): self-modifying Titans followed by a Continuum Memory System, per layer.

    h = x + SelfModifyingTitans(RMSNorm(x));    y = h + CMS(RMSNorm(h))

SelfModifyingTitans, per head (head_dim D, memories K = V = D, hidden `mem_hidden`):
    q_t  = L2norm(conv4(x_t W_q))                          the only static projection
    x̃_t  = conv4(x_t W_in)
    k, v, η, α = self_modifying_titans(x̃, M_k, M_v, M_η, M_α; chunk C_aux)
    o_t  = M_memory(q_t) after token t's write              mlp_memory(read="current", chunk C_mem)
    out  = W_o (RMSNorm(o_t) ⊙ SiLU(x_t W_g))               `modules.GatedOutput`

Decisions ([decision] in SPEC §6 and those this module adds):
* [decision, SPEC] pre-norm residual blocks; RMSNorm.
* [decision, SPEC] scalars are read out of M_η, M_α as the mean over the head's D outputs:
  η_t = lr_max·σ(mean M_η(x̃_t) + b_η), α_t = σ(mean M_α(x̃_t) + b_α).
* [decision, here] b_η, b_α are learned per-head biases (init 0 and `retention_bias` = 4):
  with b_α = 0 a fresh model would keep only ≈ half of every memory per token.
* [decision, SPEC] momentum μ is a learned per-head constant σ(θ) (init μ = 0.9); M_k, M_v,
  M_η, M_α share one μ per head, M_memory has its own.
* [decision, SPEC] M_memory reads after token t's write (`read="current"`).
* [decision, here] M_memory writes with the same k_t, v_t, η_t, α_t as the four small
  memories, with self-generated targets (`self_target=True`), DGD and momentum.
* [decision, here] no activation after the short convolutions (SPEC's formulas have none).
* [decision, here] the initial states of all memories are parameters: w1 ~ N(0, 1/D),
  w2 ~ N(0, 0.02²), so every residual memory starts near the identity; momenta start at zero.
* [decision, here] ablations: `use_dgd=False` drops DGD in all five memories;
  `use_momentum=False` drops every momentum state; `self_modify=False` replaces M_k, M_v,
  M_η, M_α by static linear maps of x̃ (k = L2norm(x̃ W_k), v = x̃ W_v, η = lr_max·σ(x̃ w_η),
  α = σ(x̃ w_α + 4)); `use_cms=False` drops the CMS half of every block.
* [decision, here] `y = h + (CMS(Norm(h)) − Norm(h))`: every CMS level is already residual
  (`z + φ(z W1) W2`), so the block adds only the levels' branches; adding CMS's output as
  written in SPEC would also add Norm(h) to the residual stream in every layer.
* [decision, here] tied input/output embeddings and a final RMSNorm.

Backends: `HopeConfig.backend` (or `HopeLM(config, backend=...)`) is the `backend=` of M_memory
(`mlp_memory`) and of the CMS levels (`cms_level`): "reference", "torch", "triton" (their Triton
kernels; interpreted on a CPU) or "auto". The self-modifying memories run on the torch tier
unless the backend is "reference" (their fused op is not a kernel yet); decode steps on "torch"
for the reference/torch backends, else "auto" (the cpp/cuda step kernels where they can run).

Streaming state (exact, no recomputation): every op counts chunks from the start of its call
(SPEC §1), so `HopeLM.forward` returns per layer the *decode* state of every op — the
self-modifying memories and M_memory as `MLPMemoryDecodeState`s (chunk-start weights, running
weights and momenta, position in the chunk), each CMS level as a `CMSDecodeState`, the
convolution caches, and the layer's token count (each op's position in its chunk, known on the
host without reading the states back). A call continues each op from its position: the decode
step finishes the op's current chunk, the chunked op runs the rest (`common/streaming.py`). Any split of a
stream — token-by-token decoding included — gives the logits of one call, and no past token is
run again. Differentiable across calls (torch step ops), so splits also work for training.
"""
import math
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..cms import CMSDecodeState
from ..common.streaming import continue_stream
from ..mlp_memory import MLPMemoryDecodeState, MLPMemoryState, mlp_memory, mlp_memory_step
from ..modules import CMS, ShortConvolution
from ..modules.memory_layer import GatedOutput
from ..self_modifying import (
    SelfModifyingState, self_modifying_step, self_modifying_titans, split_memories, stack_memories,
)

__all__ = ["HopeConfig", "SelfModifyingTitans", "HopeBlock", "HopeLM", "HopeLayerState", "HopeState"]


@dataclass
class HopeConfig:
    vocab: int
    d_model: int = 256
    layers: int = 4
    heads: int = 4
    head_dim: int = 64
    mem_hidden: int = 64
    c_aux: int = 16
    c_mem: int = 64
    cms_levels: Optional[Sequence[Tuple[int, int]]] = None   # None -> [(4d, 16), (4d, 256), (4d, 4096)]
    activation: str = "silu"
    lr_max: float = 0.1
    retention_bias: float = 4.0
    conv_size: int = 4
    cms_lr: float = 1e-2
    use_dgd: bool = True
    use_momentum: bool = True
    self_modify: bool = True
    use_cms: bool = True
    backend: str = "torch"

    def __post_init__(self):
        if self.cms_levels is None:
            self.cms_levels = [(4 * self.d_model, 16), (4 * self.d_model, 256), (4 * self.d_model, 4096)]
        self.cms_levels = [(int(h), int(p)) for h, p in self.cms_levels]


class HopeLayerState(NamedTuple):
    aux: Optional[MLPMemoryDecodeState]       # M_k, M_v, M_η, M_α stacked as 4·H heads (None: self_modify=False)
    memory: MLPMemoryDecodeState              # M_memory
    conv: Tuple[torch.Tensor, torch.Tensor]   # caches of the q and x̃ convolutions
    cms: Optional[List[CMSDecodeState]]       # one per CMS level (None with use_cms=False)
    tokens: int = 0                           # tokens seen: each op's position in its chunk, without reading it
                                              # back from the device


class HopeState(NamedTuple):
    layers: Tuple[HopeLayerState, ...]        # every layer's decode states after the tokens seen so far


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class SelfModifyingTitans(nn.Module):
    """The self-modifying Titans half of a HOPE block; `forward(x, state) -> (y, state)`."""

    def __init__(self, cfg: HopeConfig):
        super().__init__()
        self.cfg = cfg
        H, D, Dh = cfg.heads, cfg.head_dim, cfg.mem_hidden
        self.q_proj = nn.Linear(cfg.d_model, H * D, bias=False)
        self.in_proj = nn.Linear(cfg.d_model, H * D, bias=False)
        self.q_conv, self.in_conv = ShortConvolution(H * D, cfg.conv_size), ShortConvolution(H * D, cfg.conv_size)
        self.mem_w1 = nn.Parameter(torch.randn(1, H, D, Dh) / D**0.5)            # M_memory's initial state
        self.mem_w2 = nn.Parameter(torch.randn(1, H, Dh, D) * 0.02)
        self.mem_momentum = nn.Parameter(torch.full((H,), _logit(0.9))) if cfg.use_momentum else None
        if cfg.self_modify:
            self.aux_w1 = nn.Parameter(torch.randn(4, 1, H, D, Dh) / D**0.5)     # M_k, M_v, M_η, M_α
            self.aux_w2 = nn.Parameter(torch.randn(4, 1, H, Dh, D) * 0.02)
            self.aux_momentum = nn.Parameter(torch.full((H,), _logit(0.9))) if cfg.use_momentum else None
            self.lr_bias = nn.Parameter(torch.zeros(H))
            self.retention_bias = nn.Parameter(torch.full((H,), cfg.retention_bias))
        else:                                                                       # ablation: static maps of x̃
            self.k_proj = nn.Linear(H * D, H * D, bias=False)
            self.v_proj = nn.Linear(H * D, H * D, bias=False)
            self.lr_proj = nn.Linear(H * D, H)
            self.retention_proj = nn.Linear(H * D, H)
            nn.init.constant_(self.retention_proj.bias, cfg.retention_bias)
        self.output = GatedOutput(cfg.d_model, H, D)

    def initial_aux_state(self) -> SelfModifyingState:
        return SelfModifyingState(*(MLPMemoryState(self.aux_w1[i], self.aux_w2[i]) for i in range(4)))

    def _step_backend(self) -> str:
        return "torch" if self.cfg.backend in ("reference", "torch") else "auto"

    def _aux_memories(self, x_tilde, state: Optional[MLPMemoryDecodeState], tokens: int):
        """k, v, η, α of M_k, M_v, M_η, M_α continued from `state` (None: the initial memories) after
        `tokens` tokens."""
        cfg, (B, T, H, _) = self.cfg, x_tilde.shape
        dtype = torch.float64 if x_tilde.dtype == torch.float64 else torch.float32
        options = dict(lr_max=cfg.lr_max, dgd=cfg.use_dgd, activation=cfg.activation, lr_bias=self.lr_bias,
                       retention_bias=self.retention_bias,
                       momentum=None if self.aux_momentum is None else torch.sigmoid(self.aux_momentum))
        backend = "torch" if cfg.backend not in ("reference", "torch") else cfg.backend

        def step(lo, hi, dec):
            return self_modifying_step(x_tilde[:, lo:hi], dec, backend=self._step_backend(), **options), dec

        def chunked(lo, hi, start):
            *reads, end = self_modifying_titans(x_tilde[:, lo:hi], start, chunk_size=cfg.c_aux, backend=backend,
                                                **options)
            return reads, end

        def decode_state(running, start, position):
            return MLPMemoryDecodeState.in_chunk(
                stack_memories(running, dtype), stack_memories(start, dtype), position, cfg.c_aux,
                batch_size=B, momentum=self.aux_momentum is not None)

        parts, state = continue_stream(
            T, tokens % cfg.c_aux, cfg.c_aux, step=step, chunked=chunked, decode_state=decode_state, state=state,
            boundary_state=lambda dec: self.initial_aux_state() if dec is None
            else SelfModifyingState(*split_memories(dec.to_state(), H)),
        )
        return [torch.cat(p, 1) for p in zip(*parts)], state

    def _memory(self, q, k, v, lr, retention, state: Optional[MLPMemoryDecodeState], tokens: int):
        """o_t = M_memory(q_t) after token t's write, continued from `state` (None: the initial memory)
        after `tokens` tokens."""
        cfg, B, T = self.cfg, q.shape[0], q.shape[1]
        mu = None if self.mem_momentum is None else torch.sigmoid(self.mem_momentum).expand(B, T, cfg.heads)
        options = dict(activation=cfg.activation, residual=True, dgd=cfg.use_dgd, self_target=True, read="current")

        def inputs(lo, hi):
            return (*(x[:, lo:hi] for x in (q, k, v, lr, retention)), None if mu is None else mu[:, lo:hi])

        def step(lo, hi, dec):
            return mlp_memory_step(*inputs(lo, hi), dec, backend=self._step_backend(), **options), dec

        def chunked(lo, hi, start):
            return mlp_memory(*inputs(lo, hi), initial_state=start, chunk_size=cfg.c_mem, output_final_state=True,
                              backend=cfg.backend, **options)

        parts, state = continue_stream(
            T, tokens % cfg.c_mem, cfg.c_mem, step=step, chunked=chunked, state=state,
            boundary_state=lambda dec: MLPMemoryState(self.mem_w1, self.mem_w2) if dec is None else dec.to_state(),
            decode_state=lambda running, start, position: MLPMemoryDecodeState.in_chunk(
                running, start, position, cfg.c_mem, batch_size=B, momentum=mu is not None),
        )
        return torch.cat(parts, 1), state

    def forward(self, x, state: Optional[HopeLayerState] = None):
        """x `[B, T ≥ 1, d_model]` -> (y `[B, T, d_model]`, (aux state, memory state, conv caches))."""
        cfg, (B, T, _) = self.cfg, x.shape
        H, D = cfg.heads, cfg.head_dim
        q_cache, in_cache = (None, None) if state is None else state.conv
        tokens = 0 if state is None else state.tokens
        q, q_cache = self.q_conv(self.q_proj(x), q_cache)
        x_tilde, in_cache = self.in_conv(self.in_proj(x), in_cache)
        q = F.normalize(q.view(B, T, H, D), dim=-1)                                 # q_t = L2norm(conv4(x_t W_q))
        aux = None
        if cfg.self_modify:
            (k, v, lr, retention), aux = self._aux_memories(x_tilde.view(B, T, H, D), None if state is None
                                                            else state.aux, tokens)
        else:
            k = F.normalize(self.k_proj(x_tilde).view(B, T, H, D), dim=-1)
            v = self.v_proj(x_tilde).view(B, T, H, D)
            lr = cfg.lr_max * torch.sigmoid(self.lr_proj(x_tilde))
            retention = torch.sigmoid(self.retention_proj(x_tilde))
        o, memory = self._memory(q, k.to(q.dtype), v.to(q.dtype), lr, retention,
                                 None if state is None else state.memory, tokens)
        return self.output(o.to(x.dtype), x), (aux, memory, (q_cache, in_cache))


class HopeBlock(nn.Module):
    """`h = x + SelfModifyingTitans(RMSNorm(x)); y = h + CMS(RMSNorm(h))`."""

    def __init__(self, cfg: HopeConfig):
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.d_model)
        self.titans = SelfModifyingTitans(cfg)
        self.norm2 = nn.RMSNorm(cfg.d_model) if cfg.use_cms else None
        self.cms = CMS(cfg.d_model, cfg.cms_levels, activation=cfg.activation, lr=cfg.cms_lr,
                       backend=cfg.backend) if cfg.use_cms else None

    def forward(self, x, state: Optional[HopeLayerState] = None) -> Tuple[torch.Tensor, HopeLayerState]:
        y, (aux, memory, conv) = self.titans(self.norm1(x), state)
        h = x + y
        cms_state = None
        if self.cms is not None:
            z = self.norm2(h)
            c, cms_state = self.cms.stream(z, None if state is None else state.cms)
            h = h + (c - z)               # CMS levels are residual (c = z + Σ branches): add the branches only
        return h, HopeLayerState(aux, memory, conv, cms_state, x.shape[1] + (0 if state is None else state.tokens))


class HopeLM(nn.Module):
    """Causal language model of HOPE blocks with tied embeddings.

    `forward(tokens [B, T], state=None) -> (logits [B, T, vocab], HopeState)`: pass the state
    back to continue the stream; any split of a stream gives the logits of one call, and no
    token is run twice (see the module docstring). `generate(tokens, max_new_tokens, temperature=0.0)` decodes with it.
    """

    def __init__(self, config: HopeConfig, backend: Optional[str] = None):
        super().__init__()
        if backend is not None:
            config = HopeConfig(**{**config.__dict__, "backend": backend})
        self.config = config
        self.embed = nn.Embedding(config.vocab, config.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.blocks = nn.ModuleList(HopeBlock(config) for _ in range(config.layers))
        self.norm = nn.RMSNorm(config.d_model)

    def _run(self, tokens, layers):
        h = self.embed(tokens)
        states = []
        for i, block in enumerate(self.blocks):
            h, s = block(h, None if layers is None else layers[i])
            states.append(s)
        return self.norm(h) @ self.embed.weight.t(), tuple(states)

    def forward(self, tokens: torch.Tensor, state: Optional[HopeState] = None) -> Tuple[torch.Tensor, HopeState]:
        if tokens.dim() != 2 or tokens.shape[1] == 0:
            raise ValueError(f"tokens: expected [B, T] with T >= 1, got shape {tuple(tokens.shape)}")
        logits, layers = self._run(tokens, None if state is None else state.layers)
        return logits, HopeState(layers)

    @torch.no_grad()
    def generate(self, tokens: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Append `max_new_tokens` tokens to `tokens [B, T]` (greedy when temperature == 0)."""
        logits, state = self(tokens)
        out = [tokens]
        for _ in range(max_new_tokens):
            last = logits[:, -1].float()
            if temperature == 0:
                nxt = last.argmax(-1)
            else:
                nxt = torch.multinomial(F.softmax(last / temperature, -1), 1, generator=generator)[:, 0]
            out.append(nxt[:, None])
            logits, state = self(nxt[:, None], state)
        return torch.cat(out, 1)
