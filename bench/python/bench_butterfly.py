"""Benchmark mmm.butterfly_multiply against torch_butterfly-style PyTorch and a dense nn.Linear.

The op, for x of shape (rows, 1, n) and twiddle (1, 1, log2 n, n/2, 2, 2): y = B x, B the product
of log2(n) learnable butterfly factors at strides 1, 2, ..., n/2 (torch_butterfly's
butterfly_multiply_torch; see mmm.butterfly_multiply). Backward: dx and dtwiddle (a sum over rows).

Implementations ("impls")
    mmm      mmm.butterfly_multiply(x, twiddle); twiddle float32 for bf16 x (accepted as is),
             else x's dtype.
    loop     torch_butterfly's plain-PyTorch loop (butterfly_loop below): per factor a view,
             a broadcast product with the (permuted) twiddle and a sum; twiddle in x's dtype,
             arithmetic in x's dtype (a rounding per factor). What torch_butterfly runs without
             its CUDA extension.
    dense    F.linear(x, W), W an (n, n) weight in x's dtype: the nn.Linear the butterfly replaces
             (fwd+bwd computes dx and dW). fp32 matmuls use torch's float32_matmul_precision
             (default "highest": no TF32). Only n <= 8192 for fp32/complex64.
    Peers (for "best peer" and "speed-up"): loop, dense.

Modes
    fwd      forward only, under torch.no_grad().
    fwd+bwd  forward, then torch.autograd.grad of y with respect to x and the weight given a random
             upstream gradient dy.

Byte model (the fewest bytes the op must move; GB/s = bytes / median time, decimal GB)
    s = bytes per element of x, E = rows * n, T = twiddle bytes (log2(n) * n/2 * 4 entries).
    fwd      read x, write y, read twiddle                           2 * E * s + T
    fwd+bwd  fwd + read dy, write dx, read twiddle, write dtwiddle   4 * E * s + 3 * T
    The loop's per-factor intermediates and dense's n^2 weight are not counted, so they show up
    as lower GB/s. "%BW" is GB/s over the device's measured copy bandwidth.

Cases
    CUDA: rows so that x is ~64 MB (16 MB with --quick). Tier 0: bf16 at n in {256, 1024, 4096,
    16384}; tier 1: fp32 at the same n; tier 2: complex64 at n in {1024, 4096}. --quick: bf16 at
    every n, fp32 at 4096.
    CPU: x of 2^20 elements (2^18 with --quick): fp32 at n in {256, 1024, 4096} [--quick: these],
    then bf16 at 1024 and complex64 at 1024.

Checks: before timing, y (and dx, dtwiddle / dW) of each impl are compared with butterfly_loop in
float64 / complex128 on the same inputs: err = max |a - ref| / max |ref|. mmm's must be <= 2e-2
(bf16) or 1e-5 (fp32, complex64). A failed check is reported and makes the script exit 1.

Plot: GB/s against n, one panel per (dtype, mode), one line per impl, written next to --out
(PATH.png) or to --plot; skipped when matplotlib is not importable.

Examples
    python bench/python/bench_butterfly.py --device cuda --out results.json
    python bench/python/bench_butterfly.py --device cpu --quick
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

IMPLS = ("mmm", "loop", "dense")
PEERS = ("loop", "dense")
MODES = ("fwd", "fwd+bwd")
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.complex64: 1e-5}
DENSE_MAX_N_WIDE = 8192  # fp32 / complex64 weights of 16384^2 take 1-2 GB


@dataclass(frozen=True)
class Case:
    dtype: torch.dtype
    rows: int
    n: int
    tier: int = 0

    @property
    def log_n(self) -> int:
        return self.n.bit_length() - 1

    @property
    def tw_dtype(self) -> torch.dtype:
        return torch.float32 if self.dtype == torch.bfloat16 else self.dtype

    @property
    def name(self) -> str:
        return f"{common.dtype_name(self.dtype)}/{self.rows}x{self.n}"


def esize(dt: torch.dtype) -> int:
    return torch.tensor([], dtype=dt).element_size()


def byte_model(c: Case) -> dict[str, int]:
    x = c.rows * c.n * esize(c.dtype)
    t = c.log_n * c.n * 2 * esize(c.tw_dtype)
    return {"fwd": 2 * x + t, "fwd+bwd": 4 * x + 3 * t}


def build_cases(device: str, quick: bool) -> list[Case]:
    bf, fp32, c64 = torch.bfloat16, torch.float32, torch.complex64
    all_n = [256, 1024, 4096, 16384]
    if device == "cuda":
        nbytes = (16 if quick else 64) << 20

        def mk(dt, n, tier):
            return Case(dt, nbytes // (n * esize(dt)), n, tier)
        if quick:
            cases = [mk(bf, n, 0) for n in all_n] + [mk(fp32, 4096, 1)]
        else:
            cases = [mk(bf, n, 0) for n in all_n] + [mk(fp32, n, 1) for n in all_n] + [mk(c64, n, 2) for n in (1024, 4096)]
    else:
        elems = 1 << (18 if quick else 20)

        def mk(dt, n, tier):
            return Case(dt, elems // n, n, tier)
        cases = [mk(fp32, n, 0) for n in (256, 1024, 4096)]
        if not quick:
            cases += [mk(bf, 1024, 1), mk(c64, 1024, 1)]
    order = {c: i for i, c in enumerate(cases)}
    return sorted(cases, key=lambda c: (c.tier, order[c]))


def butterfly_loop(x: torch.Tensor, twiddle: torch.Tensor) -> torch.Tensor:
    """torch_butterfly's butterfly_multiply_torch (increasing stride), x (rows, nstacks, n)."""
    nstacks, nblocks, log_n = twiddle.shape[:3]
    n = 1 << log_n
    b = x.shape[0]
    out = x
    for block in range(nblocks):
        for idx in range(log_n):
            s = 1 << idx
            t = twiddle[:, block, idx].view(nstacks, n // (2 * s), s, 2, 2).permute(0, 1, 3, 4, 2)
            out = (t * out.view(b, nstacks, n // (2 * s), 1, 2, s)).sum(dim=4).view(b, nstacks, n)
    return out


def make_weights(c: Case, device: torch.device, g: torch.Generator) -> dict[str, torch.Tensor]:
    real = torch.randn(1, 1, c.log_n, c.n // 2, 2, 2, generator=g, device=device) / math.sqrt(2)
    if c.dtype.is_complex:
        real = torch.complex(real, torch.randn(real.shape, generator=g, device=device) / math.sqrt(2)) / math.sqrt(2)
    return {"twiddle": real}


def make_impl(impl: str, c: Case, w: dict[str, torch.Tensor], device: torch.device):
    """(fn(x, weight), weight leaf) for one impl."""
    if impl == "mmm":
        import mmm
        tw = w["twiddle"].to(c.tw_dtype)
        return (lambda x, t: mmm.butterfly_multiply(x, t)), tw
    if impl == "loop":
        return butterfly_loop, w["twiddle"].to(c.dtype)
    if impl == "dense":
        g = torch.Generator(device=device)
        g.manual_seed(1)
        wd = torch.randn(c.n, c.n, generator=g, device=device, dtype=torch.float32) / math.sqrt(c.n)
        return (lambda x, W: F.linear(x, W)), wd.to(c.dtype)
    raise ValueError(impl)


def run_case(c: Case, impls: list[str], device: torch.device, timer: common.Timer, copy_bps: float,
             report: common.Report) -> list[dict[str, Any]]:
    g = torch.Generator(device=device)
    g.manual_seed(0)
    real = torch.float32
    x = torch.randn(c.rows, 1, c.n, generator=g, device=device, dtype=real)
    dy = torch.randn(c.rows, 1, c.n, generator=g, device=device, dtype=real)
    if c.dtype.is_complex:
        x = torch.complex(x, torch.randn(x.shape, generator=g, device=device))
        dy = torch.complex(dy, torch.randn(dy.shape, generator=g, device=device))
    x, dy = x.to(c.dtype), dy.to(c.dtype)
    w = make_weights(c, device, g)
    bm = byte_model(c)
    hi = torch.complex128 if c.dtype.is_complex else torch.float64

    def prepare(impl):
        fn, weight = make_impl(impl, c, w, device)
        run = common.runners(fn, [x, weight], dy)
        # The reference: the same function (same weight) in float64 / complex128.
        ref_fn = butterfly_loop if impl != "dense" else (lambda a, W: F.linear(a, W))
        ref_run = common.runners(ref_fn, [x.to(hi), weight.to(hi)], dy.to(hi))
        errs = {}
        for mode in MODES:
            got, want = run[mode](), ref_run[mode]()
            errs[mode] = common.max_rel_err(got, want)
            del got, want
        del ref_run
        return run, errs

    fields = {"dtype": common.dtype_name(c.dtype), "rows": c.rows, "n": c.n, "tier": c.tier}
    per_mode, errs = common.time_impls(
        c.name, impls, prepare, lambda impl, mode, t, err: common.bandwidth_record(
            c.name, fields, impl, mode, bm[mode], t, copy_bps, err[mode], TOL[c.dtype]),
        timer=timer, device=device, report=report, modes=MODES)
    rows_out = [common.peer_columns(
        {"dtype": fields["dtype"], "rows": c.rows, "n": c.n, "mode": mode, "MB": bm[mode] / 1e6}, per_mode[mode],
        impls=IMPLS, peers=PEERS, nbytes=bm[mode], copy_bps=copy_bps, errs={k: e[mode] for k, e in errs.items()},
        tol=TOL[c.dtype]) for mode in MODES]
    del x, dy, w
    common.release(device)
    return rows_out


def plot(report: common.Report, impls: list[str], path: Path) -> None:
    """GB/s against n, one panel per (dtype, mode)."""
    panels = [(f"{dt} {mode}", lambda r, dt=dt, mode=mode: r["dtype"] == dt and r["mode"] == mode)
              for dt, mode in sorted({(r["dtype"], r["mode"]) for r in report.records if r.get("status") == "ok"})]
    common.plot_panels(report, impls, path, panels, x="n", y="GBps", xlabel="n", ylabel="GB/s (byte model)",
                       ncols=max(1, len(panels)), copy_line=True, panel_size=(4.5, 3.6))


COLUMNS = [
    ("dtype", "dtype", ""), ("rows", "rows", ""), ("n", "n", ""), ("mode", "mode", ""), ("MB", "MB", ".0f"),
    ("mmm_us", "mmm us", ".1f"), ("loop_us", "loop us", ".1f"), ("dense_us", "dense us", ".1f"),
    ("mmm_GBps", "mmm GB/s", ".0f"), ("mmm_pct", "mmm %BW", ".0f"), ("best_peer", "best peer", ""),
    ("speedup", "speed-up", ".2f"), ("mmm_err", "mmm err", ".1e"), ("check", "check", ""),
]


def main(argv: list[str] | None = None) -> int:
    parser = common.make_parser(__doc__.split("\n")[0], IMPLS)
    common.add_plot_arg(parser, "GB/s", "bench_butterfly.png")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    device = common.resolve_device(args)
    impls = common.selected_impls(args, IMPLS)
    common.require_mmm(impls, "butterfly_multiply")
    cases, env, copy_bw, report = common.start("butterfly_multiply", args, device, impls, build_cases(args.device, args.quick), {
        "byte_model": "fwd 2*E*s + T (read x, write y, read twiddle); fwd+bwd 4*E*s + 3*T",
        "twiddle": "(1, 1, log2 n, n/2, 2, 2), increasing stride; float32 for bf16 x in mmm, x's dtype in loop",
        "dense": f"F.linear(x, W), W (n, n) in x's dtype; fp32/complex64 only n <= {DENSE_MAX_N_WIDE}",
        "reference": "the same impl's function in float64/complex128; err = max|a-ref| / max|ref| over all outputs",
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    })
    print(f"{len(cases)} cases x {len(impls)} impls x {len(MODES)} modes", flush=True)
    timer = common.Timer(device, quick=args.quick, reps=args.reps)

    def run_one(c: Case):
        case_impls = [i for i in impls if i != "dense" or c.dtype == torch.bfloat16 or c.n <= DENSE_MAX_N_WIDE]
        return run_case(c, case_impls, device, timer, copy_bw["bytes_per_s"], report)

    rc = common.run_cases(
        cases, run_one, args=args, report=report, timer=timer, env=env, copy_bw=copy_bw, columns=COLUMNS,
        footer=("MB: bytes the op must move (x, y, twiddle; + dy, dx, twiddle, dtwiddle); speed-up = best peer "
                "(loop, dense) time / mmm time; %BW relative to the measured copy bandwidth; err = max|a - ref| / "
                "max|ref| against the same function in float64."),
        t_start=t_start)
    if args.plot is not None or device.type == "cuda":
        path = common.plot_path(args, "bench_butterfly.png")
        plot(report, impls, path)
    return rc


if __name__ == "__main__":
    sys.exit(main())
