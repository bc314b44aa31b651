"""Benchmark mmm.hadamard_transform against PyTorch.

The op, for x of shape (rows, n): y = scale * (H_m @ pad(x, m))[..., :n] along the last dim, H_m
the Sylvester-ordered Hadamard matrix, m the next power of two >= n (x zero-padded, the result
truncated back; nothing padded is stored). Every case uses scale = 1/sqrt(m) (orthonormal).
Backward: dx = the same transform of dy.

Implementations ("impls")
    mmm      mmm.hadamard_transform(x, scale).
    eager    the fast Walsh-Hadamard transform in eager PyTorch (fwht_eager below): pad to m, then
             log2(m) steps of view (-1, m/2h, 2, h) and torch.stack((a + b, a - b)), then
             truncate and multiply by scale. Arithmetic in x's dtype (a rounding per step).
    compile  torch.compile (default mode, dynamic=False) of fwht_eager. Compilation is in the
             untimed first call; torch._dynamo.reset() before every case. It costs tens of
             seconds per case, so by default it runs only on the cases marked "compile peer"
             (CUDA: bf16 n 1024 and 16384; CPU: fp32 n 1024 without --quick); name it in
             --impls to run it on every case.
    dense    x @ Hs, Hs = scale * H_m[:n, :n] in x's dtype (a constant: no gradient): the GEMM a
             user would write. Only for n <= 8192 on CUDA, 4096 on the CPU (Hs is n^2).
             fp32 matmuls use torch's float32_matmul_precision (default "highest": no TF32).
    Peers (for "best peer" and "speed-up"): eager, compile, dense.

Modes
    fwd      forward only, under torch.no_grad().
    fwd+bwd  forward, then torch.autograd.grad of y with respect to x given a random upstream
             gradient dy.

Byte model (the fewest bytes the op must move; GB/s = bytes / median time, decimal GB)
    s = bytes per element, E = rows * n (the stored length, not the padded one).
    fwd      read x, write y                           2 * E * s
    fwd+bwd  fwd + read dy, write dx                   4 * E * s
    Extra traffic (eager's log2(m) intermediates, dense's Hs) is not counted, so it shows up as
    lower GB/s. "%BW" is GB/s over the device's measured copy bandwidth (read + written bytes).

Cases
    CUDA: rows chosen so that x is ~256 MB (32 MB with --quick). Tier 0: bf16 at n in {256,
    1024, 4096, 16384, 32768, 65536}; tier 1: fp16 at the same n, and bf16 at n = 14336 (padded
    to 16384); tier 2: fp32 at n in {4096, 32768}. --quick: bf16 at every n, fp16 and fp32 at
    4096.
    CPU: x of 2^22 elements (2^20 with --quick). fp32 at n in {256, 1024, 4096} and 1000
    (padded to 1024) [--quick: these]; then fp32 at 16384, bf16 at {1024, 4096}, fp64 at 1024.

Checks: before timing, the output and gradient of mmm (and of the peers, for scale) are compared
with fwht_eager evaluated in float64 (with autograd for dx) on the same inputs: err =
max |a - ref| / max |ref| over y and dx. mmm's must be <= 1e-2 (bf16), 2e-3 (fp16), 1e-5 (fp32),
1e-12 (fp64): mmm computes in fp32 (fp64) and rounds once on output. A failed check is reported
in the table and JSON and makes the script exit 1 (after writing the results).

Cases are ordered by priority; with --budget, cases not started in time are skipped and listed.

Examples
    python bench/python/bench_hadamard_transform.py --device cuda --out results.json
    python bench/python/bench_hadamard_transform.py --device cpu --quick
    python bench/python/bench_hadamard_transform.py --device cuda --impls mmm,eager --filter bf16
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

IMPLS = ("mmm", "eager", "compile", "dense")
PEERS = ("eager", "compile", "dense")
MODES = ("fwd", "fwd+bwd")
DENSE_MAX_N = {"cuda": 8192, "cpu": 4096}
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def pow2_ceil(n: int) -> int:
    return 1 << (n - 1).bit_length()


@dataclass(frozen=True)
class Case:
    dtype: torch.dtype
    rows: int
    n: int
    tier: int = 0
    compile_peer: bool = False

    @property
    def m(self) -> int:
        return pow2_ceil(self.n)

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.m)

    @property
    def name(self) -> str:
        return f"{common.dtype_name(self.dtype)}/{self.rows}x{self.n}"


def byte_model(c: Case) -> dict[str, int]:
    s = torch.tensor([], dtype=c.dtype).element_size()
    fwd = 2 * c.rows * c.n * s
    return {"fwd": fwd, "fwd+bwd": 2 * fwd}


# ------------------------------------------------------------------------------------------------
# Cases
# ------------------------------------------------------------------------------------------------
def build_cases(device: str, quick: bool) -> list[Case]:
    bf, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    all_n = [256, 1024, 4096, 16384, 32768, 65536]
    if device == "cuda":
        nbytes = (32 if quick else 256) << 20
        def mk(dt, n, tier, cp=False):
            return Case(dt, nbytes // (n * torch.tensor([], dtype=dt).element_size()), n, tier, cp)
        if quick:
            cases = [mk(bf, n, 0) for n in all_n] + [mk(fp16, 4096, 1), mk(fp32, 4096, 1)]
        else:
            cases = ([mk(bf, n, 0, n in (1024, 16384)) for n in all_n]
                     + [mk(fp16, n, 1) for n in all_n] + [mk(bf, 14336, 1)]
                     + [mk(fp32, n, 2) for n in (4096, 32768)])
    else:
        elems = 1 << (20 if quick else 22)
        def mk(dt, n, tier, cp=False):
            return Case(dt, elems // n, n, tier, cp)
        cases = [mk(fp32, n, 0, n == 1024 and not quick) for n in (256, 1024, 4096)]
        cases.append(mk(fp32, 1000, 0))
        if not quick:
            cases += [mk(fp32, 16384, 1), mk(bf, 1024, 1), mk(bf, 4096, 1),
                      mk(torch.float64, 1024, 2)]
    order = {c: i for i, c in enumerate(cases)}
    return sorted(cases, key=lambda c: (c.tier, order[c]))


# ------------------------------------------------------------------------------------------------
# Implementations
# ------------------------------------------------------------------------------------------------
def fwht_eager(x: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * (H_m pad(x))[..., :n] with log2(m) butterfly steps of view + stack, in x's dtype."""
    n = x.shape[-1]
    m = pow2_ceil(n)
    lead = x.shape[:-1]
    y = F.pad(x, (0, m - n)) if m != n else x
    y = y.reshape(-1, m)
    h = 1
    while h < m:
        y = y.view(-1, m // (2 * h), 2, h)       # pairs (i, i + h) in each block of 2h
        a, b = y[:, :, 0], y[:, :, 1]
        y = torch.stack((a + b, a - b), dim=2)
        h *= 2
    y = y.reshape(*lead, m)
    if m != n:
        y = y[..., :n]
    return y * scale


def sylvester(m: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=dtype, device=device)
    while h.shape[0] < m:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def make_impl(impl: str, c: Case, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    scale = c.scale
    if impl == "mmm":
        import mmm
        return lambda x: mmm.hadamard_transform(x, scale)
    if impl == "eager":
        return lambda x: fwht_eager(x, scale)
    if impl == "compile":
        torch._dynamo.reset()

        def fwht(x):
            return fwht_eager(x, scale)
        return torch.compile(fwht, dynamic=False)
    if impl == "dense":
        hs = (sylvester(c.m, torch.float64, device)[:c.n, :c.n] * scale).to(c.dtype).contiguous()
        return lambda x: x @ hs  # Hs is symmetric: x @ Hs = (Hs @ x^T)^T
    raise ValueError(impl)


def runners(fn: Callable, x: torch.Tensor, dy: torch.Tensor) -> dict[str, Callable[[], Any]]:
    return common.runners(fn, [x], dy)


# ------------------------------------------------------------------------------------------------
# Inputs, checks
# ------------------------------------------------------------------------------------------------
def make_inputs(c: Case, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    rdt = torch.float64 if c.dtype == torch.float64 else torch.float32
    def randn():
        return torch.randn(c.rows, c.n, generator=g, device=device, dtype=rdt).to(c.dtype)
    return {"x": randn(), "dy": randn()}


def reference(c: Case, inp: dict[str, torch.Tensor]) -> dict[str, Any]:
    """fwht_eager in float64 on the same (rounded) inputs; dx by autograd through it."""
    run = runners(lambda x: fwht_eager(x, c.scale), inp["x"].double(), inp["dy"].double())
    y, dx = run["fwd+bwd"]()
    y = y.detach()
    return {"fwd": y, "fwd+bwd": (y, dx)}


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------
def run_case(c: Case, impls: list[str], device: torch.device, timer: common.Timer,
             copy_bps: float, report: common.Report) -> list[dict[str, Any]]:
    inp = make_inputs(c, device)
    bm = byte_model(c)
    ref = reference(c, inp)

    def prepare(impl):
        run = runners(make_impl(impl, c, device), inp["x"], inp["dy"])
        errs = {}
        for mode in MODES:
            got = run[mode]()
            errs[mode] = common.max_rel_err(got, ref[mode])
            del got
        return run, errs

    fields = {"dtype": common.dtype_name(c.dtype), "rows": c.rows, "n": c.n, "padded_n": c.m,
              "scale": c.scale, "tier": c.tier}
    per_mode, errs = common.time_impls(
        c.name, impls, prepare, lambda impl, mode, t, err: common.bandwidth_record(
            c.name, fields, impl, mode, bm[mode], t, copy_bps, err[mode], TOL[c.dtype]),
        timer=timer, device=device, report=report, modes=MODES)
    rows_out = [common.peer_columns(
        {"dtype": common.dtype_name(c.dtype), "rows": c.rows, "n": c.n, "mode": mode, "MB": bm[mode] / 1e6},
        per_mode[mode], impls=IMPLS, peers=PEERS, nbytes=bm[mode], copy_bps=copy_bps,
        errs={k: e[mode] for k, e in errs.items()}, tol=TOL[c.dtype]) for mode in MODES]
    del inp, ref
    common.release(device)
    return rows_out


COLUMNS = [
    ("dtype", "dtype", ""), ("rows", "rows", ""), ("n", "n", ""), ("mode", "mode", ""),
    ("MB", "MB", ".0f"), ("mmm_us", "mmm us", ".1f"), ("eager_us", "eager us", ".1f"),
    ("compile_us", "compile us", ".1f"), ("dense_us", "dense us", ".1f"),
    ("mmm_GBps", "mmm GB/s", ".0f"), ("mmm_pct", "mmm %BW", ".0f"),
    ("best_peer", "best peer", ""), ("speedup", "speed-up", ".2f"),
    ("mmm_err", "mmm err", ".1e"), ("peer_err", "peer err", ".1e"), ("check", "check", ""),
]


def main(argv: list[str] | None = None) -> int:
    parser = common.make_parser(__doc__.split("\n")[0], IMPLS)
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    device = common.resolve_device(args)
    impls = common.selected_impls(args, IMPLS)
    compile_everywhere = bool(args.impls) and "compile" in impls
    common.require_mmm(impls, 'hadamard_transform')
    cases, env, copy_bw, report = common.start(
        "hadamard_transform", args, device, impls, build_cases(args.device, args.quick), {
        "byte_model": "fwd 2*rows*n*s (read x, write y); fwd+bwd 4*rows*n*s (+ read dy, write dx)",
        "scale": "1/sqrt(next power of two >= n)",
        "compile": ("every case" if compile_everywhere else
                    "only cases marked compile_peer (CUDA bf16 n 1024, 16384; CPU fp32 n 1024)"),
        "dense": f"x @ (scale*H)[:n,:n] in x's dtype, only n <= {DENSE_MAX_N[device.type]}",
        "eager": "log2(m) steps of view + stack(a+b, a-b) in x's dtype",
        "reference": "fwht_eager in float64; err = max|a-ref| / max|ref| over y (and dx)",
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    })
    print(f"{len(cases)} cases x {len(impls)} impls x {len(MODES)} modes", flush=True)

    timer = common.Timer(device, quick=args.quick, reps=args.reps)

    def run_one(c: Case):
        case_impls = [i for i in impls
                      if (i != "compile" or compile_everywhere or c.compile_peer)
                      and (i != "dense" or c.n <= DENSE_MAX_N[device.type])]
        return run_case(c, case_impls, device, timer, copy_bw["bytes_per_s"], report)

    return common.run_cases(
        cases, run_one, args=args, report=report, timer=timer, env=env, copy_bw=copy_bw,
        columns=COLUMNS,
        footer=("scale = 1/sqrt(m), m = next power of two >= n; MB: bytes the op must move (read "
                "x, write y; + read dy, write dx); speed-up = best peer (eager, compile, dense) "
                "time / mmm time; %BW is relative to the measured copy bandwidth; err = "
                "max|a - ref| / max|ref| against a float64 FWHT, peer err = worst peer's."),
        t_start=t_start)


if __name__ == "__main__":
    sys.exit(main())
