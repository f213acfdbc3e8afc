"""The tiles of `linear_memory`'s recurrences (fwd_h, bwd_dh), as they hold them: their state's
indexing and initial value (`state_tiles`, `initial_state`), and what lets a kernel hold its tiles
transposed (its `TRANSPOSED` constexpr): the state tiles [BK, BV] as [BV, BK] and every token ×
value tile [BT, BV] as [BV, BT], each product computed as its transpose (`held_dot`). Every
product then has BV rows, below wgmma's 64: Triton emits mma.sync, whose operands are loaded into
registers rather than addressed by shared-memory descriptors (`configs.transposed_states`;
README.md, "The transposed states")."""
import triton
import triton.language as tl


@triton.jit
def along_rows(x, TRANSPOSED: tl.constexpr):
    """Vector `x` along the rows of a tile as a recurrent kernel holds it (its columns
    with TRANSPOSED): tokens of a token × value tile, keys of a state tile."""
    if TRANSPOSED:
        y = x[None, :]
    else:
        y = x[:, None]
    return y


@triton.jit
def along_cols(x, TRANSPOSED: tl.constexpr):
    """Vector `x` along the columns of a held tile (its rows with TRANSPOSED): the values."""
    if TRANSPOSED:
        y = x[:, None]
    else:
        y = x[None, :]
    return y


@triton.jit
def held(x, TRANSPOSED: tl.constexpr):
    """A tile as loaded, as held: transposed with TRANSPOSED."""
    if TRANSPOSED:
        y = tl.trans(x)
    else:
        y = x
    return y


@triton.jit
def held_trans(x, TRANSPOSED: tl.constexpr):
    """The transpose of a tile as loaded, as held: the tile itself with TRANSPOSED."""
    if TRANSPOSED:
        y = x
    else:
        y = tl.trans(x)
    return y


@triton.jit
def held_dot(a, b, acc, TRANSPOSED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """acc + a b of held tiles; with TRANSPOSED each is held transposed, and (a b)ᵀ = bᵀ aᵀ."""
    if TRANSPOSED:
        y = tl.dot(b, a, acc, input_precision=DOT_PRECISION)
    else:
        y = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    return y


@triton.jit
def state_offsets(i_state, o_k, o_v, K: tl.constexpr, V: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Offsets of the keys `o_k` × values `o_v` of state `i_state` in a [.., K, V] tensor of states,
    as held."""
    return (i_state * K + along_rows(o_k, TRANSPOSED)) * V + along_cols(o_v, TRANSPOSED)


@triton.jit
def token_offsets(o_tok, i_h, o_v, H: tl.constexpr, V: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Offsets of the tokens `o_tok` × values `o_v` of head `i_h` in a [T', H, V] tensor, as held."""
    return (along_rows(o_tok, TRANSPOSED) * H + i_h) * V + along_cols(o_v, TRANSPOSED)


@triton.jit
def state_tiles(i_nh, i_v, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                TRANSPOSED: tl.constexpr):
    """The indexing of a recurrence's state for sequence × head `i_nh` and value tile `i_v`, held
    as two row tiles of BK keys (K ≤ 2·BK): the keys of each tile and their masks, the values and
    their mask, each tile's mask, the mask of a token × value tile, and each tile's offsets in an
    [N, H, K, V] state."""
    o_k0 = tl.arange(0, BK)
    o_k1 = BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k0, m_k1, m_v = o_k0 < K, o_k1 < K, o_v < V
    m_kv0 = along_rows(m_k0, TRANSPOSED) & along_cols(m_v, TRANSPOSED)
    m_kv1 = along_rows(m_k1, TRANSPOSED) & along_cols(m_v, TRANSPOSED)
    m_tv = along_cols(m_v, TRANSPOSED)
    o_state0 = state_offsets(i_nh.to(tl.int64), o_k0, o_v, K, V, TRANSPOSED)
    o_state1 = state_offsets(i_nh.to(tl.int64), o_k1, o_v, K, V, TRANSPOSED)
    return o_k0, o_k1, o_v, m_k0, m_k1, m_v, m_kv0, m_kv1, m_tv, o_state0, o_state1


@triton.jit
def initial_state(x, s, o_state0, o_state1, m_kv0, m_kv1, K: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                  LOAD: tl.constexpr, USE_MOMENTUM: tl.constexpr, TRANSPOSED: tl.constexpr):
    """The two fp32 row tiles of a state and of its momentum, as held (`state_tiles`): read from x
    and s with LOAD (s with USE_MOMENTUM, the second tiles where K > BK), zeros elsewhere."""
    b_x0 = tl.zeros([BV, BK] if TRANSPOSED else [BK, BV], dtype=tl.float32)
    b_s0 = tl.zeros([BV, BK] if TRANSPOSED else [BK, BV], dtype=tl.float32)
    b_x1 = tl.zeros([BV, BK] if TRANSPOSED else [BK, BV], dtype=tl.float32)
    b_s1 = tl.zeros([BV, BK] if TRANSPOSED else [BK, BV], dtype=tl.float32)
    if LOAD:
        b_x0 += tl.load(x + o_state0, mask=m_kv0, other=0.0)
        if USE_MOMENTUM:
            b_s0 += tl.load(s + o_state0, mask=m_kv0, other=0.0)
        if K > BK:
            b_x1 += tl.load(x + o_state1, mask=m_kv1, other=0.0)
            if USE_MOMENTUM:
                b_s1 += tl.load(s + o_state1, mask=m_kv1, other=0.0)
    return b_x0, b_s0, b_x1, b_s1
