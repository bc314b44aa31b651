"""Benchmark mmm.fused_add_norm against eager PyTorch and torch.compile.

The op, for x of shape (rows, N):
    h   = dropout(x, p) + residual          (h is fp32 when residual_in_fp32)
    y   = LayerNorm(h) * weight + bias      (or RMSNorm: h * rsqrt(mean(h^2) + eps) * weight + bias)
    out = act(y)                            (none | gelu | gelu_tanh)
    returns out, or (out, h) when prenorm (h is "residual_out")

Implementations ("impls")
    eager    the same expression in eager PyTorch: F.dropout, +, F.layer_norm or F.rms_norm
             (+ bias), F.gelu.
    compile  torch.compile (default mode, dynamic=False) of the eager expression; compilation is
             in the untimed first call; torch._dynamo.reset() before every case.
    mmm      mmm.fused_add_norm.

Modes
    fwd      forward only, under torch.no_grad() (inference).
    fwd+bwd  forward, then torch.autograd.grad of (out[, residual_out]) with respect to
             x, residual, weight[, bias] given random upstream gradients (no .grad accumulation).

Byte model (the fewest bytes the op must move; GB/s = bytes / median time, decimal GB).
    E = rows * N elements; sx = bytes per element of x (and of out, dout, dx);
    sh = bytes per element of h (residual, residual_out, dresidual_out, dresidual) = 4 with
    residual_in_fp32 else sx; sw = bytes per element of weight/bias (= sx here);
    stats = rows * 4 bytes per saved statistic (rstd; + mean for LayerNorm).
    fwd      read  x (E*sx), residual (E*sh), weight (N*sw), bias (N*sw)
             write out (E*sx), residual_out (E*sh, prenorm only)
             (no mask is stored: mmm regenerates dropout from its seed; stats are not written
             in inference)
    bwd      read  dout (E*sx), dresidual_out (E*sh, prenorm only), h (E*sh), weight, bias,
                   stats
             write dx (E*sx), dresidual (E*sh, when there is a residual), dweight (N*sw),
                   dbias (N*sw)
    fwd+bwd  = fwd + stats written by the forward + bwd
    Absent operands (no residual, no bias for RMSNorm) count zero. Extra traffic an
    implementation makes (eager's intermediates and dropout mask, a multi-pass reduction of
    dweight) is not in the model, so it shows up as lower GB/s.
    "%BW" is GB/s over the device's measured copy bandwidth (read+write bytes of a large copy).

Checks: before timing, the outputs and gradients of mmm and of eager are compared with a
reference, the eager expression on inputs upcast to fp32 (fp64 for fp32 cases): err =
max |a - ref| / max |ref| over every output and gradient ("mmm err", "eager err"). mmm's must be
<= 2e-2 (bf16), 5e-3 (fp16), 1e-4 (fp32); eager's is shown for scale (eager bf16 on CPU
accumulates dweight/dbias with errors of a few percent). Not done with dropout (the masks
differ). A failed check is reported in the table and the JSON, and makes the script exit with
status 1 (after writing the results).

Cases are ordered by priority; with --budget, cases not started in time are skipped and listed.

Examples
    python bench/python/bench_fused_add_norm.py --device cuda --out results.json
    python bench/python/bench_fused_add_norm.py --device cpu --quick
    python bench/python/bench_fused_add_norm.py --device cuda --impls eager,mmm --filter rms
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, asdict, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

IMPLS = ("eager", "compile", "mmm")
PEERS = ("eager", "compile")
MODES = ("fwd", "fwd+bwd")


@dataclass(frozen=True)
class Case:
    config: str
    rms: bool
    bias: bool
    residual: bool
    prenorm: bool
    activation: str
    dropout_p: float
    residual_in_fp32: bool
    dtype: torch.dtype
    rows: int
    n: int
    tier: int = 0
    eps: float = 1e-5

    @property
    def name(self) -> str:
        return f"{self.config}/{common.dtype_name(self.dtype)}/{self.rows}x{self.n}"

    def kwargs(self) -> dict[str, Any]:
        return dict(eps=self.eps, rms=self.rms, activation=self.activation,
                    dropout_p=self.dropout_p, prenorm=self.prenorm,
                    residual_in_fp32=self.residual_in_fp32)


# ------------------------------------------------------------------------------------------------
# Byte model (see the module docstring)
# ------------------------------------------------------------------------------------------------
def byte_model(c: Case) -> dict[str, int]:
    e, n = c.rows * c.n, c.n
    sx = torch.tensor([], dtype=c.dtype).element_size()
    sh = 4 if c.residual_in_fp32 else sx
    sw = sx
    nw = n * sw * (2 if c.bias else 1)                 # weight (+ bias)
    stats = c.rows * 4 * (1 if c.rms else 2)
    fwd = e * sx + (e * sh if c.residual else 0) + nw + e * sx + (e * sh if c.prenorm else 0)
    bwd = (e * sx + (e * sh if c.prenorm else 0) + e * sh + nw + stats
           + e * sx + (e * sh if c.residual else 0) + nw)
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + stats + bwd}


# ------------------------------------------------------------------------------------------------
# Cases
# ------------------------------------------------------------------------------------------------
CONFIGS = {
    # name: (rms, bias, residual, prenorm, activation, dropout_p)
    "ln_res_pre": (False, True, True, True, "none", 0.0),
    "rms_res_pre": (True, False, True, True, "none", 0.0),
    "ln_res_pre_gelu": (False, True, True, True, "gelu", 0.0),
    "ln_res_pre_drop0.1": (False, True, True, True, "none", 0.1),
}


def cuda_rows(n: int) -> int:
    # ~16k tokens; fewer rows for big N so that one tensor stays <= 2^28 elements (512 MB bf16).
    return min(16384, (1 << 28) // n)


def build_cases(device: str, quick: bool) -> list[Case]:
    specs: list[tuple[str, torch.dtype, list[int], Callable[[int], int]]] = []
    if device == "cuda":
        rows = cuda_rows
        if quick:
            specs = [("ln_res_pre", torch.bfloat16, [1024, 8192], 0),
                     ("rms_res_pre", torch.bfloat16, [1024, 8192], 0),
                     ("ln_res_pre_gelu", torch.bfloat16, [4096], 1)]
        else:
            all_n = [1024, 2048, 4096, 8192, 16384, 32768, 65536]
            core = {1024, 4096, 16384}
            specs = [("ln_res_pre", torch.bfloat16, all_n, core),
                     ("rms_res_pre", torch.bfloat16, all_n, core),
                     ("ln_res_pre_gelu", torch.bfloat16, [1024, 4096, 16384], 1),
                     ("ln_res_pre", torch.float16, [4096, 16384], 1),
                     ("ln_res_pre_drop0.1", torch.bfloat16, [4096], 1)]
    else:
        r = 512 if quick else 2048
        rows = lambda n: r  # noqa: E731
        if quick:
            specs = [("ln_res_pre", torch.float32, [1024, 4096], 0),
                     ("rms_res_pre", torch.float32, [1024], 0),
                     ("ln_res_pre", torch.bfloat16, [1024], 1)]
        else:
            specs = [("ln_res_pre", torch.float32, [1024, 4096], 0),
                     ("rms_res_pre", torch.float32, [1024, 4096], 0),
                     ("ln_res_pre_gelu", torch.float32, [1024], 1),
                     ("ln_res_pre", torch.bfloat16, [1024, 4096], 1),
                     ("rms_res_pre", torch.bfloat16, [1024], 1),
                     ("ln_res_pre_drop0.1", torch.float32, [1024], 1)]
    cases = []
    for config, dtype, ns, tier in specs:
        rms, bias, residual, prenorm, act, p = CONFIGS[config]
        for n in ns:
            t = (0 if n in tier else 2) if isinstance(tier, set) else tier
            cases.append(Case(config, rms, bias, residual, prenorm, act, p, False, dtype,
                              rows(n), n, t))
    order = {c: i for i, c in enumerate(cases)}
    return sorted(cases, key=lambda c: (c.tier, order[c]))


# ------------------------------------------------------------------------------------------------
# Implementations
# ------------------------------------------------------------------------------------------------
def eager_expr(c: Case) -> Callable[..., Any]:
    act = {"none": None, "gelu": lambda y: F.gelu(y),
           "gelu_tanh": lambda y: F.gelu(y, approximate="tanh")}[c.activation]
    has_rms_norm = hasattr(F, "rms_norm")

    def fn(x, weight, bias, residual):
        h = F.dropout(x, p=c.dropout_p, training=True) if c.dropout_p > 0 else x
        if c.residual_in_fp32:
            h = h.float()
        if residual is not None:
            h = h + residual
        hn, w, b = h, weight, bias
        if c.residual_in_fp32:
            w = weight.float()
            b = bias.float() if bias is not None else None
        if c.rms:
            if has_rms_norm:
                y = F.rms_norm(hn, (c.n,), w, c.eps)
            else:
                hf = hn.float()
                y = (hf * torch.rsqrt(hf.square().mean(-1, keepdim=True) + c.eps)).to(hn.dtype) * w
            if b is not None:
                y = y + b
        else:
            y = F.layer_norm(hn, (c.n,), w, b, c.eps)
        y = y.to(x.dtype)
        out = act(y) if act is not None else y
        return (out, h) if c.prenorm else out

    return fn


def make_impl(impl: str, c: Case) -> Callable[..., Any]:
    if impl == "eager":
        return eager_expr(c)
    if impl == "compile":
        torch._dynamo.reset()
        return torch.compile(eager_expr(c), dynamic=False)
    if impl == "mmm":
        import mmm
        kw = c.kwargs()

        def fn(x, weight, bias, residual):
            return mmm.fused_add_norm(x, weight, bias, residual, **kw)

        return fn
    raise ValueError(impl)


# ------------------------------------------------------------------------------------------------
# Inputs, runners, checks
# ------------------------------------------------------------------------------------------------
def make_inputs(c: Case, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor | None]:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    rdt = torch.float32 if c.residual_in_fp32 else c.dtype

    def randn(*shape, dtype=c.dtype, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, device=device, dtype=torch.float32) * scale
                + shift).to(dtype)

    inp = {
        "x": randn(c.rows, c.n),
        "weight": randn(c.n, scale=0.1, shift=1.0),
        "bias": randn(c.n, scale=0.1) if c.bias else None,
        "residual": randn(c.rows, c.n, dtype=rdt) if c.residual else None,
        "dout": randn(c.rows, c.n),
        "dres": randn(c.rows, c.n, dtype=rdt) if c.prenorm else None,
    }
    return inp


def runners(fn: Callable[..., Any], c: Case, inp: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    args = [inp["x"], inp["weight"], inp["bias"], inp["residual"]]

    def run_fwd():
        with torch.no_grad():
            return fn(*args)

    leaves = [t.detach().requires_grad_(True) if t is not None else None for t in args]
    grad_leaves = [t for t in leaves if t is not None]
    grads_out = [inp["dout"]] + ([inp["dres"]] if c.prenorm else [])

    def run_fwdbwd():
        outs = fn(*leaves)
        outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
        return torch.autograd.grad(outs, grad_leaves, grads_out)

    return {"fwd": run_fwd, "fwd+bwd": run_fwdbwd}


def tolerance(c: Case) -> float:
    """Bound on max |mmm - ref| / max |ref| over every output and gradient."""
    return {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}[c.dtype]


def reference(c: Case, inp: dict[str, Any]) -> dict[str, Any]:
    """The eager expression on inputs upcast to fp32 (fp64 for fp32 cases), both modes."""
    rdt = torch.float64 if c.dtype == torch.float32 else torch.float32
    rc = replace(c, dtype=rdt)
    rinp = {k: (v.to(rdt) if v is not None else None) for k, v in inp.items()}
    run = runners(eager_expr(rc), rc, rinp)
    return {m: run[m]() for m in MODES}


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------
def run_case(c: Case, impls: list[str], device: torch.device, timer: common.Timer,
             copy_bps: float, report: common.Report) -> list[dict[str, Any]]:
    inp = make_inputs(c, device)
    bm = byte_model(c)
    rows_out = []
    # Correctness: eager and mmm against an upcast reference (not with dropout: masks differ).
    ref = reference(c, inp) if c.dropout_p == 0 and "mmm" in impls else None

    def prepare(impl):
        run = runners(make_impl(impl, c), c, inp)
        if ref is None or impl not in ("eager", "mmm"):
            return run, None
        return run, {m: common.max_rel_err(run[m](), ref[m], torch.float32) for m in MODES}

    def record(impl, mode, t, err):
        rec = {"case": c.name, **{k: (common.dtype_name(v) if isinstance(v, torch.dtype) else v)
                                  for k, v in asdict(c).items()},
               "impl": impl, "mode": mode, "bytes": bm[mode], **t.summary(),
               "GBps": bm[mode] / t.median_s / 1e9,
               "pct_copy_bw": 100.0 * bm[mode] / t.median_s / copy_bps,
               "status": "ok"}
        if err is not None:
            rec["check_rel_err"] = err[mode]
            rec["check_tol"] = tolerance(c)
        return rec

    per_mode, errs = common.time_impls(c.name, impls, prepare, record, timer=timer, device=device,
                                       report=report, modes=MODES, keep_timed=True)
    for mode in MODES:
        ts = per_mode[mode]
        row: dict[str, Any] = {"config": c.config, "dtype": common.dtype_name(c.dtype), "rows": c.rows,
                               "N": c.n, "mode": mode, "MB": bm[mode] / 1e6}
        common.peer_columns(row, ts, impls=IMPLS, peers=PEERS, nbytes=bm[mode], copy_bps=copy_bps,
                            errs={k: e[mode] for k, e in errs.items()}, tol=tolerance(c))
        if row.get("best_peer"):
            row["peer_GBps"] = bm[mode] / ts[row["best_peer"]].median_s / 1e9
        rows_out.append(row)
    del inp, ref
    common.release(device)
    return rows_out


COLUMNS = [
    ("config", "config", ""), ("dtype", "dtype", ""), ("rows", "rows", ""), ("N", "N", ""),
    ("mode", "mode", ""), ("MB", "MB", ".1f"),
    ("eager_us", "eager us", ".1f"), ("compile_us", "compile us", ".1f"),
    ("mmm_us", "mmm us", ".1f"), ("mmm_GBps", "mmm GB/s", ".0f"), ("mmm_pct", "mmm %BW", ".0f"),
    ("best_peer", "best peer", ""), ("peer_GBps", "peer GB/s", ".0f"),
    ("speedup", "speed-up", ".2f"), ("mmm_err", "mmm err", ".1e"),
    ("peer_err", "peer err", ".1e"), ("check", "check", ""),
]


def main(argv: list[str] | None = None) -> int:
    parser = common.make_parser(__doc__.split("\n")[0], IMPLS)
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    device = common.resolve_device(args)
    impls = common.selected_impls(args, IMPLS)
    common.require_mmm(impls, 'fused_add_norm')
    cases, env, copy_bw, report = common.start(
        "fused_add_norm", args, device, impls, build_cases(args.device, args.quick), {
        "byte_model": "see bench/python/bench_fused_add_norm.py docstring",
        "rms_norm_eager": "F.rms_norm" if hasattr(F, "rms_norm") else "manual expression",
    })
    print(f"{len(cases)} cases x {len(impls)} impls x {len(MODES)} modes", flush=True)

    timer = common.Timer(device, quick=args.quick, reps=args.reps)
    return common.run_cases(
        cases, lambda c: run_case(c, impls, device, timer, copy_bw["bytes_per_s"], report),
        args=args, report=report, timer=timer, env=env, copy_bw=copy_bw, columns=COLUMNS,
        footer=("speed-up = best peer time / mmm time; GB/s and %BW use the byte model in the "
                "docstring; %BW is relative to the measured copy bandwidth."),
        t_start=t_start)


if __name__ == "__main__":
    sys.exit(main())
