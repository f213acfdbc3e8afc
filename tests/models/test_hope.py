import dataclasses

import pytest
import torch

from nested_kernels.models import HopeConfig, HopeLM


def tiny(**overrides):
    cfg = dict(vocab=23, d_model=16, layers=2, heads=2, head_dim=8, mem_hidden=8, c_aux=4, c_mem=8,
               cms_levels=[(24, 4), (24, 8)], lr_max=0.2, backend="torch")
    cfg.update(overrides)
    return HopeConfig(**cfg)


def model64(cfg):
    torch.manual_seed(0)
    model = HopeLM(cfg).double()
    with torch.no_grad():                              # larger memory outputs so that every path matters
        for blk in model.blocks:
            blk.titans.mem_w2.normal_(0, 0.1)
            if cfg.self_modify:
                blk.titans.aux_w2.normal_(0, 0.1)
    return model


def assert_close(name, actual, expected, atol=1e-10):
    err = (actual - expected).abs().max().item()
    assert err <= atol, f"{name}: max abs error {err:.3e} > {atol:.1e}"


def test_forward_shapes():
    cfg = tiny()
    model = HopeLM(cfg)
    tokens = torch.randint(0, cfg.vocab, (3, 21))
    logits, state = model(tokens)
    assert logits.shape == (3, 21, cfg.vocab) and logits.dtype == torch.float32
    assert len(state.layers) == cfg.layers
    layer = state.layers[0]
    assert [int(layer.aux.position[0]), int(layer.memory.position[0])] == [21 % cfg.c_aux, 21 % cfg.c_mem]
    assert [level.position for level in layer.cms] == [21 % p for _, p in cfg.cms_levels]
    assert HopeConfig(vocab=10).cms_levels == [(1024, 16), (1024, 256), (1024, 4096)]
    out = model.generate(tokens[:, :5], 4)
    assert out.shape == (3, 9) and torch.equal(out[:, :5], tokens[:, :5])


def test_causality():
    cfg = tiny()
    model = model64(cfg)
    tokens = torch.randint(0, cfg.vocab, (2, 30))
    logits, _ = model(tokens)
    for t in (0, 7, 13, 22):
        changed = tokens.clone()
        changed[:, t + 1:] = torch.randint(0, cfg.vocab, changed[:, t + 1:].shape)
        assert not torch.equal(changed[:, t + 1:], tokens[:, t + 1:])
        logits2, _ = model(changed)
        assert_close(f"logits[:, :{t + 1}]", logits2[:, :t + 1], logits[:, :t + 1], atol=0)
        assert (logits2[:, t + 1:] - logits[:, t + 1:]).abs().max() > 1e-6


def test_gradient_reaches_every_memory():
    cfg = tiny()
    model = model64(cfg)
    tokens = torch.randint(0, cfg.vocab, (2, 24))
    logits, _ = model(tokens)
    torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, cfg.vocab), tokens[:, 1:].reshape(-1)).backward()
    for i, blk in enumerate(model.blocks):
        tit = blk.titans
        named = {"M_memory.w1": tit.mem_w1, "M_memory.w2": tit.mem_w2}
        for j, name in enumerate(("M_k", "M_v", "M_eta", "M_alpha")):
            named[f"{name}.w1"], named[f"{name}.w2"] = tit.aux_w1.grad[j], tit.aux_w2.grad[j]
        for lvl in range(len(cfg.cms_levels)):
            named[f"CMS{lvl}.w1"], named[f"CMS{lvl}.w2"] = blk.cms.w1[lvl], blk.cms.w2[lvl]
        for name, p in named.items():
            g = p.grad if isinstance(p, torch.nn.Parameter) else p
            assert g is not None and g.abs().max() > 0, f"layer {i}: no gradient on the initial {name}"


def test_backends_agree():
    cfg = tiny(layers=1, cms_levels=[(24, 4)])
    tokens = torch.randint(0, cfg.vocab, (2, 19))
    results = []
    for backend in ("reference", "torch"):
        model = model64(dataclasses.replace(cfg, backend=backend))
        logits, _ = model(tokens)
        (logits * torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype).view_as(logits)).sum().backward()
        results.append((logits, {n: p.grad for n, p in model.named_parameters()}))
    (l_ref, g_ref), (l_tor, g_tor) = results
    assert_close("logits", l_tor, l_ref)
    assert g_ref.keys() == g_tor.keys()
    for name in g_ref:
        assert_close(f"grad {name}", g_tor[name], g_ref[name])


def test_triton_backend_agrees_with_torch():
    """backend="triton" (M_memory and the CMS levels on their Triton kernels, interpreted on a CPU)
    gives the torch tier's logits and parameter gradients, fp32, split calls included."""
    cfg = tiny(layers=1, cms_levels=[(24, 4)], c_mem=16)
    tokens = torch.randint(0, cfg.vocab, (2, 19))
    results = []
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        model = HopeLM(dataclasses.replace(cfg, backend=backend))
        logits, state = model(tokens[:, :16])
        logits = torch.cat([logits, model(tokens[:, 16:], state)[0]], 1)
        (logits * torch.linspace(-1, 1, logits.numel()).view_as(logits)).sum().backward()
        results.append((logits, {n: p.grad for n, p in model.named_parameters()}))
    (l_torch, g_torch), (l_triton, g_triton) = results
    scale = l_torch.abs().max().item()
    assert_close("logits", l_triton, l_torch, atol=1e-5 * scale)
    for name, g in g_torch.items():
        assert_close(f"grad {name}", g_triton[name], g, atol=1e-4 * max(g.abs().max().item(), 1e-6))


@pytest.mark.parametrize("splits", [[8, 16], [24], [5, 3, 11, 5], [1] * 24, [3, 9, 1, 13]], ids=str)
def test_chained_calls(splits):
    """Any split continues every op from its position in its chunk: the logits and states of one call."""
    cfg = tiny()
    model = model64(cfg)
    tokens = torch.randint(0, cfg.vocab, (2, 24 + 5))
    full, full_state = model(tokens)
    state, parts, start = None, [], 0
    for n in splits + [5]:
        logits, state = model(tokens[:, start:start + n], state)
        parts.append(logits)
        start += n
    assert_close("logits", torch.cat(parts, 1), full)
    flat = lambda s: [t for t in torch.utils._pytree.tree_leaves(s.layers) if isinstance(t, torch.Tensor)]
    for a, b in zip(flat(state), flat(full_state)):
        assert_close("state", a, b)


def test_cached_decode_equals_full_forward():
    cfg = tiny()
    model = model64(cfg)
    prompt = torch.randint(0, cfg.vocab, (2, 6))
    out = model.generate(prompt, 12)
    expected = prompt                                                 # greedy by full recomputation
    for _ in range(12):
        logits, _ = model(expected)
        expected = torch.cat([expected, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, expected)


def test_split_calls_backpropagate_like_one_call():
    """Gradients flow through the decode states of a mid-chunk split as through one call."""
    cfg = tiny()
    tokens = torch.randint(0, cfg.vocab, (2, 21))
    grads = []
    for splits in ([21], [5, 3, 13]):
        model = model64(cfg)
        state, parts, start = None, [], 0
        for n in splits:
            logits, state = model(tokens[:, start:start + n], state)
            parts.append(logits)
            start += n
        logits = torch.cat(parts, 1)
        (logits * torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype).view_as(logits)).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert_close(f"grad {name}", grads[1][name], g)


def test_decoding_runs_every_token_once(monkeypatch):
    """Cached decoding carries the states: each memory op sees every token exactly once."""
    import nested_kernels.models.hope as hope
    seen = []
    for name in ("mlp_memory", "mlp_memory_step"):
        op = getattr(hope, name)
        monkeypatch.setattr(hope, name, lambda q, *args, _op=op, **kw: seen.append(q.shape[1]) or _op(q, *args, **kw))
    cfg = tiny()
    model = model64(cfg)
    model.generate(torch.randint(0, cfg.vocab, (2, 6)), 12)
    assert sum(seen) == cfg.layers * (6 + 12)


def test_state_counts_tokens_in_step_with_the_positions():
    """Each layer's `tokens` (what the next call reads each op's position from, on the host) is the
    stream length, and agrees with the positions the decode states hold on the device."""
    cfg = tiny()
    model = model64(cfg)
    tokens = torch.randint(0, cfg.vocab, (2, 23))
    state = None
    for lo, hi in ((0, 5), (5, 6), (6, 23)):
        _, state = model(tokens[:, lo:hi], state)
        for layer in state.layers:
            assert layer.tokens == hi
            assert (layer.memory.position == hi % cfg.c_mem).all()
            assert (layer.aux.position == hi % cfg.c_aux).all()


@pytest.mark.parametrize("flag", ["use_dgd", "use_momentum", "self_modify", "use_cms"])
def test_ablation_switch(flag):
    cfg = tiny(**{flag: False})
    model = HopeLM(cfg)
    tokens = torch.randint(0, cfg.vocab, (2, 13))
    logits, state = model(tokens)
    assert logits.shape == (2, 13, cfg.vocab) and torch.isfinite(logits).all()
    logits.sum().backward()
    logits2, _ = model(tokens[:, 8:], model(tokens[:, :8])[1])
    assert torch.allclose(logits2, logits[:, 8:], atol=1e-5)
    if flag == "self_modify":
        assert state.layers[0].aux is None and not hasattr(model.blocks[0].titans, "aux_w1")
    if flag == "use_cms":
        assert state.layers[0].cms is None and model.blocks[0].cms is None
