"""Benchmark mmm.fused_attention against torch's scaled_dot_product_attention.

The op: out = softmax(q·kᵀ·scale + mask) · v for q, k, v of shape (B, H, S, D) (causal: the
lower-triangular mask; Sq = Sk here, so bottom-right and top-left alignment agree), scale =
1/sqrt(D). Inputs are (B, S, H, D) tensors viewed with .transpose(1, 2), the layout a model's
qkv projection produces; every implementation reads them as given.

Implementations ("impls")
    mmm              mmm.fused_attention(q, k, v, causal=...): torch's default (non-deterministic
                     algorithms allowed), so on CUDA the backward adds dq with atomics at head dims
                     up to 128, as FlashAttention-2 does.
    mmm_det          CUDA: the same with deterministic=True (bitwise reproducible backward: no
                     atomics, S and dP computed twice). Not a peer; it shows what determinism costs.
    sdpa             CPU: F.scaled_dot_product_attention with torch's default CPU backend.
    sdpa_flash       CUDA: SDPA with exactly one backend selected through
    sdpa_efficient     torch.nn.attention.sdpa_kernel(SDPBackend.X): FLASH_ATTENTION
    sdpa_cudnn         (FlashAttention-2), EFFICIENT_ATTENTION (xformers' memory-efficient kernel),
    sdpa_math          CUDNN_ATTENTION, MATH (the unfused composite; only up to seqlen 4096, its
                       S x S scores do not fit beyond). A backend that cannot run a case (not
                       built, not supported on this GPU or for these shapes) is recorded as an
                       error for that case and the sweep goes on.
    triton           CUDA, when `import triton` works: the compact FlashAttention-2 forward and
                     backward of triton_attention.py (written for this benchmark, not Triton's
                     tutorial kernel). It must pass the same check as mmm (below) or it is
                     recorded as an error for that case and not timed.
    Peers (for "best peer" and "speed-up"): every sdpa* impl and triton.

Modes
    fwd      forward only, under torch.no_grad().
    bwd      torch.autograd.grad of (q, k, v) given a random upstream gradient, on a graph built
             once outside the timed region (retain_graph=True): the backward kernels alone.
    fwd+bwd  forward, then that backward.

FLOP model (FlashAttention's benchmarks): fwd = 4·B·H·S·S·D, halved when causal; bwd = 2.5·fwd;
fwd+bwd = 3.5·fwd. TFLOP/s = FLOPs / median time. "%peak" (CUDA) is mmm's TFLOP/s over the
GPU's dense fp16/bf16 tensor-core peak from the vendor's data sheet (PEAK_TFLOPS below), when
the GPU is listed.

Cases
    CUDA: bf16, 16384 tokens per batch (B = 16384 / S), hidden size 2048 (H = 2048 / D), S in
    {512, 1k, 2k, 4k, 8k, 16k}, D in {128, 64} (in that order), causal off and on. Tier 1: fp16
    at D = 128.
    --quick: bf16, D = 128, S in {1k, 4k}, causal off and on.
    CPU: fp32, 4096 tokens per batch, hidden size 256 (H = 4 at D = 64, 2 at D = 128), S in
    {512, 1k, 2k, 4k}, D in {64, 128}, causal off and on; then bf16 at D = 64.
    --quick: fp32, D = 64, S in {512, 2k}, causal off and on.

Checks: before timing, mmm and every peer run one batch element and the first two heads of the
case, forward and backward, and are compared with SDPA on those inputs upcast (fp64 for fp32
cases on the CPU, fp32 otherwise; the default backend): err = max |a - ref| / max |ref| over out,
dq, dk and dv. mmm's must be <= 2e-2 (bf16), 5e-3 (fp16), 1e-4 (fp32). A failed check is
reported in the table and JSON and makes the script exit 1 (after writing the results). The
Triton peer must pass the same bound or it is not timed (an error for that case).

Plot: on CUDA (or with --plot PATH) a PNG of TFLOP/s against sequence length, one panel per
(mode, D, causal), one line per impl, written next to --out (PATH.png) or to --plot; skipped
when matplotlib is not importable.

Examples
    python bench/python/bench_attention.py --device cuda --out results.json
    python bench/python/bench_attention.py --device cpu --quick
    python bench/python/bench_attention.py --device cuda --impls mmm,sdpa_flash --filter causal
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CUDA_BACKENDS = {"sdpa_flash": "FLASH_ATTENTION", "sdpa_efficient": "EFFICIENT_ATTENTION",
                 "sdpa_cudnn": "CUDNN_ATTENTION", "sdpa_math": "MATH"}
IMPLS = ("mmm", "mmm_det", "sdpa", *CUDA_BACKENDS, "triton")
PEERS = ("sdpa", *CUDA_BACKENDS, "triton")
MODES = ("fwd", "bwd", "fwd+bwd")
MATH_MAX_SEQLEN = 4096

# Dense fp16/bf16 tensor-core peaks (no sparsity), TFLOP/s, from NVIDIA's data sheets; matched
# against torch.cuda.get_device_name in this order.
PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
               ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0)]


@dataclass(frozen=True)
class Case:
    dtype: torch.dtype
    batch: int
    heads: int
    seqlen: int
    head_dim: int
    causal: bool
    tier: int = 0

    @property
    def config(self) -> str:
        return f"d{self.head_dim}/{'causal' if self.causal else 'full'}"

    @property
    def name(self) -> str:
        return f"{self.config}/{common.dtype_name(self.dtype)}/{self.batch}x{self.heads}x{self.seqlen}"


def flop_model(c: Case) -> dict[str, float]:
    fwd = 4.0 * c.batch * c.heads * c.seqlen * c.seqlen * c.head_dim / (2 if c.causal else 1)
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}


def peak_tflops(env: dict[str, Any]) -> float | None:
    name = env.get("device_name", "") if env.get("device_type") == "cuda" else ""
    for key, peak in PEAK_TFLOPS:
        if key in name:
            return peak
    return None


# ------------------------------------------------------------------------------------------------
# Cases
# ------------------------------------------------------------------------------------------------
def build_cases(device: str, quick: bool) -> list[Case]:
    cases: list[Case] = []

    def sweep(dtype, tokens, hidden, seqlens, dims, tier=0):
        for d in dims:
            for causal in (False, True):
                for s in seqlens:
                    cases.append(Case(dtype, max(1, tokens // s), hidden // d, s, d, causal, tier))

    if device == "cuda":
        if quick:
            sweep(torch.bfloat16, 16384, 2048, [1024, 4096], [128])
        else:
            seqlens = [512, 1024, 2048, 4096, 8192, 16384]
            # D = 128 first: it is the head dim the targets quote, and a --budget run (the GPU
            # check's) gets to the cases it starts with.
            sweep(torch.bfloat16, 16384, 2048, seqlens, [128, 64])
            sweep(torch.float16, 16384, 2048, seqlens, [128], tier=1)
    else:
        if quick:
            sweep(torch.float32, 4096, 256, [512, 2048], [64])
        else:
            seqlens = [512, 1024, 2048, 4096]
            sweep(torch.float32, 4096, 256, seqlens, [64, 128])
            sweep(torch.bfloat16, 4096, 256, seqlens, [64], tier=1)
    return sorted(cases, key=lambda c: c.tier)


# ------------------------------------------------------------------------------------------------
# Implementations
# ------------------------------------------------------------------------------------------------
def make_impl(impl: str, c: Case) -> Callable[..., torch.Tensor]:
    if impl == "mmm":
        import mmm

        return lambda q, k, v: mmm.fused_attention(q, k, v, causal=c.causal)
    if impl == "mmm_det":
        import mmm

        return lambda q, k, v: mmm.fused_attention(q, k, v, causal=c.causal, deterministic=True)
    if impl == "sdpa":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=c.causal)
    if impl == "triton":
        from triton_attention import triton_attention

        return lambda q, k, v: triton_attention(q, k, v, causal=c.causal)
    if impl in CUDA_BACKENDS:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = getattr(SDPBackend, CUDA_BACKENDS[impl])

        def run(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=c.causal)

        return run
    raise ValueError(impl)


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - not installed, or broken: no Triton peer
        return False
    return True


def applicable(impl: str, device: torch.device, c: Case | None = None) -> bool:
    if impl == "sdpa_math" and c is not None and c.seqlen > MATH_MAX_SEQLEN:
        return False  # its S x S scores (and their gradient) do not fit
    if impl == "triton":
        return device.type == "cuda" and triton_available()
    if impl == "mmm_det":  # the CPU backward has one mode
        return device.type == "cuda"
    return impl == "mmm" or (impl == "sdpa") == (device.type == "cpu")


def make_inputs(c: Case, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def bshd():  # (B, S, H, D) memory viewed as (B, H, S, D)
        t = torch.randn(c.batch, c.seqlen, c.heads, c.head_dim, generator=gen)
        return t.to(device, c.dtype).transpose(1, 2)

    return {"q": bshd(), "k": bshd(), "v": bshd(), "dout": bshd()}


def runners(fn: Callable[..., torch.Tensor], inp: dict[str, torch.Tensor]) -> dict[str, Callable[[], Any]]:
    q, k, v, dout = inp["q"], inp["k"], inp["v"], inp["dout"]
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    graph: dict[str, torch.Tensor] = {}

    def run_fwd():
        with torch.no_grad():
            return fn(q, k, v)

    def run_bwd():
        if "out" not in graph:  # built once, outside the timed runs (the first call is untimed)
            graph["out"] = fn(*leaves)
        return torch.autograd.grad(graph["out"], leaves, dout, retain_graph=True)

    def run_fwdbwd():
        out = fn(*leaves)
        return (out, *torch.autograd.grad(out, leaves, dout))

    return {"fwd": run_fwd, "bwd": run_bwd, "fwd+bwd": run_fwdbwd}


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------
def tolerance(c: Case) -> float:
    return {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}[c.dtype]


def _slice(inp: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: t[:1, :2] for k, t in inp.items()}


def _fwd_bwd(fn, inp):
    return runners(fn, inp)["fwd+bwd"]()


def reference(c: Case, inp: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """SDPA (default backend) on one batch element, two heads, upcast: (out, dq, dk, dv)."""
    rdt = torch.float64 if c.dtype == torch.float32 and inp["q"].device.type == "cpu" else torch.float32
    small = {k: t.to(rdt) for k, t in _slice(inp).items()}
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # no TF32 in the reference
    try:
        return [t.detach() for t in _fwd_bwd(make_impl("sdpa", c), small)]
    finally:
        torch.set_float32_matmul_precision(prev)


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------
def run_case(c: Case, impls: list[str], device: torch.device, timer: common.Timer,
             report: common.Report, peak: float | None) -> list[dict[str, Any]]:
    inp = make_inputs(c, device)
    fl = flop_model(c)
    ref = reference(c, inp)

    def prepare(impl):
        if device.type == "cuda":
            torch.cuda.empty_cache()  # return the previous impl's cached blocks before this one allocates
        fn = make_impl(impl, c)
        err = common.max_rel_err(_fwd_bwd(fn, _slice(inp)), ref, torch.float64)
        if impl == "triton" and not err <= tolerance(c):
            raise RuntimeError(f"the Triton peer failed its check against SDPA: rel err {err:.1e} > "
                               f"{tolerance(c):.0e}; not timed")
        return runners(fn, inp), err

    def record(impl, mode, t, err):
        rec = {"case": c.name, **{k: (common.dtype_name(v) if isinstance(v, torch.dtype) else v)
                                  for k, v in asdict(c).items()},
               "impl": impl, "mode": mode, "flops": fl[mode], **t.summary(),
               "TFLOPs": fl[mode] / t.median_s / 1e12, "status": "ok",
               "check_rel_err": err, "check_tol": tolerance(c)}
        if peak:
            rec["pct_peak"] = 100.0 * rec["TFLOPs"] / peak
        return rec

    per_mode, errs = common.time_impls(c.name, impls, prepare, record, timer=timer, device=device,
                                       report=report, modes=MODES)
    # peer err covers timed impls only: drop the check error of one that failed while timed.
    errs = {k: e for k, e in errs.items() if per_mode[MODES[0]].get(k) is not None}
    rows = []
    for mode in MODES:
        ts = per_mode[mode]
        row: dict[str, Any] = {"config": c.config, "dtype": common.dtype_name(c.dtype), "B": c.batch, "H": c.heads,
                               "S": c.seqlen, "mode": mode, "GFLOP": fl[mode] / 1e9}
        for impl in IMPLS:
            t = ts.get(impl)
            row[f"{impl}_TF"] = fl[mode] / t.median_s / 1e12 if t else None
        m = ts.get("mmm")
        if m and peak:
            row["mmm_pct"] = 100.0 * fl[mode] / m.median_s / 1e12 / peak
        common.peer_check(row, ts, peers=PEERS, errs=errs, tol=tolerance(c))
        rows.append(row)
    del inp, ref
    common.release(device)
    return rows


def columns(impls: list[str]) -> list[tuple[str, str, str]]:
    cols = [("config", "config", ""), ("dtype", "dtype", ""), ("B", "B", ""), ("H", "H", ""), ("S", "S", ""),
            ("mode", "mode", ""), ("GFLOP", "GFLOP", ".1f")]
    cols += [(f"{i}_TF", f"{i} TF/s", ".3g") for i in impls]
    cols += [("mmm_pct", "mmm %peak", ".0f"), ("best_peer", "best peer", ""), ("speedup", "speed-up", ".2f"),
             ("mmm_err", "mmm err", ".1e"), ("peer_err", "peer err", ".1e"), ("check", "check", "")]
    return cols


def plot(report: common.Report, impls: list[str], path: Path) -> None:
    """TFLOP/s against sequence length, one panel per (mode, head dim, causal)."""
    configs = sorted({(r["head_dim"], r["causal"], r["dtype"]) for r in report.records if r.get("status") == "ok"})
    panels = [(f"{mode}, D={d}, {'causal' if causal else 'full'}, {dt}",
               lambda r, mode=mode, d=d, causal=causal, dt=dt: (r["mode"], r["head_dim"], r["causal"], r["dtype"])
               == (mode, d, causal, dt))
              for mode in MODES for (d, causal, dt) in configs]
    common.plot_panels(report, impls, path, panels, x="seqlen", y="TFLOPs", xlabel="sequence length",
                       ylabel="TFLOP/s", ncols=max(1, len(configs)), panel_size=(4, 3.2),
                       tick_label=lambda t: f"{t // 1024}k" if t >= 1024 else str(t))


def main(argv: list[str] | None = None) -> int:
    parser = common.make_parser(__doc__.split("\n")[0], IMPLS)
    common.add_plot_arg(parser, "TFLOP/s", "bench_attention.png")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    device = common.resolve_device(args)
    impls = [i for i in common.selected_impls(args, IMPLS) if applicable(i, device)]
    common.require_mmm(impls, 'fused_attention')
    cases, env, copy_bw, report = common.start(
        "attention", args, device, impls, build_cases(args.device, args.quick), {
        "flop_model": "fwd 4*B*H*S*S*D (halved when causal), bwd 2.5x fwd, fwd+bwd 3.5x fwd",
        "layout": "(B, S, H, D) tensors viewed as (B, H, S, D) with .transpose(1, 2)",
    })
    peak = peak_tflops(env)
    report.run["notes"]["peak_tflops"] = peak
    print(f"{len(cases)} cases x {len(impls)} impls x {len(MODES)} modes", flush=True)

    timer = common.Timer(device, quick=args.quick, reps=args.reps)
    rc = common.run_cases(
        cases, lambda c: run_case(c, [i for i in impls if applicable(i, device, c)], device, timer, report, peak),
        args=args, report=report,
        timer=timer, env=env, copy_bw=copy_bw, columns=columns(impls),
        footer=("TF/s = FLOP model (docstring) / median time; speed-up = best peer time / mmm time; "
                "%peak = mmm TF/s / the GPU's dense fp16/bf16 peak; err = max |a - ref| / max |ref| over "
                "out, dq, dk, dv on one batch element and two heads."),
        t_start=t_start)
    if args.plot is not None or device.type == "cuda":
        path = common.plot_path(args, "bench_attention.png")
        plot(report, impls, path)
    return rc


if __name__ == "__main__":
    sys.exit(main())
