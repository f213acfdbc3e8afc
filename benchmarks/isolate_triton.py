"""Each configuration of the `linear_memory` Triton backend in a process of its own, against the
torch tier on the same GPU: forward and backward, every output and gradient by name.

    python benchmarks/isolate_triton.py --out-dir DIR [--workers 14] [--budget-s 150] [--dtypes bf16-raw]
                                        [--device cpu --limit 2]

Why a process each: one kernel that faults (an illegal memory access) poisons the CUDA context of
its process, so in one pytest worker every later test fails too and the culprit is lost. Here a
crash is one row. Rows `bf16-raw` set NESTED_KERNELS_TRITON_16BIT_DOTS=1, i.e. the kernels on
16-bit operands even where `triton_kernels/utils/operand_precision.py` would give them fp32 operands;
`--dtypes bf16-raw` spends a short budget on those alone (whether 16-bit products are safe on this
card and Triton, every shape).
Writes isolate-triton.md and isolate-triton.json; exit status 1 when a row fails or crashes.
"""
import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = {"fp32": 1e-5, "bf16": 1e-2, "bf16-raw": 1e-2}    # rms(out − ref) / rms(ref), every tensor

ONE = r"""
import json, sys, torch, torch.nn.functional as F
from nested_kernels import linear_memory
from nested_kernels.linear_memory import LinearMemoryState
K, V, C, mom, dgd, state, dt, B, T = json.loads(sys.argv[1])
dev = sys.argv[2]
dtype = torch.float32 if dt == "fp32" else torch.bfloat16
H = 3
torch.manual_seed(0)
q = torch.randn(B, T, H, K, device=dev).to(dtype)
k = F.normalize(torch.randn(B, T, H, K, device=dev), dim=-1).to(dtype)
v = torch.randn(B, T, H, V, device=dev).to(dtype)
gates = [0.5 * torch.rand(B, T, H, device=dev), 0.5 + 0.5 * torch.rand(B, T, H, device=dev),
         0.9 * torch.rand(B, T, H, device=dev) if mom else None]
h0 = [0.3 * torch.randn(B, H, K, V, device=dev), 0.1 * torch.randn(B, H, K, V, device=dev) if mom else None]
names = ["o", "h_T", "s_T", "dq", "dk", "dv", "dlr", "dretention", "dmomentum", "dh0", "ds0"]

def run(backend, cast):
    x = [t.detach().to(cast).requires_grad_() for t in (q, k, v)]
    g = [None if t is None else t.detach().clone().requires_grad_() for t in gates]
    s = [None if t is None else t.detach().clone().requires_grad_() for t in h0] if state else [None, None]
    o, fin = linear_memory(*x, *g, initial_state=LinearMemoryState(*s) if state else None,
                           output_final_state=bool(state), backend=backend, dgd=bool(dgd), chunk_size=C,
                           scale=K ** -0.5)
    outs = [o] + (list(fin) if state else [None, None])
    gen = torch.Generator(device=dev).manual_seed(1)
    loss = sum((t.float() * torch.randn(t.shape, generator=gen, device=dev)).sum() for t in outs if t is not None)
    wrt = x + g + s
    grads = torch.autograd.grad(loss, [t for t in wrt if t is not None])
    it = iter(grads)
    return outs + [None if t is None else next(it) for t in wrt]

ref, out = run("torch", torch.float32), run("triton", dtype)
err = {n: ((o.float() - r.float()).pow(2).mean().sqrt() / r.float().pow(2).mean().sqrt().clamp_min(1e-30)).item()
       for n, r, o in zip(names, ref, out) if r is not None}
print("RESULT " + json.dumps({n: (e if e == e else float("inf")) for n, e in err.items()}))
"""


DTYPES = ("fp32", "bf16", "bf16-raw")


def configs(device, dtypes=DTYPES):
    dims = ((64, 64), (128, 128), (100, 60), (256, 256))
    rows = [(K, V, C, mom, dgd, 1, dt, 2, 150) for (K, V), C, mom, dgd, dt in
            itertools.product(dims, (16, 32, 64), (0, 1), (0, 1), dtypes)]
    faulted = [(K, V, C, mom, dgd, st, dt, B, T) for K, V, C, mom, dgd, st, B, T in (
        (64, 64, 64, 1, 1, 0, 8, 256), (64, 64, 64, 1, 1, 1, 8, 256),   # H100 2026-11-25, bf16 (16-bit dots)
        (256, 256, 64, 0, 0, 1, 2, 1),                                  # H200 2026-11-26, bf16 (fp32 copies, tf32)
        (256, 256, 64, 1, 1, 1, 2, 150)) for dt in dtypes]
    # on a card the shapes that faulted in bf16 (benchmarks/results/) go first, so a short budget
    # reaches them; the interpreter starts with the small rows
    rows = [r for r in rows if r not in faulted]
    return faulted + rows if device == "cuda" else rows + faulted


def run_one(cfg, device, timeout_s):
    K, V, C, mom, dgd, state, dt, B, T = cfg
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if dt == "bf16-raw":
        env["NESTED_KERNELS_TRITON_16BIT_DOTS"] = "1"
    t0 = time.time()
    try:
        p = subprocess.run([sys.executable, "-c", ONE, json.dumps(list(cfg)), device], capture_output=True, text=True,
                           timeout=timeout_s, env=env, cwd=ROOT)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        result = json.loads(lines[-1][7:]) if lines else None
        error = None if lines else ((p.stderr.strip().splitlines() or ["no output"])[-1][:200])
    except subprocess.TimeoutExpired:
        result, error = None, f"timed out after {timeout_s} s"
    return dict(config=dict(zip(("K", "V", "chunk", "momentum", "dgd", "state", "dtype", "B", "T"), cfg)),
                errors=result, error=error, seconds=round(time.time() - t0, 1),
                passed=result is not None and all(e <= TOLERANCE[dt] for e in result.values()))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--workers", type=int, default=14)
    p.add_argument("--budget-s", type=float, default=150, help="start no configuration after this (default 150)")
    p.add_argument("--device", default=None, help="cuda (default when there is one) or cpu (interpreted)")
    p.add_argument("--limit", type=int, default=None, help="the first N configurations only")
    p.add_argument("--dtypes", default=",".join(DTYPES), help=f"comma-separated, of {DTYPES} (default: all)")
    args = p.parse_args()
    dtypes = tuple(args.dtypes.split(","))
    if any(dt not in DTYPES for dt in dtypes):                               # "" splits to [""]
        p.error(f"--dtypes: expected a comma-separated list of {DTYPES}, got {args.dtypes!r}")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    start = time.time()

    def job(cfg):
        if time.time() - start > args.budget_s:
            return dict(config=list(cfg), errors=None, error="not run (time budget)", seconds=0, passed=False)
        return run_one(cfg, device, 240)

    rows = []
    with ThreadPoolExecutor(args.workers) as pool:
        for row in pool.map(job, configs(device, dtypes)[:args.limit]):
            rows.append(row)
            worst = max(row["errors"].items(), key=lambda kv: kv[1]) if row["errors"] else None
            print(("ok  " if row["passed"] else "BAD ") + json.dumps(row["config"]),
                  worst or row["error"], row["seconds"], flush=True)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "isolate-triton.json"), "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(args.out_dir, "isolate-triton.md"), "w") as f:
        f.write("# linear_memory triton vs torch tier, one process per configuration\n\n"
                f"tolerances (rms ratio, every tensor): {TOLERANCE}\n\n| config | passed | worst | error |\n|---|---|---|---|\n")
        for row in rows:
            worst = max(row["errors"].items(), key=lambda kv: kv[1]) if row["errors"] else ("—", float("nan"))
            f.write(f"| {json.dumps(row['config'])} | {'yes' if row['passed'] else 'NO'} | "
                    f"{worst[0]} {worst[1]:.2e} | {row['error'] or ''} |\n")
    failed = sum(not r["passed"] for r in rows)
    print(f"{len(rows) - failed} passed, {failed} failed or not run")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
