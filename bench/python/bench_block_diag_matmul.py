"""Benchmark mmm.block_diag_matmul and mmm.monarch_matmul against PyTorch.

The ops, for x of shape (T, N) (T tokens):
    block_diag_matmul(x, w):   w (nb, n, k), N = nb*k  ->  y (T, nb*n),
                               y[:, b*n:(b+1)*n] = x[:, b*k:(b+1)*k] @ w[b].T
    monarch_matmul(x, w1, w2): w1 (k, q, p), N = k*p; w2 (l, s, r), l*r = k*q  ->  y (T, l*s),
                               HazyResearch/fly's blockdiag_butterfly_multiply: block_diag(x, w1),
                               permute '(r l) -> (l r)', block_diag(., w2), permute '(l s) -> (s l)'

Implementations ("impls")
  block_diag cases
    mmm      mmm.block_diag_matmul(x, w).
    bmm      what a user writes with torch.bmm: x.view(T, nb, k).transpose(0, 1) (a strided
             batch, no copy) bmm w.transpose(1, 2), then .transpose(0, 1).reshape(T, nb*n) (a
             copy): the GEMMs *including* the layout change.
    bmm_nt   the same GEMMs *excluding* the layout change: x already stored block-major as
             (nb, T, k), y left as (nb, T, n). Not a drop-in replacement (different layouts), so
             it is shown for reference and not counted as a peer.
    einsum   torch.einsum("tbk,bnk->tbn", x.view(T, nb, k), w).reshape(T, nb*n).
  monarch cases
    mmm      mmm.monarch_matmul(x, w1, w2): the fused forward where its plan takes the shape
             (the "path" column: "cluster of C" for the sm_90 kernel that keeps the weights on
             chip, "fused J=<chunk> bt=<tokens per CTA>" for the streaming one, else "2 GEMMs"; see
             mmm.ops.block_diag_matmul.monarch_forward_plan), backward always block GEMMs.
    mmm_unfused  the same with MMM_MONARCH_FUSED=0: the two block GEMMs with the intermediate in
             global memory; "fused x" = its time / mmm's (not a peer).
    einsum   the two-einsum reference (monarch_reference below; the test suite's definition).
    bmm      the same with two torch.bmm calls and the permutations as transposes/reshapes.
  both
    compile  torch.compile (default mode, dynamic=False) of the bmm expression (block_diag) or
             of the einsum reference (monarch). Compilation is in the untimed first call;
             torch._dynamo.reset() before every case. It costs ~10-20 s per case and mode, so by
             default it runs only on the cases marked "compile peer" (features 4096 on CUDA);
             name it in --impls to run it on every case (on the CPU too).
    dense    F.linear(x, W) with the dense (out, in) matrix of the same map (torch.block_diag(*w),
             or the Monarch matrix materialised): the dense layer the structured one replaces.
             Not a peer (it is a different, bigger computation): its own column "vs dense".
  Peers (for "best peer" and "speed-up"): bmm, einsum, compile. "vs 2bmm" = bmm time / mmm
  time: the issue's target for the fused Monarch forward is >= 2 (and >= 60 %BW) at 4096
  features; for block_diag_matmul, speed-up >= 1 over bmm everywhere.

Modes
  fwd      forward only, under torch.no_grad().
  fwd+bwd  forward, then torch.autograd.grad of y with respect to x and every weight, given a
           random upstream gradient (no .grad accumulation).

Cases (nb = number of blocks = sqrt(features); square blocks)
  CUDA (bf16, T = 16384 tokens): features 1024 (nb 32, blocks 32x32) and 4096 (nb 64, 64x64);
  for 8192, sqrt is 90.5, so both neighbouring divisors are run: nb 64 (128x128 blocks) and nb
  128 (64x64). Monarch: w1 = w2 = (nb, N/nb, N/nb), i.e. (32,32,32), (64,64,64), (64,128,128)
  and (128,64,64). Lower tiers: fp16 and fp32 (full fp32, no TF32) at features 4096.
  CPU (fp32, T = 1024): features 1024 (nb 32) [--quick: this only], 4096 (nb 64), and bf16 at
  1024.

FLOP model ("useful" FLOPs: only the block products, the structured op's own arithmetic)
  block_diag fwd = 2*T*nb*n*k;  monarch fwd = 2*T*(k*q*p + l*s*r);  dense fwd = 2*T*N*M
  fwd+bwd = 3 x fwd (forward, dx, dweight). TFLOP/s = FLOPs / median time. The table's TFLOP/s
  columns use the structured op's FLOPs for mmm and its peers (they all compute the same map).

Byte model (the fewest bytes the op must move; GB/s = bytes / median time, decimal GB)
  s = bytes per element. |x| = T*N, |y| = T*M (M = output features), |W| = weight elements
  (nb*n*k; k*q*p + l*s*r for Monarch; N*M for dense).
  fwd      read x, W; write y                          s * (|x| + |W| + |y|)
  bwd      read dy, x, W; write dx, dW                 s * (|y| + |x| + |W| + |x| + |W|)
  fwd+bwd  fwd + bwd (nothing else is saved: x and W are inputs)
  Monarch's intermediate (T, k*q) is not counted: an implementation that writes it to memory
  and reads it back shows that as lower GB/s. "%BW" is GB/s over the device's measured copy
  bandwidth (read + written bytes of a large copy).

Checks: before timing, the output and gradients of mmm (and of the peers, for scale) are
compared with the einsum reference evaluated on inputs upcast to fp32 (fp64 for fp32 inputs):
err = max |a - ref| / max |ref| over the output and every gradient. mmm's must be <= 2e-2 (bf16),
5e-3 (fp16), 1e-4 (fp32); a failed check is reported in the table and JSON and makes the script
exit 1 (after writing the results).

Cases are ordered by priority; with --budget, cases not started in time are skipped and listed.

Examples
    python bench/python/bench_block_diag_matmul.py --device cuda --out results.json
    python bench/python/bench_block_diag_matmul.py --device cpu --quick
    python bench/python/bench_block_diag_matmul.py --device cuda --impls mmm,bmm,dense --filter monarch
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

IMPLS = ("mmm", "mmm_unfused", "bmm", "bmm_nt", "einsum", "compile", "dense")
PEERS = ("bmm", "einsum", "compile")
CHECKED = ("mmm", "mmm_unfused", "bmm", "einsum", "compile")  # same inputs, layout and outputs as mmm
MODES = ("fwd", "fwd+bwd")


@dataclass(frozen=True)
class Case:
    op: str                   # "block_diag" | "monarch"
    dtype: torch.dtype
    tokens: int
    w_shapes: tuple           # ((nb, n, k),) or ((k, q, p), (l, s, r))
    tier: int = 0
    compile_peer: bool = False

    @property
    def in_features(self) -> int:
        a, _, c = self.w_shapes[0]
        return a * c

    @property
    def out_features(self) -> int:
        if self.op == "block_diag":
            nb, n, _ = self.w_shapes[0]
            return nb * n
        l, s, _ = self.w_shapes[1]
        return l * s

    @property
    def nblocks(self) -> int:
        return self.w_shapes[0][0]

    @property
    def blocks(self) -> str:
        return " ".join("x".join(map(str, s)) for s in self.w_shapes)

    @property
    def name(self) -> str:
        return (f"{self.op}/{common.dtype_name(self.dtype)}/{self.tokens}x{self.in_features}"
                f"/nb{self.nblocks}")

    @property
    def weight_elems(self) -> int:
        return sum(math.prod(s) for s in self.w_shapes)


# ------------------------------------------------------------------------------------------------
# FLOP and byte models (see the module docstring)
# ------------------------------------------------------------------------------------------------
def flop_model(c: Case, dense: bool = False) -> dict[str, int]:
    if dense:
        fwd = 2 * c.tokens * c.in_features * c.out_features
    else:
        fwd = 2 * c.tokens * c.weight_elems
    return {"fwd": fwd, "fwd+bwd": 3 * fwd}


def byte_model(c: Case, dense: bool = False) -> dict[str, int]:
    s = torch.tensor([], dtype=c.dtype).element_size()
    x, y = c.tokens * c.in_features, c.tokens * c.out_features
    w = c.in_features * c.out_features if dense else c.weight_elems
    fwd = s * (x + w + y)
    bwd = s * (y + x + w + x + w)
    return {"fwd": fwd, "fwd+bwd": fwd + bwd}


# ------------------------------------------------------------------------------------------------
# Cases
# ------------------------------------------------------------------------------------------------
def _square(op: str, dtype: torch.dtype, tokens: int, features: int, nb: int, tier: int,
            compile_peer: bool = False) -> Case:
    b = features // nb
    assert nb * b == features
    shapes = ((nb, b, b),) if op == "block_diag" else ((nb, b, b), (nb, b, b))
    return Case(op, dtype, tokens, shapes, tier, compile_peer)


def build_cases(device: str, quick: bool) -> list[Case]:
    cases: list[Case] = []
    if device == "cuda":
        t = 16384
        bf = torch.bfloat16
        if quick:
            specs = [(1024, 32, 0, False), (4096, 64, 0, False)]
            for op in ("block_diag", "monarch"):
                cases += [_square(op, bf, t, f, nb, tier, cp) for f, nb, tier, cp in specs]
        else:
            specs = [(1024, 32, 0, False), (4096, 64, 0, True), (8192, 64, 0, False),
                     (8192, 128, 1, False)]
            for op in ("block_diag", "monarch"):
                cases += [_square(op, bf, t, f, nb, tier, cp) for f, nb, tier, cp in specs]
                cases += [_square(op, torch.float16, t, 4096, 64, 2),
                          _square(op, torch.float32, t, 4096, 64, 2)]
    else:
        t = 1024
        f32 = torch.float32
        for op in ("block_diag", "monarch"):
            cases.append(_square(op, f32, t, 1024, 32, 0))
            if not quick:
                cases += [_square(op, f32, t, 4096, 64, 1),
                          _square(op, torch.bfloat16, t, 1024, 32, 2)]
    order = {c: i for i, c in enumerate(cases)}
    return sorted(cases, key=lambda c: (c.tier, order[c]))


# ------------------------------------------------------------------------------------------------
# Implementations
# ------------------------------------------------------------------------------------------------
def block_diag_einsum(x, w):
    nb, n, k = w.shape
    t = x.shape[0]
    return torch.einsum("tbk,bnk->tbn", x.view(t, nb, k), w).reshape(t, nb * n)


def block_diag_bmm(x, w):
    nb, n, k = w.shape
    t = x.shape[0]
    y = torch.bmm(x.view(t, nb, k).transpose(0, 1), w.transpose(1, 2))  # (nb, t, n)
    return y.transpose(0, 1).reshape(t, nb * n)


def block_diag_bmm_nt(xt, w):
    """xt: (nb, T, k) block-major; returns (nb, T, n)."""
    return torch.bmm(xt, w.transpose(1, 2))


def monarch_reference(x, w1, w2):
    """The test suite's definition of monarch_matmul (two einsums)."""
    k, q, p = w1.shape
    l, s, r = w2.shape
    lead = x.shape[:-1]
    out1 = torch.einsum("...kp,kqp->...kq", x.reshape(*lead, k, p), w1).reshape(*lead, k * q)
    z = out1.reshape(*lead, r, l).transpose(-1, -2).reshape(*lead, l * r)
    out2 = torch.einsum("...lr,lsr->...ls", z.reshape(*lead, l, r), w2)
    return out2.transpose(-1, -2).reshape(*lead, s * l)


def monarch_bmm(x, w1, w2):
    """monarch_reference with torch.bmm: stage 1 per block of w1, the '(r l) -> (l r)'
    permutation, stage 2 per block of w2, the '(l s) -> (s l)' permutation."""
    k, q, p = w1.shape
    l, s, r = w2.shape
    t = x.shape[0]
    u = torch.bmm(x.view(t, k, p).transpose(0, 1), w1.transpose(1, 2))  # (k, t, q)
    u = u.transpose(0, 1).reshape(t, r, l).permute(2, 0, 1)             # (l, t, r)
    v = torch.bmm(u, w2.transpose(1, 2))                                # (l, t, s)
    return v.permute(1, 2, 0).reshape(t, s * l)


def _unfused(fn):
    """fn with MMM_MONARCH_FUSED=0 while it runs (the op reads it at every call)."""
    def run(*args):
        old = os.environ.get("MMM_MONARCH_FUSED")
        os.environ["MMM_MONARCH_FUSED"] = "0"
        try:
            return fn(*args)
        finally:
            if old is None:
                del os.environ["MMM_MONARCH_FUSED"]
            else:
                os.environ["MMM_MONARCH_FUSED"] = old
    return run


def forward_path(c: Case, inp: dict[str, Any]) -> str:
    """Which forward mmm.monarch_matmul takes for this case."""
    if c.op != "monarch":
        return "1 GEMM"
    from mmm.ops.block_diag_matmul import monarch_forward_plan
    plan = monarch_forward_plan(inp["x"], *inp["ws"])
    if not plan["fused"]:
        return "2 GEMMs"
    if plan["cluster"]:
        return f"cluster of {plan['cluster']} (weights on chip)"
    return f"fused J={plan['chunk']} bt={plan['tokens_per_cta']} U={plan['units_per_step']} V={plan['blocks_per_step']}"


def reference_fn(c: Case) -> Callable[..., torch.Tensor]:
    return block_diag_einsum if c.op == "block_diag" else monarch_reference


def make_impl(impl: str, c: Case) -> Callable[..., Any]:
    """A callable of (x, *weights) in the op's own layout, for the impls in CHECKED."""
    if impl == "mmm":
        import mmm
        return mmm.block_diag_matmul if c.op == "block_diag" else mmm.monarch_matmul
    if impl == "mmm_unfused":
        import mmm
        return _unfused(mmm.monarch_matmul)
    if impl == "einsum":
        return reference_fn(c)
    if impl == "bmm":
        return block_diag_bmm if c.op == "block_diag" else monarch_bmm
    if impl == "compile":
        torch._dynamo.reset()
        return torch.compile(block_diag_bmm if c.op == "block_diag" else monarch_reference,
                             dynamic=False)
    raise ValueError(impl)


# ------------------------------------------------------------------------------------------------
# Inputs, runners, checks
# ------------------------------------------------------------------------------------------------
def make_inputs(c: Case, device: torch.device, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator(device=device)
    g.manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=device, dtype=torch.float32)
                * scale).to(c.dtype)

    ws = [randn(*s, scale=1 / math.sqrt(s[2])) for s in c.w_shapes]
    return {"x": randn(c.tokens, c.in_features), "ws": ws,
            "dout": randn(c.tokens, c.out_features)}


def dense_weight(c: Case, ws: list[torch.Tensor]) -> torch.Tensor:
    """The (out, in) matrix of the map: block_diag(*w), or the Monarch map applied to I."""
    if c.op == "block_diag":
        return torch.block_diag(*ws[0])
    eye = torch.eye(c.in_features, device=ws[0].device, dtype=torch.float32)
    return monarch_reference(eye, *[w.float() for w in ws]).T.contiguous().to(c.dtype)


def _std_runners(fn, args: list[torch.Tensor], dout: torch.Tensor) -> dict[str, Callable]:
    def run_fwd():
        with torch.no_grad():
            return fn(*args)

    leaves = [t.detach().requires_grad_(True) for t in args]

    def run_fwdbwd():
        y = fn(*leaves)
        return (y, *torch.autograd.grad(y, leaves, dout))

    return {"fwd": run_fwd, "fwd+bwd": run_fwdbwd}


def runners(impl: str, c: Case, inp: dict[str, Any]) -> dict[str, Callable[[], Any]] | None:
    """None when impl does not apply to this case (bmm_nt for Monarch)."""
    x, ws, dout = inp["x"], inp["ws"], inp["dout"]
    if impl == "mmm_unfused" and c.op != "monarch":
        return None
    if impl in CHECKED:
        return _std_runners(make_impl(impl, c), [x, *ws], dout)
    if impl == "bmm_nt":
        if c.op != "block_diag":
            return None
        nb, n, k = c.w_shapes[0]
        t = c.tokens
        xt = x.view(t, nb, k).transpose(0, 1).contiguous()
        dt = dout.view(t, nb, n).transpose(0, 1).contiguous()
        return _std_runners(block_diag_bmm_nt, [xt, ws[0]], dt)
    if impl == "dense":
        if "W" not in inp:
            inp["W"] = dense_weight(c, ws)
        return _std_runners(F.linear, [x, inp["W"]], dout)
    raise ValueError(impl)


def tolerance(c: Case) -> float:
    """Bound on max |mmm - ref| / max |ref| over the output and every gradient."""
    return {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}[c.dtype]


def reference(c: Case, inp: dict[str, Any]) -> dict[str, Any]:
    """The einsum reference on inputs upcast to fp32 (fp64 for fp32 cases), both modes."""
    rdt = torch.float64 if c.dtype == torch.float32 else torch.float32
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # no TF32 in the reference
    try:
        run = _std_runners(reference_fn(c), [inp["x"].to(rdt), *[w.to(rdt) for w in inp["ws"]]],
                           inp["dout"].to(rdt))
        return {m: run[m]() for m in MODES}
    finally:
        torch.set_float32_matmul_precision(prev)


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------
def run_case(c: Case, impls: list[str], device: torch.device, timer: common.Timer,
             copy_bps: float, report: common.Report) -> list[dict[str, Any]]:
    inp = make_inputs(c, device)
    fl, bm = flop_model(c), byte_model(c)
    fl_d, bm_d = flop_model(c, dense=True), byte_model(c, dense=True)
    ref = reference(c, inp) if any(i in CHECKED for i in impls) else None

    def prepare(impl):
        run = runners(impl, c, inp)
        if run is None:
            return None
        if ref is None or impl not in CHECKED:
            return run, None
        errs = {}
        for m in MODES:
            got = run[m]()
            errs[m] = common.max_rel_err(got, ref[m], torch.float32)
            del got
        return run, errs

    def record(impl, mode, t, err):
        dense = impl == "dense"
        flops = (fl_d if dense else fl)[mode]
        nbytes = (bm_d if dense else bm)[mode]
        rec = {"case": c.name, "op": c.op, "dtype": common.dtype_name(c.dtype),
               "tokens": c.tokens, "in_features": c.in_features,
               "out_features": c.out_features, "w_shapes": [list(s) for s in c.w_shapes],
               "tier": c.tier, "impl": impl, "mode": mode, "flops": flops,
               "bytes": nbytes, **t.summary(),
               "TFLOPs": flops / t.median_s / 1e12,
               "GBps": nbytes / t.median_s / 1e9,
               "pct_copy_bw": 100.0 * nbytes / t.median_s / copy_bps,
               "status": "ok"}
        if err is not None:
            rec["check_rel_err"] = err[mode]
            rec["check_tol"] = tolerance(c)
        return rec

    per_mode, errs = common.time_impls(c.name, impls, prepare, record, timer=timer, device=device,
                                       report=report, modes=MODES, keep_timed=True)
    rows_out = []
    for mode in MODES:
        ts = per_mode[mode]
        row: dict[str, Any] = {"op": c.op, "dtype": common.dtype_name(c.dtype), "T": c.tokens,
                               "N": c.in_features, "M": c.out_features, "blocks": c.blocks,
                               "mode": mode, "GFLOP": fl[mode] / 1e9, "MB": bm[mode] / 1e6}
        for impl in IMPLS:
            t = ts.get(impl)
            row[f"{impl}_us"] = t.median_s * 1e6 if t else None
        m = ts.get("mmm")
        if m:
            row["mmm_TFLOPs"] = fl[mode] / m.median_s / 1e12
            row["mmm_GBps"] = bm[mode] / m.median_s / 1e9
            row["mmm_pct"] = 100.0 * bm[mode] / m.median_s / copy_bps
            if ts.get("dense"):
                row["vs_dense"] = ts["dense"].median_s / m.median_s
            if ts.get("bmm"):
                row["vs_bmm"] = ts["bmm"].median_s / m.median_s
            if ts.get("mmm_unfused"):
                row["fused_x"] = ts["mmm_unfused"].median_s / m.median_s
            try:
                row["path"] = forward_path(c, inp) if mode == "fwd" else "GEMMs"
            except Exception as e:  # noqa: BLE001 - an old mmm without the plan op
                row["path"] = f"? ({type(e).__name__})"
        best = common.peer_check(row, ts, peers=PEERS, errs={k: e[mode] for k, e in errs.items()},
                                 tol=tolerance(c))
        if best:
            row["peer_TFLOPs"] = fl[mode] / ts[best].median_s / 1e12
        if errs.get("mmm_unfused", {}).get(mode, 0.0) > tolerance(c) and row["check"] in ("ok", "-"):
            row["check"] = f"FAIL unfused {errs['mmm_unfused'][mode]:.1e}"
        rows_out.append(row)
    del inp, ref
    common.release(device)
    return rows_out


COLUMNS = [
    ("op", "op", ""), ("dtype", "dtype", ""), ("T", "T", ""), ("N", "N", ""), ("M", "M", ""),
    ("blocks", "blocks", ""), ("mode", "mode", ""), ("GFLOP", "GFLOP", ".1f"), ("MB", "MB", ".0f"),
    ("mmm_us", "mmm us", ".1f"), ("mmm_unfused_us", "unfused us", ".1f"), ("bmm_us", "bmm us", ".1f"),
    ("bmm_nt_us", "bmm_nt us", ".1f"),
    ("einsum_us", "einsum us", ".1f"), ("compile_us", "compile us", ".1f"),
    ("dense_us", "dense us", ".1f"),
    ("mmm_TFLOPs", "mmm TF/s", ".2f"), ("mmm_GBps", "mmm GB/s", ".0f"), ("mmm_pct", "mmm %BW", ".0f"),
    ("best_peer", "best peer", ""), ("peer_TFLOPs", "peer TF/s", ".2f"),
    ("speedup", "speed-up", ".2f"), ("vs_bmm", "vs 2bmm", ".2f"), ("fused_x", "fused x", ".2f"),
    ("vs_dense", "vs dense", ".2f"), ("path", "path", ""),
    ("mmm_err", "mmm err", ".1e"), ("peer_err", "peer err", ".1e"), ("check", "check", ""),
]


def main(argv: list[str] | None = None) -> int:
    parser = common.make_parser(__doc__.split("\n")[0], IMPLS)
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    device = common.resolve_device(args)
    impls = common.selected_impls(args, IMPLS)
    compile_everywhere = bool(args.impls) and "compile" in impls
    common.require_mmm(impls, 'block_diag_matmul', 'monarch_matmul')
    cases, env, copy_bw, report = common.start(
        "block_diag_matmul", args, device, impls, build_cases(args.device, args.quick), {
        "byte_model": "see bench/python/bench_block_diag_matmul.py docstring",
        "flop_model": "2*T*(weight elements) forward, 3x for fwd+bwd",
        "compile": ("every case" if compile_everywhere else
                    "only cases marked compile_peer (features 4096 on CUDA)"),
        "nblocks_8192": "sqrt(8192) is not an integer: nb 64 (128x128 blocks) and nb 128 (64x64)",
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    })
    print(f"{len(cases)} cases x {len(impls)} impls x {len(MODES)} modes", flush=True)

    timer = common.Timer(device, quick=args.quick, reps=args.reps)
    def run_one(c):
        case_impls = [m for m in impls if m != "compile" or compile_everywhere or c.compile_peer]
        return run_case(c, case_impls, device, timer, copy_bw["bytes_per_s"], report)

    return common.run_cases(
        cases, run_one, args=args, report=report, timer=timer, env=env, copy_bw=copy_bw,
        columns=COLUMNS,
        footer=("blocks = w shape(s); GFLOP/MB: the structured op's FLOP and byte models (docstring); "
                "speed-up = best peer (bmm, einsum, compile) time / mmm time; vs 2bmm = bmm time / mmm "
                "time; fused x = mmm_unfused time / mmm time; vs dense = dense F.linear "
                "time / mmm time; %BW is relative to the measured copy bandwidth; bmm_nt = bmm "
                "without the layout transposes (not a peer)."),
        t_start=t_start)


if __name__ == "__main__":
    sys.exit(main())
