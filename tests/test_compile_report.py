"""The ahead-of-time compile report (SPEC §7): kernels compile for sm_90/sm_80 with no GPU, and
the report sees registers, spills and the matrix units. The demo kernels live only here, so the
shipped registry holds only real kernels."""
import dataclasses

import pytest

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from nested_kernels import cli, compile_report  # noqa: E402

compile_report.triton_kernels_package()
from nested_kernels.triton_kernels import aot_registry  # noqa: E402
from nested_kernels.triton_kernels.utils.aot import (  # noqa: E402
    ARCHS, SHARED_MEMORY_LIMIT, AotSpec, CompileResult, compile_spec, compile_specs, format_report,
)


@triton.jit
def demo_gemm_kernel(a, b, c, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """c[M, N] = a[M, K] @ b[K, N], bf16 in and out, fp32 accumulation."""
    i_m, i_n = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    o_m, o_n, o_k = i_m * BM + tl.arange(0, BM), i_n * BN + tl.arange(0, BN), tl.arange(0, BK)
    m_m, m_n = o_m < M, o_n < N
    b_c = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(0, K, BK):
        m_k = (k0 + o_k) < K
        b_a = tl.load(a + o_m[:, None] * K + (k0 + o_k)[None, :], mask=m_m[:, None] & m_k[None, :], other=0.0)
        b_b = tl.load(b + (k0 + o_k)[:, None] * N + o_n[None, :], mask=m_k[:, None] & m_n[None, :], other=0.0)
        b_c = tl.dot(b_a, b_b, b_c)
    tl.store(c + o_m[:, None] * N + o_n[None, :], b_c.to(tl.bfloat16), mask=m_m[:, None] & m_n[None, :])


@triton.jit
def demo_scale_kernel(x, y, n, BLOCK: tl.constexpr, SCALE: tl.constexpr = 2.0):
    """y = SCALE * x, elementwise."""
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    tl.store(y + o, (tl.load(x + o, mask=m, other=0.0) * SCALE).to(y.dtype.element_ty), mask=m)


# Module level, so a session running under TRITON_INTERPRET=1 can import it again in a fresh process.
demo_scale_kernel_tuned = triton.heuristics({"SCALE": lambda args: 3.0})(
    triton.autotune([triton.Config({"BLOCK": 256})], key=["n"])(demo_scale_kernel))

GEMM_SIG = dict(a="*bf16", b="*bf16", c="*bf16", M="i32", N="i32", K="i32")
SCALE_SIG = dict(x="*fp32", y="*bf16", n="i32")
# 4 warps (one warpgroup) and a 64-row tile: what Hopper's wgmma needs.
GEMM = AotSpec("demo_gemm_kernel", demo_gemm_kernel, GEMM_SIG, dict(BM=64, BN=64, BK=32),
               num_warps=4, num_stages=3, gemm_heavy=True)
# A 128x64 fp32 accumulator in one warp is 256 registers per thread for the accumulator alone.
GEMM_SPILLING = AotSpec("demo_gemm_kernel_spilling", demo_gemm_kernel, GEMM_SIG, dict(BM=128, BN=64, BK=32),
                        num_warps=1, num_stages=1, gemm_heavy=True)
SCALE = AotSpec("demo_scale_kernel", demo_scale_kernel, SCALE_SIG, dict(BLOCK=1024))

JOBS = {
    "gemm-90": (GEMM, 90),
    "gemm-80": (GEMM, 80),
    "scale-90": (SCALE, 90),
    "scale-80": (SCALE, 80),
    "spilling-80": (GEMM_SPILLING, 80),
    "scale-as-gemm-90": (AotSpec("not_a_gemm", demo_scale_kernel, SCALE_SIG, dict(BLOCK=1024), gemm_heavy=True), 90),
    "bad-block-90": (AotSpec("bad_block", demo_scale_kernel, SCALE_SIG, dict(BLOCK=48)), 90),  # not a power of 2
    "no-type-90": (AotSpec("no_type", demo_scale_kernel, dict(x="*fp32", y="*bf16"), dict(BLOCK=64)), 90),
    "tuned-80": (AotSpec("tuned", demo_scale_kernel_tuned, SCALE_SIG, dict(BLOCK=256, SCALE=3.0)), 80),
}


@pytest.fixture(scope="module")
def report():
    """All demo compiles at once (in fresh processes if this session interprets Triton)."""
    return dict(zip(JOBS, compile_specs(list(JOBS.values()))))


@pytest.mark.parametrize("arch, unit", [(90, "wgmma"), (80, "mma")])
def test_gemm_uses_matrix_units(report, arch, unit):
    r = report[f"gemm-{arch}"]
    assert r.error is None, r.error
    assert r.registers > 0
    assert (r.spill_stores, r.spill_loads, r.stack_bytes) == (0, 0, 0)
    assert r.shared_bytes > 0                                         # pipelined tiles of a and b
    assert r.matrix_unit == unit
    assert r.ok, r.status


@pytest.mark.parametrize("arch", ARCHS)
def test_elementwise_uses_no_matrix_unit(report, arch):
    r = report[f"scale-{arch}"]
    assert r.error is None, r.error
    assert r.registers > 0 and not r.spills
    assert r.matrix_unit == "none"
    assert r.ok and r.status == "ok"


def test_spills_are_detected(report):
    r = report["spilling-80"]
    assert r.error is None, r.error
    assert r.spill_stores > 0 and r.spill_loads > 0 and r.stack_bytes > 0
    assert not r.ok and "spills" in r.status


@pytest.mark.parametrize("arch, limit", [(90, 232448), (80, 166912)])
def test_shared_memory_over_the_limit_fails(report, arch, limit):
    """A block over the opt-in maximum (dynamic + static) compiles but cannot launch: the row fails."""
    assert SHARED_MEMORY_LIMIT[arch] == limit
    fits = CompileResult(GEMM, arch, registers=128, shared_bytes=limit - 1024, static_shared_bytes=1024,
                         matrix_unit=report[f"gemm-{arch}"].matrix_unit)
    assert fits.ok, fits.status
    over = dataclasses.replace(fits, shared_bytes=limit - 1023)
    assert not over.ok and over.status == f"smem {limit + 1} B > {limit} B"
    assert format_report([over]).splitlines()[2].endswith(f"| smem {limit + 1} B > {limit} B |")
    assert report[f"gemm-{arch}"].total_shared_bytes <= limit and report[f"gemm-{arch}"].ok


def test_gemm_heavy_without_wgmma_fails(report):
    r = report["scale-as-gemm-90"]
    assert r.error is None and r.matrix_unit == "none"
    assert not r.ok and "wgmma" in r.status


def test_mma_sync_on_hopper_by_design():
    """A GEMM-heavy kernel whose products have fewer rows than wgmma's 64 by design passes on sm_90
    with mma.sync, and still fails without a matrix unit."""
    by_design = dataclasses.replace(GEMM, mma_sync_on_hopper=True)
    assert CompileResult(by_design, 90, registers=128, matrix_unit="mma").ok
    assert CompileResult(by_design, 90, registers=128, matrix_unit="none").status == "GEMM-heavy kernel without mma"
    assert CompileResult(GEMM, 90, registers=128, matrix_unit="mma").status == "GEMM-heavy kernel without wgmma (mma)"


def test_compile_error_is_a_result(report):
    r = report["bad-block-90"]
    assert r.error and not r.ok and r.status.startswith("error")
    assert "'n'" in report["no-type-90"].error


def test_autotune_and_heuristics_wrappers_are_unwrapped(report):
    r = report["tuned-80"]
    assert r.error is None and r.ok, r.status


def test_compile_spec(report):
    r = compile_spec(SCALE, 80)
    assert (r.spec, r.arch, r.registers, r.error) == (SCALE, 80, report["scale-80"].registers, None)


def test_compile_specs_in_a_fresh_process(report):
    """Forced into a fresh process (the path taken when this process interprets Triton, as the
    CPU test session does), a compile gives the numbers of `report` and the caller's spec back."""
    (r,) = compile_specs([JOBS["scale-80"]], fresh_process=True)
    assert r.error is None, r.error
    assert (r.registers, r.shared_bytes, r.matrix_unit) == (report["scale-80"].registers,
                                                            report["scale-80"].shared_bytes, "none")
    assert r.spec is SCALE


def test_compile_specs_split_over_workers():
    """Three fresh processes sharing five jobs (every third job each, one of them a compile error)
    give each result back in the caller's order, as one process does: the five results differ from
    each other, so a swap would show."""
    jobs = [JOBS[k] for k in ("scale-80", "gemm-90", "bad-block-90", "gemm-80", "spilling-80")]
    fingerprint = lambda r: (r.registers, r.shared_bytes, r.spill_stores, r.matrix_unit, r.status)
    one = [fingerprint(r) for r in compile_specs(jobs, fresh_process=True, workers=1)]
    assert len(set(one)) == len(jobs), one
    assert [fingerprint(r) for r in compile_specs(jobs, fresh_process=True, workers=3)] == one


@pytest.mark.parametrize("workers", [0, -1, 1.5])
def test_compile_specs_rejects_bad_workers(workers):
    with pytest.raises(ValueError, match="workers must be a positive int"):
        compile_specs([JOBS["scale-80"]], workers=workers)

def test_format_report(report):
    results = [report["gemm-90"], report["spilling-80"]]
    lines = format_report(results).splitlines()
    assert len(lines) == 2 + len(results)
    assert "demo_gemm_kernel" in lines[2] and "BM=64, BN=64, BK=32, warps=4, stages=3" in lines[2]
    assert "sm_90" in lines[2] and "wgmma" in lines[2] and lines[2].endswith("| ok |")
    assert "demo_gemm_kernel_spilling" in lines[3] and "spills" in lines[3]


def test_cli_empty_registry(monkeypatch, capsys):
    monkeypatch.setattr(aot_registry, "OP_MODULES", ("no_such_op",))
    assert aot_registry.aot_specs() == []
    assert cli.main(["compile-report", "--arch", "90"]) == 0
    assert "no kernels registered yet" in capsys.readouterr().out


def test_cli_fails_on_spills(monkeypatch, capsys, tmp_path, report):
    bad = AotSpec("bad_block", demo_scale_kernel, SCALE_SIG, dict(BLOCK=48))
    monkeypatch.setattr(aot_registry, "aot_specs", lambda arch=None, fp32_inputs=False: [SCALE, GEMM_SPILLING, bad])
    out = tmp_path / "report.md"
    assert compile_report.main(["--arch", "80", "--kernel", "scale", "--out", str(out)]) == 0
    assert "demo_scale_kernel" in out.read_text() and "spilling" not in out.read_text()
    assert compile_report.main(["--arch", "80"]) == 1
    text = capsys.readouterr().out
    assert "1 ok, 2 failed" in text and "must be a power of 2" in text
    assert compile_report.main(["--kernel", "nothing_matches"]) == 1


def test_cli_fp32_inputs(monkeypatch, capsys):
    """`--fp32-inputs` asks the registry for the fp32-input rows too; without it, not."""
    asked = []
    monkeypatch.setattr(aot_registry, "aot_specs",
                        lambda arch=None, fp32_inputs=False: asked.append(fp32_inputs) or [SCALE])
    assert compile_report.main(["--arch", "80", "--fp32-inputs"]) == 0 and True in asked
    asked.clear()
    assert compile_report.main(["--arch", "80"]) == 0 and asked and True not in asked


def test_fp32_input_specs():
    """The rows of `--fp32-inputs` add to the default ones what fp32 inputs run: every kernel with an
    fp32-input (tf32) row on sm_90 also on sm_80, and with exact fp32 products on both, at the
    configurations the launchers pick (here: the transposed recurrences of sm_90 alone)."""
    default = aot_registry.aot_specs()
    every = aot_registry.aot_specs(fp32_inputs=True)
    extra = [s for s in every if s not in default]
    assert len(every) == len(default) + len(extra) and extra
    rows = lambda specs, precision, arch: {s.name.replace("fp32exact", "fp32qkv") for s in specs
                                           if s.constexprs.get("DOT_PRECISION") == precision and arch in s.archs}
    fp32_tf32_hopper = {s.name for s in default if "fp32qkv" in s.name and s.constexprs.get("DOT_PRECISION") == "tf32"}
    assert fp32_tf32_hopper and fp32_tf32_hopper == rows(default, "tf32", 90) - rows(default, "tf32", 80) - {
        s.name for s in default if "fp32qkv" not in s.name}
    assert fp32_tf32_hopper <= rows(extra, "tf32", 80)
    # exact fp32: every fp32qkv row on both archs (the DGD inverse's backward runs tf32x3 instead: reported)
    assert {n for n in fp32_tf32_hopper if not n.startswith("dgd_inverse")} == rows(extra, "ieee", 90) == \
        rows(extra, "ieee", 80)
    assert not any(s.gemm_heavy for s in extra if s.constexprs.get("DOT_PRECISION") == "ieee")   # the FMA units
    transposed = {arch: {s.name for s in aot_registry.aot_specs(arch, fp32_inputs=True)
                         if s.constexprs.get("TRANSPOSED") and "fp32exact" in s.name} for arch in ARCHS}
    assert "linear_memory_fwd_h-D128-BT64-fp32exact-mom-dgd" in transposed[90] and transposed[80] == set()


@pytest.mark.parametrize("arch", ARCHS)
def test_shipped_kernels_compile_clean(arch):
    """Every registered kernel compiles without spills, within a block's shared memory and,
    GEMM-heavy on sm_90, with wgmma; the only exceptions are the spills an op lists in
    KNOWN_SPILLS, which must still be spills (and nothing worse: not over the shared memory
    either), so a fix has to take its entry off the list."""
    results = compile_specs([(spec, arch) for spec in aot_registry.aot_specs(arch)])
    known = aot_registry.known_spills(arch)
    unexpected = [r for r in results if not r.ok and r.spec.name not in known]
    assert not unexpected, format_report(unexpected)
    failing = {r.spec.name: r for r in results if not r.ok}
    fixed = sorted(known - set(failing))
    assert not fixed, f"no longer spilling on sm_{arch}, take them off KNOWN_SPILLS: {fixed}"
    worse = [r for name, r in failing.items() if r.problems() != [p for p in r.problems() if p.startswith("spills")]]
    assert not worse, format_report(worse)


def test_specs_by_arch():
    """The fp32-operand variants (Hopper's fp32 copies of 16-bit inputs, or their loads converted in
    the kernels) are reported for sm_90 only; every other spec for both architectures."""
    names = lambda specs: {s.name for s in specs}
    every, sm90, sm80 = (names(aot_registry.aot_specs(arch)) for arch in (None, 90, 80))
    hopper_only = {n for n in every if "fp32qkv" in n or "fp32ops" in n}
    assert {n for n in hopper_only if "fp32ops" in n} != set() and {n for n in hopper_only if "fp32qkv" in n} != set()
    assert sm90 | sm80 == every and sm90 - sm80 == hopper_only and sm80 == sm90 - hopper_only
    key_tile = {arch: [s.constexprs["BK"] for s in aot_registry.aot_specs(arch)
                       if s.name == "linear_memory_bwd_dq-D64-BT64-bf16-mom-dgd"] for arch in (90, 80)}
    assert key_tile == {90: [64], 80: [32]}                                   # configs.SM90
    transposed = {arch: {s.name for s in aot_registry.aot_specs(arch) if s.constexprs.get("TRANSPOSED")}
                  for arch in (90, 80)}                                       # configs.transposed_states
    recurrences = {f"linear_memory_{part}-{shape}-" for part in ("fwd_h", "bwd_dh")
                   for shape in ("D128-BT64", "D256-BT16", "D256-BT32", "D256-BT64")}
    assert transposed == {90: {n for n in sm90 if n.startswith(tuple(recurrences)) and "fp32" in n}, 80: set()}
    # every flag combination, fp32 inputs at all four shapes, converted loads too but for bwd_dh at D256-BT64
    # (the backward's fp32 copies)
    assert len(transposed[90]) == (4 + 8) * 4 + (4 + 8) * 3 + 4
