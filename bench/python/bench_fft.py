"""Benchmark mmm.fft and mmm.rfft against torch.fft (cuFFT on CUDA, pocketfft/MKL on the CPU).

The ops, along the last dim of x (rows, n), n a power of two, norm=None ("backward"):
    fft    complex64 -> complex64 (rows, n)
    rfft   float32   -> complex64 (rows, n/2 + 1)
Backward: fft's dx = ifft with the dual norm; rfft's dx = irfft of dy with the middle bins halved.

Implementations ("impls")
    mmm      mmm.fft / mmm.rfft.
    torch    torch.fft.fft / torch.fft.rfft (cuFFT on CUDA, pocketfft or MKL on the CPU): the peer.

Modes
    fwd      forward only, under torch.no_grad().
    fwd+bwd  forward, then torch.autograd.grad of y with respect to x given a random dy.

Byte model (the fewest bytes the op must move; GB/s = bytes / median time, decimal GB)
    fft      fwd: read x, write y = 2 * rows * n * 8;   fwd+bwd: 2x that (read dy, write dx)
    rfft     fwd: read x (rows * n * 4), write y (rows * (n/2+1) * 8);   fwd+bwd: 2x that
    "%BW" is GB/s over the device's measured copy bandwidth (read + written bytes). For every n
    that fits one CTA (<= 8192 or 16384 on CUDA) mmm moves exactly these bytes; beyond, its
    four-step path moves them twice (a workspace round trip), so %BW halves by design.

Cases
    CUDA: n = 256 .. 65536 (every power of two), rows such that x is 128 MB for fft (one call
    moves 256 MB) and 128 MB for rfft (~256 MB moved). --quick: 32 MB and n in {256, 4096, 65536}.
    CPU: x of 2^20 elements (2^18 with --quick); n in {256, 1024, 4096, 16384} (--quick: 256, 4096).

Checks: before timing, each impl's output and gradient are compared with torch.fft in
complex128 / float64 on the same inputs: err = max |a - ref| / max |ref| over y and dx; mmm's must
be <= 1e-5. A failed check is reported in the table and JSON and makes the script exit 1.

Plot: on CUDA (or with --plot PATH) a PNG of GB/s against n, one panel per (op, mode), one line per
impl, written next to --out (PATH.png) or to --plot; skipped when matplotlib is not importable.

Examples
    python bench/python/bench_fft.py --device cuda --out results.json
    python bench/python/bench_fft.py --device cpu --quick
    python bench/python/bench_fft.py --device cuda --filter rfft
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

IMPLS = ("mmm", "torch")
PEERS = ("torch",)
MODES = ("fwd", "fwd+bwd")
OPS = ("fft", "rfft")
TOL = 1e-5


@dataclass(frozen=True)
class Case:
    op: str
    rows: int
    n: int
    tier: int = 0

    @property
    def name(self) -> str:
        return f"{self.op}/{self.rows}x{self.n}"


def byte_model(c: Case) -> dict[str, int]:
    if c.op == "fft":
        fwd = 2 * c.rows * c.n * 8
    else:
        fwd = c.rows * c.n * 4 + c.rows * (c.n // 2 + 1) * 8
    return {"fwd": fwd, "fwd+bwd": 2 * fwd}


def build_cases(device: str, quick: bool) -> list[Case]:
    if device == "cuda":
        nbytes = (32 if quick else 128) << 20
        ns = [256, 4096, 65536] if quick else [1 << k for k in range(8, 17)]
        cases = [Case(op, nbytes // (n * (8 if op == "fft" else 4)), n, 0 if n in (256, 4096, 16384, 65536) else 1)
                 for n in ns for op in OPS]
    else:
        elems = 1 << (18 if quick else 20)
        ns = [256, 4096] if quick else [256, 1024, 4096, 16384]
        cases = [Case(op, elems // n, n, 0) for n in ns for op in OPS]
    order = {c: i for i, c in enumerate(cases)}
    return sorted(cases, key=lambda c: (c.tier, order[c]))


def make_impl(impl: str, op: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if impl == "mmm":
        import mmm
        return mmm.fft if op == "fft" else mmm.rfft
    if impl == "torch":
        return torch.fft.fft if op == "fft" else torch.fft.rfft
    raise ValueError(impl)


def make_inputs(c: Case, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    x = torch.randn(c.rows, c.n, generator=g, device=device)
    if c.op == "fft":
        x = torch.complex(x, torch.randn(c.rows, c.n, generator=g, device=device))
        dy = torch.complex(torch.randn(c.rows, c.n, generator=g, device=device),
                           torch.randn(c.rows, c.n, generator=g, device=device))
    else:
        m = c.n // 2 + 1
        dy = torch.complex(torch.randn(c.rows, m, generator=g, device=device),
                           torch.randn(c.rows, m, generator=g, device=device))
    return {"x": x, "dy": dy}


def reference(c: Case, inp: dict[str, torch.Tensor]) -> dict[str, Any]:
    """torch.fft in complex128 / float64 on a slice of the rows (the check, not the timing)."""
    rows = min(c.rows, 64)
    x = inp["x"][:rows].to(torch.complex128 if c.op == "fft" else torch.float64)
    run = common.runners(make_impl("torch", c.op), [x], inp["dy"][:rows].to(torch.complex128))
    y, dx = run["fwd+bwd"]()
    return {"rows": rows, "fwd": y.detach(), "fwd+bwd": (y.detach(), dx)}


def run_case(c: Case, impls: list[str], device: torch.device, timer: common.Timer, copy_bps: float,
             report: common.Report) -> list[dict[str, Any]]:
    inp = make_inputs(c, device)
    bm = byte_model(c)
    ref = reference(c, inp)
    r = ref["rows"]

    def prepare(impl):
        fn = make_impl(impl, c.op)
        check = common.runners(fn, [inp["x"][:r]], inp["dy"][:r])
        errs = {mode: common.max_rel_err(check[mode](), ref[mode]) for mode in MODES}
        return common.runners(fn, [inp["x"]], inp["dy"]), errs

    per_mode, errs = common.time_impls(
        c.name, impls, prepare, lambda impl, mode, t, err: common.bandwidth_record(
            c.name, {"op": c.op, "rows": c.rows, "n": c.n, "tier": c.tier}, impl, mode, bm[mode], t,
            copy_bps, err[mode], TOL),
        timer=timer, device=device, report=report, modes=MODES)
    rows_out = []
    for mode in MODES:
        ts = per_mode[mode]
        row = common.peer_columns(
            {"op": c.op, "rows": c.rows, "n": c.n, "mode": mode, "MB": bm[mode] / 1e6}, ts, impls=IMPLS,
            peers=PEERS, nbytes=bm[mode], copy_bps=copy_bps, errs={k: e[mode] for k, e in errs.items()}, tol=TOL)
        if ts.get("torch"):
            row["torch_GBps"] = bm[mode] / ts["torch"].median_s / 1e9
        rows_out.append(row)
    del inp, ref
    common.release(device)
    return rows_out


COLUMNS = [
    ("op", "op", ""), ("rows", "rows", ""), ("n", "n", ""), ("mode", "mode", ""), ("MB", "MB", ".0f"),
    ("mmm_us", "mmm us", ".1f"), ("torch_us", "torch us", ".1f"), ("mmm_GBps", "mmm GB/s", ".0f"),
    ("torch_GBps", "torch GB/s", ".0f"), ("mmm_pct", "mmm %BW", ".0f"), ("speedup", "vs torch", ".2f"),
    ("mmm_err", "mmm err", ".1e"), ("peer_err", "torch err", ".1e"), ("check", "check", ""),
]


def plot(report: common.Report, impls: list[str], path: Path) -> None:
    """GB/s against n, one panel per (mode, op), one line per impl."""
    panels = [(f"{op}, {mode}", lambda r, op=op, mode=mode: r["op"] == op and r["mode"] == mode)
              for mode in MODES for op in OPS]
    common.plot_panels(report, impls, path, panels, x="n", y="GBps", xlabel="n", ylabel="GB/s (byte model)",
                       ncols=len(OPS), copy_line=True, panel_size=(5, 3.4))


def main(argv: list[str] | None = None) -> int:
    parser = common.make_parser(__doc__.split("\n")[0], IMPLS)
    common.add_plot_arg(parser, "GB/s", "bench_fft.png")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    device = common.resolve_device(args)
    impls = common.selected_impls(args, IMPLS)
    common.require_mmm(impls, "fft", "rfft")
    cases, env, copy_bw, report = common.start("fft", args, device, impls, build_cases(args.device, args.quick), {
        "byte_model": "fft: fwd 16*rows*n (read x, write y); rfft: fwd rows*(4n + 8(n/2+1)); fwd+bwd 2x fwd",
        "norm": "backward (None)",
        "peer": "torch.fft (cuFFT on CUDA, pocketfft/MKL on the CPU)",
        "reference": "torch.fft in complex128/float64 on up to 64 rows; err = max|a-ref| / max|ref| over y (and dx)",
    })
    print(f"{len(cases)} cases x {len(impls)} impls x {len(MODES)} modes", flush=True)
    timer = common.Timer(device, quick=args.quick, reps=args.reps)
    rc = common.run_cases(
        cases, lambda c: run_case(c, impls, device, timer, copy_bw["bytes_per_s"], report), args=args,
        report=report, timer=timer, env=env, copy_bw=copy_bw, columns=COLUMNS,
        footer=("MB: bytes the op must move (docstring); vs torch = torch time / mmm time (> 1: mmm faster); %BW is "
                "relative to the measured copy bandwidth; err = max|a - ref| / max|ref| against torch.fft in float64."),
        t_start=t_start)
    if args.plot is not None or device.type == "cuda":
        path = common.plot_path(args, "bench_fft.png")
        plot(report, impls, path)
    return rc


if __name__ == "__main__":
    sys.exit(main())
