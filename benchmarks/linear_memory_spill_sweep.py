"""Compile candidate launch configurations of the `linear_memory` Triton kernels ahead of time (no
GPU) and print registers, spills, shared memory (dynamic + static) and the matrix unit of each:
how `triton_kernels/linear_memory/configs.py` was chosen. Every combination of momentum and DGD,
and for bwd_dh with and without the final state's gradient (`--flags`, as in the compile report,
`aot.flag_combinations`), bf16 inputs unless `--operands` says otherwise.

    PYTHONPATH=. python benchmarks/linear_memory_spill_sweep.py --kernels fwd_h,bwd_dh --D 256 \
        --BT 32,64 --BK 128 --BV 16,32 --warps 4,8 --stages 1,2 [--arch 90,80] [--flags mom-dgd,plain] [--jobs 2]

`--transposed 0,1`: the recurrences (fwd_h, bwd_dh) with their states held as they are and
transposed (`TRANSPOSED`, `configs.transposed_states`).

BK 0 means the whole K. Each job is a few seconds of one core (ptxas); `--jobs` compile processes.
"""
import argparse
import itertools
import sys
import time

from nested_kernels import compile_report

compile_report.triton_kernels_package()
from nested_kernels.triton_kernels.linear_memory import aot  # noqa: E402
from nested_kernels.triton_kernels.utils.aot import AotSpec, compile_specs, kernel_params  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernels", default=",".join(aot.KERNELS))
    p.add_argument("--D", default="64,128,256", help="K = V")
    p.add_argument("--BT", default="16,32,64")
    p.add_argument("--BK", default="0", help="key tile rows; 0 = the whole K")
    p.add_argument("--BV", default="16,32,64")
    p.add_argument("--warps", default="4,8")
    p.add_argument("--stages", default="1,2")
    p.add_argument("--arch", default="90")
    p.add_argument("--operands", default="bf16", choices=("bf16", "fp32", "bf16-fp32ops"),
                   help="q, k, v: bf16; fp32 (fp32 inputs, tf32 products); bf16-fp32ops (bf16 loads converted "
                        "to fp32 in the kernels: Hopper with Triton < 3.7.1)")
    p.add_argument("--flags", default=None,
                   help="flag combinations by name (aot.flag_combinations: mom-dgd, mom, dgd, plain, and for bwd_dh "
                        "each with -nodht); default all a kernel runs with")
    p.add_argument("--transposed", default="0", help="the recurrences' TRANSPOSED: 0, 1 or both (0,1)")
    p.add_argument("--jobs", type=int, default=2, help="compile processes at once")
    a = p.parse_args(argv)
    known = {name for kernel in aot.KERNELS.values() for name, _ in aot.flag_combinations(kernel_params(kernel)[1])}
    unknown = set(a.flags.split(",")) - known if a.flags else set()
    if unknown:
        p.error(f"--flags: unknown {sorted(unknown)}; expected some of {sorted(known)}")
    ints = lambda s: [int(x) for x in s.split(",")]
    jobs = []
    for part in a.kernels.split(","):
        kernel = aot.KERNELS[part]
        runtime, flags = kernel_params(kernel)
        flag_sets = [f for f in aot.flag_combinations(flags) if not a.flags or f[0] in a.flags.split(",")]
        transposed = [bool(t) for t in ints(a.transposed)] if "TRANSPOSED" in flags else [False]
        for D, BT, BK, BV, w, st, arch, (flag_name, flag_values), tr in itertools.product(
                ints(a.D), ints(a.BT), ints(a.BK), ints(a.BV), ints(a.warps), ints(a.stages), ints(a.arch), flag_sets,
                transposed):
            BK = BK or D
            if BV > D or BK > D:
                continue
            c = dict(H=16, K=D, V=D, BT=BT, BK=BK, BV=BV, DOT_PRECISION="tf32", STORE_RES=True, TRANSPOSED=tr,
                     FP32_OPERANDS=a.operands != "bf16", USE_INITIAL_STATE=True, STORE_FINAL_STATE=True, **flag_values)
            spec = AotSpec(f"{part}-D{D}-BT{BT}-BK{BK}-BV{BV}-w{w}-s{st}{'-T' * tr}-{flag_name}", kernel,
                           aot.signature(runtime, a.operands.split("-")[0]), {n: v for n, v in c.items() if n in flags},
                           w, st, gemm_heavy=BT == 64, mma_sync_on_hopper=tr)
            jobs.append((spec, arch))
    t = time.time()
    # fresh processes even where Triton is not interpreted (a GPU machine), so that --jobs applies
    results = compile_specs(jobs, fresh_process=True, workers=a.jobs)
    for r in sorted(results, key=lambda r: (r.spec.name, r.arch)):
        print(f"{r.spec.name:50s} sm_{r.arch} regs={r.registers} spills={r.spill_stores}/{r.spill_loads} "
              f"smem={r.total_shared_bytes} {r.matrix_unit:5s} {r.status}")
    print(f"{len(jobs)} configurations in {time.time() - t:.0f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
