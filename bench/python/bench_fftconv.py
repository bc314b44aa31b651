"""Benchmark mmm.fftconv against PyTorch.

The op, u (B, H, N), k (H, N), bias (H,), gates (B, H, N):
    y = postgate * (irfft(rfft(pregate * u, L) * rfft(k, L))[..., :N] + bias[:, None] * u),
L = the next power of two >= 2N (Hyena's gated long convolution). Backward: du, dk, dbias,
dpregate, dpostgate.

Implementations ("impls")
    mmm      mmm.fftconv(u, k, bias, pregate, postgate).
    torchfft the torch.fft reference a user would write: pad + rfft (n=L), multiply, irfft, slice,
             then the skip and the gates, in fp32 (inputs upcast: torch.fft has no bf16).
    compile  torch.compile (default mode, dynamic=False) of torchfft; compilation is untimed. Only
             on the cases marked "compile peer" unless named in --impls.
    conv1d   F.conv1d, depthwise (groups=H), causal (left padding N-1, flipped kernel), in the
             input dtype, plus the skip and the gates: O(N^2) work, so only for N <= 1024.
    Peers (for "best peer" and "speed-up"): torchfft, compile, conv1d.

Modes
    fwd      forward only, under torch.no_grad().
    fwd+bwd  forward, then torch.autograd.grad of y with respect to u, k, bias and the gates given
             a random upstream gradient dy.

Byte model (the fewest bytes the op must move; GB/s = bytes / median time, decimal GB)
    s = bytes per element, E = B * H * N, G = number of gates (0 or 2), K = H * N * s_k.
    fwd      read u and the gates, write y                          (2 + G) * E * s + K
    fwd+bwd  fwd + read dy, u, gates; write du, dgates              (2 + G) * E * s + K
                                                                    + (3 + 2G) * E * s + 2K
    Everything else (the padded FFT buffers of torchfft, k's spectrum) is not counted, so it shows
    up as lower GB/s. "%BW" is GB/s over the device's measured copy bandwidth.

Cases
    CUDA: H = 768, B chosen so that u is ~64 MB (16 MB with --quick). Tier 0: bf16 gated at N in
    {256, 1024, 4096, 16384}; tier 1: bf16 ungated at 4096, fp16 gated at 4096 and 16384, fp32
    gated at 4096, bf16 gated at 1000 and 32768 (the latter beyond one CTA's shared memory: the
    multi-kernel path). --quick: tier 0 only.
    CPU: B = 2, H = 64, fp32 gated at N in {256, 1024, 4096} (--quick: 256, 1024).

Checks: before timing, y and the gradients of mmm (and of the peers) are compared with the
torch.fft reference in float64 on the same inputs (one batch element): err = max |a - ref| /
max |ref| over y, du, dk, dbias, dgates. mmm's must be <= 1e-2 (bf16), 2e-3 (fp16), 1e-4 (fp32).
A failed check is reported in the table and JSON and makes the script exit 1.

Plot: on CUDA (or with --plot PATH) a PNG of GB/s against N, one panel per (mode, dtype), one line
per impl, next to --out (PATH.png); skipped when matplotlib is not importable.

Examples
    python bench/python/bench_fftconv.py --device cuda --out results.json
    python bench/python/bench_fftconv.py --device cpu --quick
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

IMPLS = ("mmm", "torchfft", "compile", "conv1d")
PEERS = ("torchfft", "compile", "conv1d")
MODES = ("fwd", "fwd+bwd")
CONV1D_MAX_N = 1024
TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}


@dataclass(frozen=True)
class Case:
    dtype: torch.dtype
    b: int
    h: int
    n: int
    gated: bool = True
    tier: int = 0
    compile_peer: bool = False

    @property
    def name(self) -> str:
        return f"{common.dtype_name(self.dtype)}/{self.b}x{self.h}x{self.n}{'' if self.gated else '/nogate'}"


def byte_model(c: Case) -> dict[str, int]:
    s = torch.tensor([], dtype=c.dtype).element_size()
    e, g, kb = c.b * c.h * c.n, 2 if c.gated else 0, c.h * c.n * s
    fwd = (2 + g) * e * s + kb
    return {"fwd": fwd, "fwd+bwd": fwd + (3 + 2 * g) * e * s + 2 * kb}


def build_cases(device: str, quick: bool) -> list[Case]:
    bf, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    if device == "cuda":
        h, nbytes = 768, (16 if quick else 64) << 20

        def mk(dt, n, tier=0, gated=True, cp=False):
            s = torch.tensor([], dtype=dt).element_size()
            return Case(dt, max(1, nbytes // (h * n * s)), h, n, gated, tier, cp)
        cases = [mk(bf, n, 0, cp=n in (1024, 16384)) for n in (256, 1024, 4096, 16384)]
        if not quick:
            cases += [mk(bf, 4096, 1, gated=False), mk(fp16, 4096, 1), mk(fp16, 16384, 1), mk(fp32, 4096, 1),
                      mk(bf, 1000, 1), mk(bf, 32768, 1)]
    else:
        cases = [Case(fp32, 2, 64, n, True, 0, n == 1024 and not quick) for n in (256, 1024, 4096)]
        if quick:
            cases = cases[:2]
    order = {c: i for i, c in enumerate(cases)}
    return sorted(cases, key=lambda c: (c.tier, order[c]))


# ------------------------------------------------------------------------------------------------
# Implementations
# ------------------------------------------------------------------------------------------------
def torchfft(u, k, bias, pre, post):
    """The torch.fft reference: pad, rfft, multiply, irfft, slice (fp32 at least)."""
    n = u.shape[-1]
    L = 1 << (2 * n - 1).bit_length()
    dt = torch.promote_types(u.dtype, torch.float32)
    uf = u.to(dt)
    v = uf * pre.to(dt) if pre is not None else uf
    y = torch.fft.irfft(torch.fft.rfft(v, n=L) * torch.fft.rfft(k.to(dt), n=L), n=L)[..., :n]
    y = y + bias.to(dt)[:, None] * uf
    if post is not None:
        y = y * post.to(dt)
    return y.to(u.dtype)


def conv1d(u, k, bias, pre, post):
    """Depthwise causal F.conv1d in the input dtype: y[t] = sum_{s<=t} k[t-s] v[s]."""
    n, h = u.shape[-1], u.shape[1]
    v = u * pre if pre is not None else u
    y = F.conv1d(F.pad(v, (n - 1, 0)), k.flip(-1).unsqueeze(1), groups=h)
    y = y + bias[:, None] * u
    return y * post if post is not None else y


def make_impl(impl: str) -> Callable:
    if impl == "mmm":
        import mmm
        return mmm.fftconv
    if impl == "torchfft":
        return torchfft
    if impl == "compile":
        torch._dynamo.reset()
        return torch.compile(torchfft, dynamic=False)
    if impl == "conv1d":
        return conv1d
    raise ValueError(impl)


def make_inputs(c: Case, device: torch.device, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator(device=device)
    g.manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=device) * scale).to(c.dtype)
    shape = (c.b, c.h, c.n)
    return {"u": randn(*shape), "k": randn(c.h, c.n, scale=c.n ** -0.5), "bias": randn(c.h),
            "pre": randn(*shape) if c.gated else None, "post": randn(*shape) if c.gated else None,
            "dy": randn(*shape)}


def runners(fn: Callable, inp: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    return common.runners(fn, [inp[k] for k in ("u", "k", "bias", "pre", "post")], inp["dy"])


def reference(c: Case, inp: dict[str, Any]) -> dict[str, Any]:
    """torchfft in float64 on the first batch element (the check; gradients of k and bias then
    cover that element only, as the implementations' do on the same slice)."""
    sl = {k: (v[:1].double() if v is not None and v.dim() == 3 else v.double() if v is not None else None)
          for k, v in inp.items()}
    y, *grads = runners(torchfft, sl)["fwd+bwd"]()
    return {"fwd": y.detach(), "fwd+bwd": (y.detach(), *grads)}


def check_outputs(fn: Callable, inp: dict[str, Any]) -> dict[str, Any]:
    sl = {k: (v[:1] if v is not None and v.dim() == 3 else v) for k, v in inp.items()}
    run = runners(fn, sl)
    return {"fwd": run["fwd"](), "fwd+bwd": run["fwd+bwd"]()}


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------
def run_case(c: Case, impls: list[str], device: torch.device, timer: common.Timer, copy_bps: float,
             report: common.Report) -> list[dict[str, Any]]:
    inp = make_inputs(c, device)
    bm = byte_model(c)
    ref = reference(c, inp)

    def prepare(impl):
        fn = make_impl(impl)
        got = check_outputs(fn, inp)
        errs = {m: common.max_rel_err(got[m], ref[m]) for m in MODES}
        del got
        return runners(fn, inp), errs

    fields = {"dtype": common.dtype_name(c.dtype), "B": c.b, "H": c.h, "N": c.n, "gated": c.gated, "tier": c.tier}
    per_mode, errs = common.time_impls(
        c.name, impls, prepare, lambda impl, mode, t, err: common.bandwidth_record(
            c.name, fields, impl, mode, bm[mode], t, copy_bps, err[mode], TOL[c.dtype]),
        timer=timer, device=device, report=report, modes=MODES)
    rows_out = [common.peer_columns(
        {"dtype": common.dtype_name(c.dtype), "B": c.b, "H": c.h, "N": c.n, "gates": "y" if c.gated else "n",
         "mode": mode, "MB": bm[mode] / 1e6}, per_mode[mode], impls=IMPLS, peers=PEERS, nbytes=bm[mode],
        copy_bps=copy_bps, errs={k: e[mode] for k, e in errs.items()}, tol=TOL[c.dtype]) for mode in MODES]
    del inp, ref
    common.release(device)
    return rows_out


COLUMNS = [
    ("dtype", "dtype", ""), ("B", "B", ""), ("H", "H", ""), ("N", "N", ""), ("gates", "gates", ""),
    ("mode", "mode", ""), ("MB", "MB", ".0f"), ("mmm_us", "mmm us", ".1f"), ("torchfft_us", "torchfft us", ".1f"),
    ("compile_us", "compile us", ".1f"), ("conv1d_us", "conv1d us", ".1f"), ("mmm_GBps", "mmm GB/s", ".0f"),
    ("mmm_pct", "mmm %BW", ".0f"), ("best_peer", "best peer", ""), ("speedup", "speed-up", ".2f"),
    ("mmm_err", "mmm err", ".1e"), ("peer_err", "peer err", ".1e"), ("check", "check", ""),
]


def plot(report: common.Report, impls: list[str], path: Path) -> None:
    """GB/s (byte model) against N, one panel per (mode, dtype), gated cases only."""
    dts = sorted({r["dtype"] for r in report.records if r.get("status") == "ok" and r.get("gated")})
    panels = [(f"{mode}, {dt}", lambda r, mode=mode, dt=dt: r.get("gated") and r["mode"] == mode and r["dtype"] == dt)
              for mode in MODES for dt in dts]
    common.plot_panels(report, impls, path, panels, x="N", y="GBps", xlabel="N", ylabel="GB/s (byte model)",
                       ncols=max(1, len(dts)), copy_line=True, panel_size=(4.5, 3.2))


def main(argv: list[str] | None = None) -> int:
    parser = common.make_parser(__doc__.split("\n")[0], IMPLS)
    common.add_plot_arg(parser, "GB/s", "bench_fftconv.png")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    device = common.resolve_device(args)
    impls = common.selected_impls(args, IMPLS)
    compile_everywhere = bool(args.impls) and "compile" in impls
    common.require_mmm(impls, "fftconv")
    cases, env, copy_bw, report = common.start("fftconv", args, device, impls, build_cases(args.device, args.quick), {
        "byte_model": "fwd (2+G)*E*s + K; fwd+bwd fwd + (3+2G)*E*s + 2K (E = B*H*N, G gates, K = H*N*s)",
        "torchfft": "pad + rfft(n=L) * rfft(k, n=L), irfft, slice, + bias*u, gates; fp32 math",
        "conv1d": f"depthwise causal F.conv1d in the input dtype, only N <= {CONV1D_MAX_N}",
        "compile": "every case" if compile_everywhere else "only cases marked compile_peer",
        "reference": "torchfft in float64 on batch element 0; err = max|a-ref| / max|ref| over y and grads",
    })
    print(f"{len(cases)} cases x {len(impls)} impls x {len(MODES)} modes", flush=True)
    timer = common.Timer(device, quick=args.quick, reps=args.reps)

    def run_one(c: Case):
        case_impls = [i for i in impls if (i != "compile" or compile_everywhere or c.compile_peer)
                      and (i != "conv1d" or c.n <= CONV1D_MAX_N)]
        return run_case(c, case_impls, device, timer, copy_bw["bytes_per_s"], report)

    rc = common.run_cases(
        cases, run_one, args=args, report=report, timer=timer, env=env, copy_bw=copy_bw, columns=COLUMNS,
        footer=("MB: bytes the op must move (docstring); speed-up = best peer (torchfft, compile, conv1d) time / "
                "mmm time; %BW relative to the measured copy bandwidth; err = max|a - ref| / max|ref| against "
                "float64 torch.fft on batch element 0, peer err = worst peer's."),
        t_start=t_start)
    if args.plot is not None or device.type == "cuda":
        path = common.plot_path(args, "bench_fftconv.png")
        plot(report, impls, path)
    return rc


if __name__ == "__main__":
    sys.exit(main())
