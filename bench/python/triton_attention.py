"""A compact Triton FlashAttention (forward and backward): the Triton peer of bench_attention.py.

    out = softmax(q·kᵀ·scale + causal mask) · v,   q (B, Hq, S, D), k and v (B, Hkv, S', D)

Any strides (unit stride along D), grouped-query heads (Hq a multiple of Hkv), Sq != Sk with the
causal mask aligned bottom-right (FlashAttention >= 2.1, as mmm), D a power of two in [16, 256],
fp16/bf16 (fp32 too, through tl.dot's default precision). Rows that see no key give 0.

Algorithm (FlashAttention-2, written for this benchmark):
  forward   one program per (query block, batch·head): Q block in registers, K/V blocks streamed
            (Triton pipelines the loads, num_stages), online softmax in base 2 with the scale
            folded in, causal blocks past the diagonal skipped; stores out and the row lse.
  backward  delta = rowsum(dO ∘ O) in PyTorch, then two kernels with no atomics: dK/dV per
            (key block, batch·kv head) looping over the query heads of the group and the query
            blocks that see the keys; dQ per (query block, batch·head) looping over key blocks.
            P is recomputed from the saved lse.

Used only when `import triton` works and a CUDA device is present (bench_attention.py checks
it against SDPA before timing). `python bench/python/triton_attention.py` runs a self-check
against SDPA; with TRITON_INTERPRET=1 it runs on the CPU through Triton's interpreter (seen on
2026-12-07: Triton 3.8 with NumPy 2.4 and Triton 3.6 with NumPy 2.2 pass; Triton 3.6's interpreter
with NumPy 2.4 fails on the forward's tensor-valued loop bound, which only the interpreter turns
into a Python int).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, scale_log2,
                sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sob, soh, som,
                H, GROUP, SQ, SK,
                CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // GROUP
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols_d = tl.arange(0, D)
    q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqm + cols_d[None, :], mask=rows[:, None] < SQ, other=0.0)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    shift = SK - SQ

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    hi = SK
    if CAUSAL:  # keys past the block's last row (+ shift) are hidden from every row of it
        hi = tl.minimum(SK, tl.maximum((pid_m + 1) * BLOCK_M + shift, 0))
    for n0 in range(0, hi, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        kv_mask = cols[:, None] < SK
        k = tl.load(k_base + cols[:, None] * skn + cols_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + cols[:, None] * svn + cols_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale_log2  # (BLOCK_M, BLOCK_N), log2 units
        visible = cols[None, :] < SK
        if CAUSAL:
            visible = visible & (cols[None, :] <= rows[:, None] + shift)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key yet: exp2(-inf) = 0, not nan
        p = tl.exp2(s - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    has_key = l_i > 0.0
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]
    tl.store(O + b * sob + h * soh + rows[:, None] * som + cols_d[None, :], out.to(O.dtype.element_ty),
             mask=rows[:, None] < SQ)
    lse = tl.where(has_key, (m_i + tl.log2(tl.where(has_key, l_i, 1.0))) * 0.6931471805599453, float("inf"))
    tl.store(LSE + bh * SQ + rows, lse, mask=rows < SQ)


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, scale, scale_log2,
                     sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sdb, sdh, sdm,
                     sdkb, sdkh, sdkn, sdvb, sdvh, sdvn,
                     H, HKV, GROUP, SQ, SK,
                     CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1)
    b = bhk // HKV
    hk = bhk % HKV
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # keys
    cols_d = tl.arange(0, D)
    kv_mask = cols[:, None] < SK
    k = tl.load(K + b * skb + hk * skh + cols[:, None] * skn + cols_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + b * svb + hk * svh + cols[:, None] * svn + cols_d[None, :], mask=kv_mask, other=0.0)
    shift = SK - SQ
    dk = tl.zeros([BLOCK_N, D], tl.float32)
    dv = tl.zeros([BLOCK_N, D], tl.float32)
    lo = 0
    if CAUSAL:  # query rows before the block's first key (- shift) see none of these keys
        lo = tl.maximum(pid_n * BLOCK_N - shift, 0) // BLOCK_M * BLOCK_M
    for h in range(hk * GROUP, hk * GROUP + GROUP):
        q_base = Q + b * sqb + h * sqh
        do_base = DO + b * sdb + h * sdh
        for m0 in range(lo, SQ, BLOCK_M):
            rows = m0 + tl.arange(0, BLOCK_M)
            row_mask = rows < SQ
            q = tl.load(q_base + rows[:, None] * sqm + cols_d[None, :], mask=row_mask[:, None], other=0.0)
            do = tl.load(do_base + rows[:, None] * sdm + cols_d[None, :], mask=row_mask[:, None], other=0.0)
            lse = tl.load(LSE + (b * H + h) * SQ + rows, mask=row_mask, other=float("inf"))
            delta = tl.load(DELTA + (b * H + h) * SQ + rows, mask=row_mask, other=0.0)
            # Transposed tiles (keys x queries), so dK and dV accumulate without a transpose.
            st = tl.dot(k, tl.trans(q))
            visible = (cols[:, None] < SK) & row_mask[None, :]
            if CAUSAL:
                visible = visible & (cols[:, None] <= rows[None, :] + shift)
            pt = tl.where(visible, tl.exp2(st * scale_log2 - lse[None, :] * 1.4426950408889634), 0.0)
            dv += tl.dot(pt.to(do.dtype), do)
            dpt = tl.dot(v, tl.trans(do))
            dst = pt * (dpt - delta[None, :])
            dk += tl.dot(dst.to(q.dtype), q)
    tl.store(DK + b * sdkb + hk * sdkh + cols[:, None] * sdkn + cols_d[None, :], (dk * scale).to(DK.dtype.element_ty),
             mask=kv_mask)
    tl.store(DV + b * sdvb + hk * sdvh + cols[:, None] * sdvn + cols_d[None, :], dv.to(DV.dtype.element_ty),
             mask=kv_mask)


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, scale, scale_log2,
                   sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sdb, sdh, sdm, sdqb, sdqh, sdqm,
                   H, GROUP, SQ, SK,
                   CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // GROUP
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols_d = tl.arange(0, D)
    row_mask = rows < SQ
    q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqm + cols_d[None, :], mask=row_mask[:, None], other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + rows[:, None] * sdm + cols_d[None, :], mask=row_mask[:, None], other=0.0)
    lse = tl.load(LSE + bh * SQ + rows, mask=row_mask, other=float("inf"))
    delta = tl.load(DELTA + bh * SQ + rows, mask=row_mask, other=0.0)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    shift = SK - SQ
    dq = tl.zeros([BLOCK_M, D], tl.float32)
    hi = SK
    if CAUSAL:
        hi = tl.minimum(SK, tl.maximum((pid_m + 1) * BLOCK_M + shift, 0))
    for n0 in range(0, hi, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        kv_mask = cols[:, None] < SK
        k = tl.load(k_base + cols[:, None] * skn + cols_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + cols[:, None] * svn + cols_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k))
        visible = (cols[None, :] < SK) & row_mask[:, None]
        if CAUSAL:
            visible = visible & (cols[None, :] <= rows[:, None] + shift)
        p = tl.where(visible, tl.exp2(s * scale_log2 - lse[:, None] * 1.4426950408889634), 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)
    tl.store(DQ + b * sdqb + h * sdqh + rows[:, None] * sdqm + cols_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=row_mask[:, None])


def _strides(t: torch.Tensor):
    return t.stride(0), t.stride(1), t.stride(2)


def _config(d: int):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the forward and of the two backward kernels."""
    fwd = (128, 64, 4 if d <= 64 else 8, 3)
    bwd = (64, 64, 4 if d <= 64 else 8, 2)
    return fwd, bwd


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    d = q.shape[-1]
    if d < 16 or d > 256 or d & (d - 1):
        raise ValueError(f"triton_attention: head dim {d} is not a power of two in [16, 256]")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3] or q.shape[1] % k.shape[1]:
        raise ValueError(f"triton_attention: shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.stride(3) != 1 or k.stride(3) != 1 or v.stride(3) != 1:
        raise ValueError("triton_attention: q, k and v need unit stride along the head dim")


def attention_forward(q, k, v, causal: bool, scale: float):
    B, H, SQ, D = q.shape
    HKV, SK = k.shape[1], k.shape[2]
    out = torch.empty_like(q)
    lse = torch.empty(B, H, SQ, device=q.device, dtype=torch.float32)
    (bm, bn, warps, stages), _ = _config(D)
    grid = (triton.cdiv(SQ, bm), B * H)
    _fwd_kernel[grid](q, k, v, out, lse, scale * LOG2E, *_strides(q), *_strides(k), *_strides(v), *_strides(out),
                      H, H // HKV, SQ, SK, CAUSAL=causal, BLOCK_M=bm, BLOCK_N=bn, D=D,
                      num_warps=warps, num_stages=stages)
    return out, lse


def attention_backward(dout, q, k, v, out, lse, causal: bool, scale: float):
    B, H, SQ, D = q.shape
    HKV, SK = k.shape[1], k.shape[2]
    if dout.stride(3) != 1:
        dout = dout.contiguous()
    delta = (dout.float() * out.float()).sum(-1).contiguous()  # (B, H, SQ)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    _, (bm, bn, warps, stages) = _config(D)
    _bwd_dkdv_kernel[(triton.cdiv(SK, bn), B * HKV)](
        q, k, v, dout, lse, delta, dk, dv, scale, scale * LOG2E,
        *_strides(q), *_strides(k), *_strides(v), *_strides(dout), *_strides(dk), *_strides(dv),
        H, HKV, H // HKV, SQ, SK, CAUSAL=causal, BLOCK_M=bm, BLOCK_N=bn, D=D, num_warps=warps, num_stages=stages)
    _bwd_dq_kernel[(triton.cdiv(SQ, bm), B * H)](
        q, k, v, dout, lse, delta, dq, scale, scale * LOG2E,
        *_strides(q), *_strides(k), *_strides(v), *_strides(dout), *_strides(dq),
        H, H // HKV, SQ, SK, CAUSAL=causal, BLOCK_M=bm, BLOCK_N=bn, D=D, num_warps=warps, num_stages=stages)
    return dq, dk, dv


class _TritonAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale):
        out, lse = attention_forward(q, k, v, causal, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale = causal, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = attention_backward(dout, q, k, v, out, lse, ctx.causal, ctx.scale)
        return dq, dk, dv, None, None


def triton_attention(q, k, v, causal: bool = False, scale: float | None = None):
    """softmax(q·kᵀ·scale + causal mask)·v with autograd; scale defaults to 1/sqrt(D)."""
    _check(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _TritonAttention.apply(q, k, v, causal, scale)


def _selftest() -> None:
    """Forward and backward against SDPA (fp32 math on upcast inputs) on awkward shapes."""
    import os

    device = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
    dtypes = (torch.float16, torch.float32) if device == "cpu" else (torch.float16, torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for dtype in dtypes:
        for (B, H, HKV, SQ, SK, D), causal in [((1, 2, 1, 77, 77, 64), True), ((2, 2, 2, 50, 130, 32), False),
                                               ((1, 4, 2, 70, 130, 64), True), ((1, 2, 2, 64, 200, 128), True)]:
            mk = lambda h, s: torch.randn(B, s, h, D, generator=gen).to(device, dtype).transpose(1, 2)  # noqa: E731
            q, k, v = mk(H, SQ), mk(HKV, SK), mk(HKV, SK)
            dout = torch.randn(B, H, SQ, D, generator=gen).to(device, dtype)
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            out = triton_attention(*leaves, causal=causal)
            got = (out, *torch.autograd.grad(out, leaves, dout))
            ref_leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
            rk, rv = (t.repeat_interleave(H // HKV, 1) for t in ref_leaves[1:])
            i = torch.arange(SQ, device=device)[:, None] + (SK - SQ)
            j = torch.arange(SK, device=device)[None, :]
            mask = (j <= i) if causal else torch.ones(SQ, SK, dtype=torch.bool, device=device)
            ref = torch.nn.functional.scaled_dot_product_attention(ref_leaves[0], rk, rv, attn_mask=mask)
            want = (ref, *torch.autograd.grad(ref, ref_leaves, dout.float()))
            for name, a, w in zip(("out", "dq", "dk", "dv"), got, want):
                err = ((a.float() - w).abs().max() / w.abs().max()).item()
                worst = max(worst, err)
                tol = 1e-4 if dtype == torch.float32 else 2e-2
                assert err < tol, f"{dtype} {(B, H, HKV, SQ, SK, D)} causal={causal} {name}: rel err {err:.2e}"
    print(f"triton_attention selftest on {device}: ok, worst relative error {worst:.2e}")


if __name__ == "__main__":
    _selftest()
