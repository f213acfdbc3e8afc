"""The Triton gate kernels (triton_kernels/common/chunk_gates.py) against `chunk_gates` in float64:
every gate matrix, and the gradients of η, α, μ through all of them (the backward kernel, for
chunks of 16, 32 and 64), with gates at 0 and 1."""
import pytest
import torch

pytest.importorskip("triton")

from nested_kernels.common.chunk_gates import ChunkGates, chunk_gates  # noqa: E402
from nested_kernels.common.chunk_gates_triton import chunk_gates_vjp, triton_chunk_gates  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


pytestmark = pytest.mark.usefixtures("interpreter_memcheck")   # tests/conftest.py


def _gates(C, momentum, extreme, lead=(2, 3)):
    gen = torch.Generator().manual_seed(C + momentum)
    shape = (*lead, C)                                                  # [H, NC, C]
    lr, ret = torch.rand(shape, generator=gen, dtype=torch.float64), torch.rand(shape, generator=gen, dtype=torch.float64)
    mom = torch.rand(shape, generator=gen, dtype=torch.float64) if momentum else None
    if extreme:                                                         # forget everything, no step, full momentum
        ret[0, 0, 3], ret[0, 1, 0], ret[1, 2, C - 1], ret[1, 0, :] = 0.0, 0.0, 0.0, 1.0
        lr[0, 2, 5], lr[1, 1, :] = 0.0, 0.0
        if momentum:
            mom[0, 0, 7], mom[1, 1, 0], mom[0, 2, :] = 0.0, 0.0, 1.0
    return lr, ret, mom


@pytest.mark.parametrize("extreme", [False, True], ids=["random", "extreme"])
@pytest.mark.parametrize("momentum", [False, True], ids=["nomom", "mom"])
@pytest.mark.parametrize("C", [16, 32, 64], ids=lambda c: f"C{c}")
def test_values_and_gradients(C, momentum, extreme):
    _check_values_and_gradients(C, momentum, extreme)


@pytest.mark.gpu
@pytest.mark.parametrize("extreme", [False, True], ids=["random", "extreme"])
@pytest.mark.parametrize("momentum", [False, True], ids=["nomom", "mom"])
@pytest.mark.parametrize("C", [16, 32, 64], ids=lambda c: f"C{c}")
def test_values_and_gradients_gpu(C, momentum, extreme):
    """The same on the card, over 1024 chunks: the one-warp programs run side by side."""
    _check_values_and_gradients(C, momentum, extreme, lead=(8, 128))


def _check_values_and_gradients(C, momentum, extreme, lead=(2, 3)):
    lr, ret, mom = _gates(C, momentum, extreme, lead)
    ref_leaves = [x.clone().requires_grad_() for x in (lr, ret, mom) if x is not None]
    out_leaves = [x.to(DEVICE, torch.float32).requires_grad_() for x in (lr, ret, mom) if x is not None]
    ref = chunk_gates(*ref_leaves, *([None] if not momentum else []))
    out = triton_chunk_gates(*out_leaves, *([None] if not momentum else []))
    gen = torch.Generator().manual_seed(7)
    loss_ref = loss_out = 0.0
    for name, r, o in zip(ref._fields, ref, out):
        assert (r is None) == (o is None), name
        if r is None or (name == "write" and not momentum):             # write is dgd_write without momentum
            continue
        torch.testing.assert_close(o.cpu().double(), r.detach(), atol=1e-6, rtol=1e-5, msg=name)
        cot = torch.randn(r.shape, generator=gen, dtype=torch.float64)
        loss_ref, loss_out = loss_ref + (r * cot).sum(), loss_out + (o * cot.to(o)).sum()
    for name, r, o in zip(("lr", "retention", "momentum"), torch.autograd.grad(loss_ref, ref_leaves),
                          torch.autograd.grad(loss_out, out_leaves)):
        scale = r.abs().max().clamp_min(1e-12)
        assert ((o.cpu().double() - r).abs().max() / scale).item() < 1e-5, name


@pytest.mark.parametrize("momentum", [False, True], ids=["nomom", "mom"])
@pytest.mark.parametrize("C", [16, 32, 64], ids=lambda c: f"C{c}")
def test_chunk_gates_vjp(C, momentum):
    """The backward kernel against `torch.func.vjp` through `chunk_gates` in float64, with whole
    chunks at retention 0 (exact: the kernel divides by no gate), retention 1, momentum 0 and 1,
    a large step, and one output without a cotangent (zero)."""
    lr, ret, mom = _gates(C, momentum, True)
    ret[0, 2, :], ret[1, 1, : C // 2], lr[0, 1, :] = 0.0, 0.0, 50.0
    if momentum:
        mom[1, 2, :] = 0.0
    lr, ret, mom = (None if x is None else x.reshape(-1, C) for x in (lr, ret, mom))
    leaves = [x for x in (lr, ret, mom) if x is not None]
    fields = ChunkGates._fields if momentum else ("decay", "dgd_write")       # write is dgd_write then
    outputs, vjp = torch.func.vjp(lambda *xs: tuple(getattr(chunk_gates(*xs, *([None] * (3 - len(xs)))), f)
                                                    for f in fields), *leaves)
    gen = torch.Generator().manual_seed(11)
    cotangents = {f: torch.randn(o.shape, generator=gen, dtype=torch.float64) for f, o in zip(fields, outputs)}
    if momentum:
        cotangents["mom_decay"] = torch.zeros_like(cotangents["mom_decay"])
    ref = vjp(tuple(cotangents[f] for f in fields))
    if momentum:
        cotangents["mom_decay"] = None                                  # no cotangent: as zero
    f32 = lambda x: None if x is None else x.to(DEVICE, torch.float32)
    out = chunk_gates_vjp(f32(lr), f32(ret), f32(mom), [f32(cotangents.get(f)) for f in ChunkGates._fields])
    for name, r, o in zip(("lr", "retention", "momentum"), ref, out):
        assert torch.isfinite(o).all(), name
        scale = r.abs().max().clamp_min(1e-12)
        assert ((o.cpu().double() - r).abs().max() / scale).item() < 1e-5, name
    assert momentum or out[2] is None
    with pytest.raises(ValueError, match=r"chunk_gates_vjp: chunks of \(16, 32, 64\) tokens, got 8"):
        chunk_gates_vjp(lr[:, :8].float(), ret[:, :8].float(), None, [None] * 6)


@pytest.mark.parametrize("dgd_write,n_last", [(True, False), (False, True)], ids=["all", "noE-Nlast"])
@pytest.mark.parametrize("C", [16, 64], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("momentum", [False, True], ids=["nomom", "mom"])
def test_opcheck(momentum, C, dgd_write, n_last):
    lr, ret, mom = (None if x is None else x.float().reshape(-1, C).to(DEVICE) for x in _gates(C, momentum, False))
    args = (lr.requires_grad_(), ret.requires_grad_(), None if mom is None else mom.requires_grad_(), dgd_write,
            n_last)
    torch.library.opcheck(torch.ops.nested_kernels.chunk_gates_triton_fwd.default, args)


@pytest.mark.parametrize("momentum", [False, True], ids=["nomom", "mom"])
@pytest.mark.parametrize("C", [16, 64], ids=lambda c: f"C{c}")
def test_without_dgd_write(C, momentum):
    """Without `dgd_write` and with momentum, E (DGD's alone) is neither computed nor given a zero
    gradient: the other gates and the gradients through them are those of the full call, bit for
    bit. Without momentum E is G, the write, and stays."""
    lr, ret, mom = _gates(C, momentum, True)
    runs = []
    for dgd_write in (True, False):
        leaves = [x.to(DEVICE, torch.float32).requires_grad_() for x in (lr, ret, mom) if x is not None]
        out = triton_chunk_gates(*leaves, *([None] if not momentum else []), dgd_write=dgd_write)
        kept = [x for name, x in zip(out._fields, out) if x is not None and (name != "dgd_write" or not momentum)]
        gen = torch.Generator().manual_seed(3)
        loss = sum((x * torch.randn(x.shape, generator=gen).to(x)).sum() for x in kept)
        runs.append((out, torch.autograd.grad(loss, leaves)))
    (full, full_grads), (lean, lean_grads) = runs
    assert (lean.dgd_write is None) == momentum
    for name, a, b in zip(full._fields, full, lean):
        if name == "dgd_write" and momentum:
            assert a is not None and b is None
        else:
            assert (a is None and b is None) or torch.equal(a, b), name
    assert all(torch.equal(a, b) for a, b in zip(full_grads, lean_grads))


def test_other_chunk_sizes_keep_the_torch_gates():
    from nested_kernels.common.chunk_gates_triton import chunk_gates_for

    assert chunk_gates_for(8) is chunk_gates and chunk_gates_for(64) is triton_chunk_gates
    lr, ret, _ = _gates(8, False, False)
    with pytest.raises(ValueError, match=r"chunks of \(16, 32, 64\) tokens, got 8"):
        triton_chunk_gates(lr.float(), ret.float(), None)


@pytest.mark.parametrize("C", [16, 64], ids=lambda c: f"C{c}")
def test_mom_write_last_row(C):
    """`mom_write_last_row`: N's last row N[C, :] alone, equal to the full N's, and the gradients
    through it those of the full call with a cotangent on that row only (the other rows' zero)."""
    lr, ret, mom = _gates(C, True, True)
    gen = torch.Generator().manual_seed(5)
    cot = torch.randn(lr.shape, generator=gen)
    runs = []
    for last in (False, True):
        leaves = [x.to(DEVICE, torch.float32).requires_grad_() for x in (lr, ret, mom)]
        out = triton_chunk_gates(*leaves, mom_write_last_row=last)
        n_last = out.mom_write if last else out.mom_write[..., C, :]
        assert n_last.shape == lr.shape
        runs.append((n_last, torch.autograd.grad((n_last * cot.to(n_last)).sum() + out.write.sum(), leaves)))
    (full, full_grads), (lean, lean_grads) = runs
    assert torch.equal(full, lean)
    for a, b in zip(full_grads, lean_grads):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("gate", ["lr", "retention", "momentum"])
@pytest.mark.parametrize("k", [0, 5, 15], ids=lambda k: f"k{k}")
def test_nan_gate_stays_local(gate, k):
    """A NaN gate poisons only what depends on it: every output and gradient entry that the float64
    reference gives the same for two finite values of that gate stays finite (and right), in the
    forward and through the backward kernel with cotangents on every entry, constant ones included."""
    _check_nan_gate_stays_local(gate, k, C=16)


@pytest.mark.gpu
@pytest.mark.parametrize("gate", ["lr", "retention", "momentum"])
@pytest.mark.parametrize("C,k", [(16, 5), (32, 31), (64, 0), (64, 40)], ids=lambda x: str(x))
def test_nan_gate_stays_local_gpu(gate, C, k):
    _check_nan_gate_stays_local(gate, k, C, lead=(4, 64))


def _check_nan_gate_stays_local(gate, k, C, lead=(2, 3)):
    gen = torch.Generator().manual_seed(5)
    gates = dict(zip(("lr", "retention", "momentum"), _gates(C, True, False, lead)))
    cot = None

    def run(value, kernel):
        nonlocal cot
        xs = {n: g.clone() for n, g in gates.items()}
        xs[gate][1, 1, k] = value                                       # one token of one chunk
        leaves = [x.reshape(-1, C).requires_grad_() for x in xs.values()]
        if kernel:
            leaves = [x.detach().float().to(DEVICE).requires_grad_() for x in leaves]
        out = (triton_chunk_gates if kernel else chunk_gates)(*leaves)
        if cot is None:
            cot = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in out]
        loss = sum((o * c.to(o)).sum() for o, c in zip(out, cot))
        return [o.detach().cpu().double() for o in out] + [g.cpu().double() for g in torch.autograd.grad(loss, leaves)]

    ref_a, ref_b, got = run(0.3, False), run(0.7, False), run(float("nan"), True)
    for i, (a, b, x) in enumerate(zip(ref_a, ref_b, got)):
        independent = a == b                                           # entries that do not depend on the gate
        assert torch.isfinite(x[independent]).all(), f"output {i}: NaN where the gate does not reach"
        torch.testing.assert_close(x[independent], a[independent], atol=1e-5, rtol=1e-4, msg=f"output {i}")


@pytest.mark.parametrize("momentum", [False, True], ids=["nomom", "mom"])
@pytest.mark.parametrize("T", [32, 45], ids=lambda t: f"T{t}")
def test_token_layout_matches_rows(T, momentum):
    """Gates read from `[B·T, H]` through a flat layout (`TokenGates`; at T = 45 with a padding index)
    give the gate matrices of their chunk rows cut on the host with the padding values (η = 0,
    α = μ = 1), and the backward writes the rows' gradients at the tokens: bit for bit."""
    from nested_kernels.common.flat_chunks import flat_chunks
    from nested_kernels.triton_kernels.common.chunk_gates import TokenGates, chunk_gates_bwd, chunk_gates_fwd

    B, H, C = 2, 3, 16
    layout = flat_chunks(B, T, C, None, torch.device(DEVICE))
    gen = torch.Generator().manual_seed(T)
    gates = [torch.rand(B, T, H, generator=gen).to(DEVICE) for _ in range(3 if momentum else 2)] + [None] * (
        0 if momentum else 1)
    NC = layout.last_rows.shape[0]
    rows = [None if g is None else layout.to_chunk_major(layout.flatten(g, pad)).reshape(H * NC, C).contiguous()
            for g, pad in zip(gates, (0.0, 1.0, 1.0))]
    tokens = TokenGates(C, H, NC, layout.index)
    assert (layout.index is None) == (T % C == 0)
    by_rows = chunk_gates_fwd(*rows, dgd_write=True, mom_write_last_row=True)
    by_tokens = chunk_gates_fwd(*gates, dgd_write=True, mom_write_last_row=True, tokens=tokens)
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(by_rows, by_tokens))
    cot = [None if x is None else torch.randn(x.shape, generator=gen).to(DEVICE) for x in by_rows]
    d_rows = chunk_gates_bwd(*rows, *cot)
    d_tokens = chunk_gates_bwd(*gates, *cot, tokens=tokens)
    for d_row, d_token in zip(d_rows, d_tokens):
        if d_row is None:
            assert d_token is None
            continue
        at_tokens = layout.unflatten(d_row.view(H, NC * C).t(), B, T)        # rows -> [B, T, H], padding dropped
        assert d_token.shape == (B, T, H) and torch.equal(d_token, at_tokens)
