"""The mlp_memory benchmark: its vmap(grad) baseline computes SPEC §3 exactly (against the torch
tier in float64: outputs, final weights, gradients), and the script runs end to end on a CPU."""
import json
import os
import sys

import torch
import torch.nn.functional as F

from nested_kernels import MLPMemoryState, mlp_memory

BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def test_vmap_grad_baseline_is_the_torch_tier(monkeypatch):
    monkeypatch.syspath_prepend(BENCH_DIR)
    from mlp_memory_vmap import mlp_memory_vmap_grad

    g = torch.Generator().manual_seed(0)
    B, T, H, D, Dh, C = 2, 37, 2, 8, 12, 16
    q, v = (torch.randn(B, T, H, D, generator=g, dtype=torch.float64) for _ in range(2))
    k = F.normalize(torch.randn(B, T, H, D, generator=g, dtype=torch.float64), dim=-1)
    lr = 0.3 * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    ret = 0.9 + 0.1 * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    mom = 0.9 * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    w1 = torch.randn(1, H, D, Dh, generator=g, dtype=torch.float64) / 3
    w2 = torch.randn(1, H, Dh, D, generator=g, dtype=torch.float64) * 0.3
    leaves = [x.requires_grad_() for x in (q, k, v, lr, ret, mom, w1, w2)]
    o_ref, final = mlp_memory(q, k, v, lr, ret, mom, initial_state=MLPMemoryState(w1, w2), dgd=True, self_target=True,
                              chunk_size=C, output_final_state=True, backend="torch")
    o, (W1, W2, S1, S2) = mlp_memory_vmap_grad(q, k, v, lr, ret, mom, w1, w2, chunk_size=C, dgd=True, self_target=True)
    assert (o - o_ref).abs().max() < 1e-12
    for a, b in ((W1, final.w1), (W2, final.w2), (S1, final.s1), (S2, final.s2)):
        assert (a.reshape(b.shape) - b).abs().max() < 1e-12
    cot = torch.randn_like(o_ref)
    for a, b in zip(torch.autograd.grad((o * cot).sum(), leaves), torch.autograd.grad((o_ref * cot).sum(), leaves)):
        assert (a - b).abs().max() < 1e-11


def test_bench_mlp_memory_cpu(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(BENCH_DIR)
    sys.modules.pop("bench_mlp_memory", None)
    import bench_mlp_memory
    assert bench_mlp_memory.main(["--device", "cpu", "--modes", "fwd", "--out-dir", str(tmp_path), "--tag", "t"]) == 0
    rows = {r["tier"]: r for r in json.loads((tmp_path / "mlp_memory-t.json").read_text())["rows"]}
    assert rows["torch"]["ms"][0] > 0 and rows["vmap-grad"]["ms"][0] > 0 and rows["torch"]["flops"] > 0
    assert rows["triton"]["note"] == rows["linear_memory-triton"]["note"] == bench_mlp_memory.CPU_TRITON
    assert "vmap-grad/torch" in (tmp_path / "mlp_memory-t.md").read_text()
