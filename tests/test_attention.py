"""Tests for mmm.fused_attention, the raw ops torch.ops.mmm.fused_attention[_forward|_backward]
and mmm.nn.FusedAttention.

    out = softmax(q·kᵀ·scale + mask) · v        q (B, Hq, Sq, D), k and v (B, Hkv, Sk, D)
    query i sees key j iff  i + shift - left <= j <= i + shift + right,  shift = Sk - Sq
    (window = (left, right), -1 unbounded; causal = right 0); rows that see no key: out 0, lse +inf

Accuracy rule (FlashAttention's): with `ref` the plainest PyTorch expression in float64 on
upcast copies of the inputs (the truth) and `ref_lowp` the same expression evaluated by PyTorch
in the inputs' dtype, every output and gradient must satisfy

    max|kernel - ref| <= 2 * max|ref_lowp - ref| + atol

Every test that takes a `device` argument runs on CPU and, marked `cuda`, on CUDA (conftest.py);
the CUDA kernels take fp16/bf16 and head dims that are multiples of 8, so CUDA twins of float32 or
odd-head-dim cases skip with that reason. Tests named `*sanitizer_subset*` are the small CUDA set
bench/gpu_check.sh runs under compute-sanitizer.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

import mmm
from conftest import build_cuda_test, emulation_sanitizers, run_cuda_test, run_emulation

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
DTYPE_NAMES = {F32: "fp32", F16: "fp16", BF16: "bf16", F64: "fp64"}

# atol of the rule: a few fp32 ulps of O(1) values for fp32 (the kernel and PyTorch round
# differently, and a max over many elements can catch a difference PyTorch happens not to have;
# the kernel's errors are ~1e-6, so a real bug shows), float64 rounding for float64 (there the
# "low precision" reference is the truth itself), a fraction of an fp16/bf16 ulp otherwise.
# Gradients: times max(1, max|grad|), since dk/dv sum over every query row.
FWD_ATOL = {F32: 2e-6, F64: 1e-13, F16: 1e-3, BF16: 1e-3}
BWD_ATOL = {F32: 1e-5, F64: 1e-12, F16: 2e-3, BF16: 4e-3}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _id(v):
    if isinstance(v, torch.dtype):
        return DTYPE_NAMES[v]
    if isinstance(v, tuple):
        return "x".join(map(str, v))
    return str(v)


ALL_CUDA_HEAD_DIMS = (32, 64, 96, 128, 192, 256)  # CMake's default MMM_ATTENTION_HEAD_DIMS


def cuda_head_dim_compiled(d):
    """Whether this build has a CUDA kernel for head dim d (one of the compiled MMM_ATTENTION_HEAD_DIMS >= d)."""
    return any(d <= c for c in mmm.build_info()["attention_head_dims"])


def require_cuda_head_dim(d):
    if not cuda_head_dim_compiled(d):
        pytest.skip(f"head dim {d} has no CUDA kernel in this build (MMM_ATTENTION_HEAD_DIMS = "
                    f"{mmm.build_info()['attention_head_dims']}); test_cuda_head_dim_not_compiled checks the error")


def skip_if_unsupported(device, dtype=None, head_dim=None):
    if device != "cuda":
        return
    if dtype in (F32, F64):
        pytest.skip("float32/float64 attention runs on the CPU only (CUDA: float16, bfloat16)")
    if head_dim is not None and head_dim % 8:
        pytest.skip("the CUDA kernels take head dims that are multiples of 8")
    if head_dim is not None:
        require_cuda_head_dim(head_dim)


def f32_scale(scale, d):
    """The scale the op applies: 1/sqrt(D) by default, rounded to float32."""
    return float(torch.tensor(1.0 / math.sqrt(d) if scale is None else scale, dtype=F32))


def resolve_window(causal, window):
    left, right = window
    return left, 0 if causal else right


def visible(sq, sk, left, right, device):
    i = torch.arange(sq, device=device)[:, None] + (sk - sq)
    j = torch.arange(sk, device=device)[None, :]
    m = torch.ones(sq, sk, dtype=torch.bool, device=device)
    if right >= 0:
        m &= j <= i + right
    if left >= 0:
        m &= j >= i - left
    return m


def reference(q, k, v, *, scale, left=-1, right=-1, dtype):
    """The plainest expression, in `dtype`: (out, lse). Rows that see no key give 0 and +inf
    (their scores are replaced by zeros before the softmax, so no NaN reaches the gradients)."""
    q, k, v = (t.to(dtype) for t in (q, k, v))
    g = q.shape[1] // max(k.shape[1], 1)
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = (q @ k.transpose(-1, -2)) * scale
    vis = visible(q.shape[2], k.shape[2], left, right, q.device)
    any_key = vis.any(-1, keepdim=True)
    s = torch.where(any_key, s.masked_fill(~vis, float("-inf")), torch.zeros_like(s))
    p = torch.softmax(s, -1) * any_key
    lse = torch.where(any_key[..., 0], torch.logsumexp(s, -1), torch.full_like(s[..., 0], float("inf")))
    return p @ v, lse


def max_abs_err(a, b):
    if a.numel() == 0:
        return 0.0
    return (a.double() - b.double()).abs().max().item()


def assert_close_fa(out, ref, ref_lowp, atol, name):
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert not torch.isnan(out).any(), f"{name}: kernel output contains NaN"
    err, err_lowp = max_abs_err(out, ref), max_abs_err(ref_lowp, ref)
    assert err <= 2 * err_lowp + atol, (
        f"{name}: max|kernel - ref| = {err:.3e} > 2 * max|pytorch_lowp - ref| = {2 * err_lowp:.3e} + atol {atol:.1e}")


def make_qkv(shape, dtype, device, *, layout="bhsd", seed=0):
    """q (B, Hq, Sq, D), k and v (B, Hkv, Sk, D) for shape = (B, Hq, Hkv, Sq, Sk, D), stored as
    `layout`: "bhsd" contiguous; "bshd" (B, S, H, D) tensors viewed with .transpose(1, 2)."""
    B, Hq, Hkv, Sq, Sk, D = shape
    gen = torch.Generator().manual_seed(seed)

    def mk(h, s):
        if layout == "bshd":
            return torch.randn(B, s, h, D, generator=gen).to(device, dtype).transpose(1, 2)
        return torch.randn(B, h, s, D, generator=gen).to(device, dtype)

    return mk(Hq, Sq), mk(Hkv, Sk), mk(Hkv, Sk)


def check(q, k, v, *, causal=False, window=(-1, -1), scale=None, grad=True, return_lse=False, seed=7,
          deterministic=None):
    """mmm.fused_attention forward (and backward) on these tensors as given (strides included)
    against the float64 truth and PyTorch in the inputs' dtype. Returns (outs, grads)."""
    dtype, device = q.dtype, q.device
    if device.type == "cuda":
        require_cuda_head_dim(q.shape[-1])
    leaves = [t.detach().requires_grad_(grad) for t in (q, k, v)]
    res = mmm.fused_attention(*leaves, causal=causal, window=window, scale=scale, return_lse=return_lse,
                              deterministic=deterministic)
    out, lse = res if return_lse else (res, None)
    assert out.dtype == dtype and out.shape == q.shape and out.device == device
    left, right = resolve_window(causal, window)
    sc = f32_scale(scale, q.shape[-1])

    leaves64 = [t.detach().double().requires_grad_(grad) for t in (q, k, v)]
    out64, lse64 = reference(*leaves64, scale=sc, left=left, right=right, dtype=F64)
    leaves_lp = [t.detach().clone().requires_grad_(grad) for t in (q, k, v)]
    out_lp, lse_lp = reference(*leaves_lp, scale=sc, left=left, right=right, dtype=dtype)
    assert_close_fa(out, out64, out_lp, FWD_ATOL[dtype], "out")
    outs, outs64, outs_lp = [out], [out64], [out_lp]
    if return_lse:
        assert lse.dtype == (F64 if dtype == F64 else F32) and lse.shape == q.shape[:3]
        fin = torch.isfinite(lse64)
        assert torch.equal(torch.isfinite(lse), fin), "lse must be +inf exactly on the rows that see no key"
        assert (lse[~fin] == float("inf")).all()
        assert_close_fa(lse[fin], lse64[fin], lse_lp[fin], FWD_ATOL[dtype], "lse")
        outs, outs64, outs_lp = [out, lse], [out64, lse64], [out_lp, lse_lp]
    if not grad:
        return outs, None

    gen = torch.Generator().manual_seed(seed)
    gouts = [torch.randn(o.shape, generator=gen).to(device, o.dtype) for o in outs]
    grads = torch.autograd.grad(outs, leaves, gouts)
    grads64 = torch.autograd.grad(outs64, leaves64, [g.double() for g in gouts])
    grads_lp = torch.autograd.grad(outs_lp, leaves_lp, [g.to(o.dtype) for g, o in zip(gouts, outs_lp)])
    for name, t, g, g64, glp in zip("qkv", leaves, grads, grads64, grads_lp):
        assert g.dtype == dtype and g.shape == t.shape, f"grad {name}: {g.dtype} {tuple(g.shape)}"
        scale_g = max(1.0, g64.abs().max().item()) if g64.numel() else 1.0
        assert_close_fa(g, g64, glp, BWD_ATOL[dtype] * scale_g, f"grad {name}")
    return outs, grads


# ---------------------------------------------------------------------------------------------
# masks x head layouts x Sq != Sk both ways
# ---------------------------------------------------------------------------------------------
MASKS = {
    "full": (False, (-1, -1)),
    "causal": (True, (-1, -1)),
    "w-1_0": (False, (-1, 0)),  # = causal
    "w2_0": (False, (2, 0)),
    "w3_5": (False, (3, 5)),
    "w0_0": (False, (0, 0)),  # the diagonal only
    "w16_-1": (False, (16, -1)),
    "w-1_7": (False, (-1, 7)),
    "causal_w20": (True, (20, 9)),  # causal replaces the right bound: (20, 0)
}
HEADS = {"mha": (4, 4), "gqa": (6, 2), "mqa": (3, 1)}
SEQS = [(113, 113), (77, 150), (150, 77)]


@pytest.mark.parametrize("dtype", [F32, BF16], ids=_id)
@pytest.mark.parametrize("seqs", SEQS, ids=_id)
@pytest.mark.parametrize("heads", list(HEADS))
@pytest.mark.parametrize("mask", list(MASKS))
def test_masks(device, mask, heads, seqs, dtype):
    skip_if_unsupported(device, dtype)
    causal, window = MASKS[mask]
    (hq, hkv), (sq, sk) = HEADS[heads], seqs
    q, k, v = make_qkv((2, hq, hkv, sq, sk, 40), dtype, device)
    check(q, k, v, causal=causal, window=window)


@pytest.mark.parametrize("mask", ["full", "causal", "w3_5"])
@pytest.mark.parametrize("seqs", [(64, 64), (100, 37)], ids=_id)
def test_fp16(device, mask, seqs):
    causal, window = MASKS[mask]
    q, k, v = make_qkv((1, 4, 2, *seqs, 64), F16, device, seed=3)
    check(q, k, v, causal=causal, window=window)


@pytest.mark.parametrize("mask", ["full", "causal", "w2_0", "w3_5"])
@pytest.mark.parametrize("seqs", [(37, 37), (20, 45), (45, 20)], ids=_id)
def test_fp64(mask, seqs):
    """float64 inputs are computed in float64 (what gradcheck relies on): float64 rounding."""
    causal, window = MASKS[mask]
    q, k, v = make_qkv((2, 2, 1, *seqs, 19), F64, "cpu", seed=4)
    check(q, k, v, causal=causal, window=window, return_lse=True)


# ---------------------------------------------------------------------------------------------
# sequence lengths and head dims
# ---------------------------------------------------------------------------------------------
SEQLEN_PAIRS = [(1, 1), (1, 17), (17, 1), (17, 17), (113, 128), (128, 113), (128, 128), (1000, 1000),
                (1000, 17), (17, 1000), (1, 1000), (1000, 1), (113, 1000), (1000, 128)]


@pytest.mark.parametrize("dtype", [F32, BF16], ids=_id)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("seqs", SEQLEN_PAIRS, ids=_id)
def test_seqlens(device, seqs, causal, dtype):
    skip_if_unsupported(device, dtype)
    sq, sk = seqs
    d = 16 if max(sq, sk) >= 1000 else 32
    q, k, v = make_qkv((1, 2, 1, sq, sk, d), dtype, device, seed=sq + sk)
    check(q, k, v, causal=causal)


HEAD_DIMS = [1, 2, 3, 7, 8, 16, 17, 24, 32, 33, 40, 64, 72, 80, 96, 100, 128, 136, 160, 192, 200, 224, 256]


@pytest.mark.parametrize("dtype", [F32, BF16], ids=_id)
@pytest.mark.parametrize("d", HEAD_DIMS)
def test_head_dims(device, d, dtype):
    skip_if_unsupported(device, dtype, d)
    q, k, v = make_qkv((1, 2, 1, 70, 90, d), dtype, device, seed=d)
    check(q, k, v, causal=True)


@pytest.mark.parametrize("scale", [0.05, 1.0, 3.0])
def test_scale(device, scale):
    q, k, v = make_qkv((1, 2, 2, 50, 60, 32), BF16, device, seed=5)
    check(q, k, v, scale=scale, window=(8, 8))


# ---------------------------------------------------------------------------------------------
# layouts: strided inputs read in place, outputs in the inputs' memory order
# ---------------------------------------------------------------------------------------------
def _layout_qkv(kind, shape, dtype, device):
    B, Hq, Hkv, Sq, Sk, D = shape
    gen = torch.Generator().manual_seed(11)
    rnd = lambda *s: torch.randn(*s, generator=gen).to(device, dtype)  # noqa: E731
    if kind in ("bhsd", "bshd"):
        return make_qkv(shape, dtype, device, layout=kind, seed=11)
    if kind == "packed_qkv":  # one (B, S, 3, H, D) projection output, as attention layers make
        assert Hq == Hkv and Sq == Sk
        qkv = rnd(B, Sq, 3, Hq, D)
        return tuple(qkv[:, :, i].transpose(1, 2) for i in range(3))
    if kind == "padded_rows":  # rows of a wider buffer: row stride D + 5
        return (rnd(B, Hq, Sq, D + 5)[..., :D], rnd(B, Hkv, Sk, D + 5)[..., 2:D + 2],
                rnd(B, Hkv, Sk, D + 5)[..., :D])
    if kind == "every_other_batch":
        return (rnd(2 * B, Hq, Sq, D)[::2], rnd(2 * B, Hkv, Sk, D)[1::2], rnd(2 * B, Hkv, Sk, D)[::2])
    if kind == "expanded_kv_heads":  # one kv head broadcast over Hkv heads: head stride 0
        return (rnd(B, Hq, Sq, D), rnd(B, 1, Sk, D).expand(B, Hkv, Sk, D), rnd(B, 1, Sk, D).expand(B, Hkv, Sk, D))
    raise AssertionError(kind)


LAYOUTS = ["bhsd", "bshd", "packed_qkv", "padded_rows", "every_other_batch", "expanded_kv_heads"]


def _follows(out, like):
    """out is in like's memory order (the rule of empty_in_layout_of in the glue)."""
    B, H, S, D = like.shape
    if H > 1 and S > 1 and like.stride(1) < like.stride(2):
        return out.transpose(1, 2).is_contiguous()
    return out.is_contiguous()


@pytest.mark.parametrize("dtype", [F32, BF16], ids=_id)
@pytest.mark.parametrize("kind", LAYOUTS)
def test_layouts(device, kind, dtype):
    skip_if_unsupported(device, dtype)
    shape = (2, 4, 4, 70, 70, 32) if kind == "packed_qkv" else (2, 4, 2, 70, 90, 32)
    q, k, v = _layout_qkv(kind, shape, dtype, device)
    (out,), grads = check(q, k, v, causal=True)
    assert _follows(out, q)
    for t, g in zip((q, k, v), grads):
        assert _follows(g, t)


def test_layouts_are_read_in_place():
    """Strided inputs with unit stride along D are not copied (forward nor backward)."""
    q, k, v = _layout_qkv("bshd", (2, 4, 2, 70, 90, 32), F32, "cpu")
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    dout = torch.randn(2, 70, 4, 32).transpose(1, 2)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out, lse = mmm.fused_attention(*leaves, causal=True, return_lse=True)
        torch.autograd.grad(out, leaves, dout)
    names = {e.name for e in prof.events()}
    assert "mmm::fused_attention_forward" in names and "mmm::fused_attention_backward" in names
    assert not names & {"aten::copy_", "aten::clone"}, sorted(names)
    assert out.transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("api", ["public", "raw_forward"])
def test_last_dim_stride_is_an_error(device, api):
    q, k, v = make_qkv((1, 2, 2, 8, 8, 16), BF16, device)
    bad = torch.randn(1, 2, 8, 32).to(device, BF16)[..., ::2]
    for name, args in (("q", (bad, k, v)), ("k", (q, bad, v)), ("v", (q, k, bad))):
        with pytest.raises(RuntimeError, match=rf"fused_attention: {name} must have unit stride.*last-dim stride 2"):
            if api == "public":
                mmm.fused_attention(*args)
            else:
                torch.ops.mmm.fused_attention_forward(*args, 0.25, -1, -1)


# ---------------------------------------------------------------------------------------------
# lse, rows that see no key, empty tensors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [F32, BF16], ids=_id)
@pytest.mark.parametrize("case", ["full", "causal_sq_gt_sk", "window_sq_lt_sk", "gqa_w2_0"])
def test_return_lse(device, case, dtype):
    skip_if_unsupported(device, dtype)
    shape, causal, window = {
        "full": ((2, 2, 2, 65, 65, 32), False, (-1, -1)),
        "causal_sq_gt_sk": ((1, 2, 1, 90, 40, 32), True, (-1, -1)),
        "window_sq_lt_sk": ((1, 2, 2, 40, 130, 64), False, (5, 3)),
        "gqa_w2_0": ((1, 6, 2, 70, 70, 16), False, (2, 0)),
    }[case]
    q, k, v = make_qkv(shape, dtype, device, seed=12)
    # The gradient flows through both out and lse (d lse / d s = P).
    check(q, k, v, causal=causal, window=window, return_lse=True)


def test_lse_only_gradient(device):
    q, k, v = make_qkv((1, 2, 1, 33, 47, 16), BF16, device, seed=2)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    _, lse = mmm.fused_attention(*leaves, causal=True, return_lse=True)
    grads = torch.autograd.grad(lse.sum(), leaves)
    leaves64 = [t.detach().double().requires_grad_() for t in (q, k, v[:, :, :0])]
    _, lse64 = reference(*leaves64[:2], leaves64[1], scale=f32_scale(None, 16), right=0, dtype=F64)
    dq64, dk64 = torch.autograd.grad(lse64.sum(), leaves64[:2])
    for g, g64 in zip(grads, (dq64, dk64, torch.zeros(v.shape, dtype=F64))):
        torch.testing.assert_close(g.double().cpu(), g64.cpu(), rtol=0, atol=2e-2)


@pytest.mark.parametrize("dtype", [F32, BF16], ids=_id)
@pytest.mark.parametrize("case", ["causal_sq_gt_sk", "window_right_2", "window_left_0_gqa"])
def test_rows_without_keys(device, case, dtype):
    """Rows that see no key: out exactly 0, lse +inf, their dq exactly 0, nothing NaN."""
    skip_if_unsupported(device, dtype)
    shape, causal, window = {
        "causal_sq_gt_sk": ((2, 2, 1, 150, 40, 32), True, (-1, -1)),
        "window_right_2": ((1, 2, 2, 100, 30, 32), False, (3, 2)),
        "window_left_0_gqa": ((1, 4, 2, 200, 70, 64), True, (0, -1)),
    }[case]
    q, k, v = make_qkv(shape, dtype, device, seed=13)
    (out, lse), (dq, dk, dv) = check(q, k, v, causal=causal, window=window, return_lse=True)
    left, right = resolve_window(causal, window)
    empty = ~visible(shape[3], shape[4], left, right, device).any(-1)
    assert empty.any() and not empty.all()
    assert (out[:, :, empty] == 0).all() and (lse[:, :, empty] == float("inf")).all()
    assert (dq[:, :, empty] == 0).all()
    for t in (out, dq, dk, dv):
        assert torch.isfinite(t).all()


def test_nan_propagates(device):
    """A NaN in q or k reaches exactly the outputs that depend on it (not silently zeros)."""
    q, k, v = make_qkv((1, 2, 1, 100, 100, 32), BF16, device, seed=20)
    q[0, 1, 70, 5] = float("nan")
    k[0, 0, 40, 3] = float("nan")
    out, lse = mmm.fused_attention(q, k, v, causal=True, return_lse=True)
    bad = torch.zeros(2, 100, dtype=torch.bool, device=device)
    bad[1, 70] = True  # the query row with the NaN
    bad[0, 40:] = True  # the rows of every query head of that kv head that see key 40
    bad[1, 40:] = True
    assert torch.equal(out[0].isnan().any(-1), bad) and torch.equal(lse[0].isnan(), bad)


@pytest.mark.parametrize("case", ["batch0", "sq0", "sk0", "sq0_sk0"])
def test_empty(device, case):
    B, sq, sk = {"batch0": (0, 9, 9), "sq0": (2, 0, 9), "sk0": (2, 9, 0), "sq0_sk0": (2, 0, 0)}[case]
    q, k, v = make_qkv((B, 4, 2, sq, sk, 16), BF16, device)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out, lse = mmm.fused_attention(*leaves, causal=True, return_lse=True)
    assert out.shape == q.shape and lse.shape == (B, 4, sq)
    assert (out == 0).all() and (lse == float("inf")).all()  # Sk = 0: every row sees no key
    grads = torch.autograd.grad(out.float().sum() + lse.masked_fill(lse.isinf(), 0).sum(), leaves)
    for t, g in zip(leaves, grads):
        assert g.shape == t.shape and (g == 0).all()


# ---------------------------------------------------------------------------------------------
# the raw ops, the module, SDPA compatibility
# ---------------------------------------------------------------------------------------------
def test_raw_op_as_written(device):
    """torch.ops.mmm.fused_attention(q, k, v, causal=False, scale=None) works exactly as written
    and returns out only, as scaled_dot_product_attention."""
    q, k, v = make_qkv((2, 4, 4, 64, 64, 32), BF16, device, seed=1)
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    for out in (torch.ops.mmm.fused_attention(q, k, v), torch.ops.mmm.fused_attention(q, k, v, False, None),
                torch.ops.mmm.fused_attention(q, k, v, causal=False, scale=None)):
        assert isinstance(out, torch.Tensor) and out.shape == q.shape and out.dtype == BF16
        torch.testing.assert_close(out.float(), want, rtol=0, atol=2e-2)
    out = torch.ops.mmm.fused_attention(q, k, v, True, 0.3)
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, scale=0.3)
    torch.testing.assert_close(out.float(), want, rtol=0, atol=2e-2)
    out = torch.ops.mmm.fused_attention(q, k, v, True, 0.3, window_left=4, window_right=-1)
    assert torch.equal(out, mmm.fused_attention(q, k, v, causal=True, scale=0.3, window=(4, 7)))


def test_raw_forward_op_outputs(device):
    q, k, v = make_qkv((2, 4, 2, 33, 45, 24), BF16, device)
    out, lse = torch.ops.mmm.fused_attention_forward(q, k, v, 0.2, 3, 0)
    assert out.shape == q.shape and out.dtype == BF16 and lse.shape == (2, 4, 33) and lse.dtype == F32
    out2, lse2 = mmm.fused_attention(q, k, v, scale=0.2, window=(3, 0), return_lse=True)
    assert torch.equal(out, out2) and torch.equal(lse, lse2)
    assert torch.equal(out, mmm.fused_attention(q, k, v, scale=0.2, window=(3, 5), causal=True))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads", ["mha", "gqa", "mqa"])
def test_matches_sdpa(device, heads, causal):
    hq, hkv = HEADS[heads]
    q, k, v = make_qkv((2, hq, hkv, 96, 96, 64), BF16, device, seed=6)
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal, enable_gqa=hkv != hq)
    torch.testing.assert_close(mmm.fused_attention(q, k, v, causal=causal).float(), want, rtol=0, atol=2e-2)


def test_module(device):
    q, k, v = make_qkv((2, 4, 2, 50, 60, 32), BF16, device, seed=8)
    mod = mmm.nn.FusedAttention(causal=True, window=(10, -1), scale=0.3)
    assert list(mod.parameters()) == [] and mod.state_dict() == {}
    assert "causal=True" in repr(mod) and "window=(10, -1)" in repr(mod)
    assert torch.equal(mod(q, k, v), mmm.fused_attention(q, k, v, causal=True, window=(10, -1), scale=0.3))
    assert torch.equal(mmm.nn.FusedAttention()(q, k, v), mmm.fused_attention(q, k, v))


def test_no_grad_and_partial_grads(device):
    q, k, v = make_qkv((1, 2, 2, 40, 40, 16), BF16, device, seed=9)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    with torch.no_grad():
        out = mmm.fused_attention(qg, kg, vg, causal=True)
    assert not out.requires_grad
    out = mmm.fused_attention(q, k, vg, causal=True)  # only v needs a gradient
    (dv,) = torch.autograd.grad(out.float().sum(), vg)
    full = torch.autograd.grad(mmm.fused_attention(qg, kg, vg, causal=True).float().sum(), (qg, kg, vg))
    assert torch.equal(dv, full[2])
    assert torch.equal(out, mmm.fused_attention(q, k, v, causal=True))


def test_expanded_grad_output(device):
    """out.sum().backward() hands the backward a gradient with stride 0 everywhere."""
    q, k, v = make_qkv((2, 2, 1, 30, 50, 16), BF16, device, seed=10)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    grads = torch.autograd.grad(mmm.fused_attention(*leaves, causal=True).sum(), leaves)
    ones = torch.ones(q.shape, dtype=BF16, device=device)
    want = torch.autograd.grad(mmm.fused_attention(*leaves, causal=True), leaves, ones)
    for g, w in zip(grads, want):
        assert torch.equal(g, w)


def test_double_backward_raises(device):
    q, k, v = (t.requires_grad_() for t in make_qkv((1, 1, 1, 8, 8, 8), BF16, device))
    out = mmm.fused_attention(q, k, v)
    (dq,) = torch.autograd.grad(out.float().sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        dq.float().sum().backward()


# ---------------------------------------------------------------------------------------------
# opcheck, torch.compile, gradcheck, determinism
# ---------------------------------------------------------------------------------------------
def _opcheck_inputs(device, case):
    dtype = BF16 if device == "cuda" else F32
    shape, layout = {
        "gqa": ((2, 4, 2, 33, 45, 16), "bhsd"),
        "bshd": ((1, 3, 3, 20, 20, 8), "bshd"),
        "sq_gt_sk": ((1, 2, 1, 30, 10, 8), "bhsd"),
    }[case]
    return make_qkv(shape, dtype, device, layout=layout, seed=14)


OPCHECK_CASES = ["gqa", "bshd", "sq_gt_sk"]


@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck_forward(device, case):
    q, k, v = (t.requires_grad_() for t in _opcheck_inputs(device, case))
    torch.library.opcheck(torch.ops.mmm.fused_attention_forward.default, (q, k, v, 0.3, -1, 0))
    torch.library.opcheck(torch.ops.mmm.fused_attention_forward.default, (q, k, v, 0.3, 3, 2))


@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck_backward(device, case):
    q, k, v = _opcheck_inputs(device, case)
    out, lse = torch.ops.mmm.fused_attention_forward(q, k, v, 0.3, -1, 0)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device, out.dtype)
    for dlse in (None, torch.randn(lse.shape, generator=torch.Generator().manual_seed(2)).to(device)):
        torch.library.opcheck(torch.ops.mmm.fused_attention_backward.default,
                              (dout, dlse, q, k, v, out, lse, 0.3, -1, 0))


@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck_public_op(device, case):
    q, k, v = (t.requires_grad_() for t in _opcheck_inputs(device, case))
    torch.library.opcheck(torch.ops.mmm.fused_attention.default, (q, k, v))
    torch.library.opcheck(torch.ops.mmm.fused_attention.default, (q, k, v, True, 0.5),
                          dict(window_left=4, window_right=-1))


@pytest.fixture
def dynamo_reset():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class _Block(torch.nn.Module):
    """A self-attention layer as models write it: one qkv projection, (B, S, H, D) views."""

    def __init__(self, api, dim=64, heads=4):
        super().__init__()
        self.api, self.heads = api, heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.attn = mmm.nn.FusedAttention(causal=True)

    def forward(self, x):
        B, S, C = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.heads, C // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if self.api == "public":
            o = mmm.fused_attention(q, k, v, causal=True, window=(16, -1))
        elif self.api == "raw":
            o = torch.ops.mmm.fused_attention(q, k, v, True, None)
        elif self.api == "module":
            o = self.attn(q, k, v)
        else:  # "lse"
            o, lse = mmm.fused_attention(q, k, v, causal=True, return_lse=True)
            o = o * torch.sigmoid(lse)[..., None].to(o.dtype)
        return self.proj(o.transpose(1, 2).reshape(B, S, C))


@pytest.mark.parametrize("backend,api", [("aot_eager", "public"), ("aot_eager", "raw"), ("aot_eager", "module"),
                                         ("aot_eager", "lse"), ("inductor", "public")])
def test_compile(device, backend, api, dynamo_reset):
    dtype = BF16 if device == "cuda" else F32
    torch.manual_seed(0)
    block = _Block(api).to(device, dtype)
    x = torch.randn(2, 37, 64, device=device, dtype=dtype, requires_grad=True)
    out_e = block(x)
    g_e = torch.autograd.grad(out_e.float().square().sum(), [x, *block.parameters()])
    cblock = torch.compile(block, backend=backend, fullgraph=True)
    xc = x.detach().clone().requires_grad_()
    out_c = cblock(xc)
    g_c = torch.autograd.grad(out_c.float().square().sum(), [xc, *block.parameters()])
    tol = dict(rtol=0, atol=0) if backend == "aot_eager" else dict(rtol=1e-4, atol=1e-4)
    if dtype != F32 and backend != "aot_eager":
        tol = dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out_c, out_e, **tol)
    for a, e in zip(g_c, g_e):
        torch.testing.assert_close(a, e, **tol)
    with torch.no_grad():  # and the inference graph
        torch.testing.assert_close(cblock(x), out_e, **tol)


def test_compile_dynamic_shapes(dynamo_reset):
    f = torch.compile(lambda q, k, v: mmm.fused_attention(q, k, v, causal=True) * 2, backend="aot_eager",
                      fullgraph=True, dynamic=True)
    for sq, sk in ((20, 30), (41, 17), (64, 64)):
        q, k, v = make_qkv((1, 2, 1, sq, sk, 16), F32, "cpu", seed=sq)
        torch.testing.assert_close(f(q, k, v), mmm.fused_attention(q, k, v, causal=True) * 2, rtol=0, atol=0)


@pytest.mark.parametrize("case", ["full", "causal_gqa", "window", "sq_gt_sk_causal", "lse"])
def test_gradcheck(case):
    shape, causal, window, lse = {
        "full": ((1, 2, 2, 5, 7, 3), False, (-1, -1), False),
        "causal_gqa": ((1, 4, 2, 6, 6, 4), True, (-1, -1), False),
        "window": ((2, 2, 1, 7, 5, 3), False, (1, 2), False),
        "sq_gt_sk_causal": ((1, 2, 1, 7, 4, 3), True, (-1, -1), False),
        "lse": ((1, 2, 1, 6, 8, 3), True, (2, -1), True),
    }[case]
    q, k, v = (t.requires_grad_() for t in make_qkv(shape, F64, "cpu", seed=15))

    def fn(q, k, v):
        return mmm.fused_attention(q, k, v, causal=causal, window=window, return_lse=lse)

    assert torch.autograd.gradcheck(fn, (q, k, v))


def _grads(q, k, v, dout, threads=None, **kw):
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        out = mmm.fused_attention(*leaves, **kw)
        return (out, *torch.autograd.grad(out, leaves, dout))
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("heads", ["mha", "mqa"])
def test_deterministic(device, heads):
    skip_if_unsupported(device, head_dim=64)
    hq, hkv = HEADS[heads]
    shape = (1 if heads == "mqa" else 2, hq, hkv, 300, 250, 64)
    q, k, v = make_qkv(shape, BF16, device, seed=16)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(3)).to(device, BF16)
    a, b = (_grads(q, k, v, dout, causal=True, deterministic=True) for _ in range(2))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    if device == "cpu":
        # One thread runs the fused backward (dQ with dK/dV per kv head), several the split one
        # (dK/dV per key tile, dQ per query tile) when there are few kv heads: the same sums.
        # The forward groups each thread's neighbouring query tiles, so 3 threads split groups
        # mid-head: the same sums again.
        for threads in (1, 3):
            c = _grads(q, k, v, dout, threads=threads, causal=True, deterministic=True)
            for x, y in zip(a, c):
                assert torch.equal(x, y)
        # The CPU backward has one mode: deterministic=False (and None) run it too.
        for mode in (False, None):
            c = _grads(q, k, v, dout, causal=True, deterministic=mode)
            for x, y in zip(a, c):
                assert torch.equal(x, y)


# ---------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------
def _bad_cases():
    def mk(q=(2, 4, 16, 32), k=(2, 2, 20, 32), v=None, dtype=F32, kdtype=None, vdtype=None):
        return (torch.randn(q, dtype=dtype), torch.randn(k, dtype=kdtype or dtype),
                torch.randn(v or k, dtype=vdtype or dtype))

    return {
        "batch": (lambda: mk(k=(3, 2, 20, 32)), {}, r"k must have q's batch size \(dim 0\) 2"),
        "head_dim": (lambda: mk(k=(2, 2, 20, 16)), {}, r"k must have q's head_dim \(last dim\) 32"),
        "v_shape_heads": (lambda: mk(v=(2, 4, 20, 32)), {}, r"v must have k's shape"),
        "v_shape_seq": (lambda: mk(v=(2, 2, 21, 32)), {}, r"v must have k's shape"),
        "heads_not_multiple": (lambda: mk(q=(2, 6, 16, 32), k=(2, 4, 20, 32)), {},
                               r"query heads \(q.size\(1\) = 6\) must be a multiple of the number of key/value "
                               r"heads \(k.size\(1\) = 4\)"),
        "heads_more_kv": (lambda: mk(q=(2, 2, 16, 32), k=(2, 4, 20, 32)), {}, r"q.size\(1\) = 2"),
        "k_dtype": (lambda: mk(kdtype=F64), {}, r"k must have q's dtype"),
        "v_dtype": (lambda: mk(dtype=BF16, vdtype=F16), {}, r"v must have q's dtype"),
        "int_dtype": (lambda: tuple(torch.ones(2, 2, 8, 8, dtype=torch.int32) for _ in range(3)), {},
                      r"q must be float32, float16, bfloat16 or float64, got Int"),
        "q_3d": (lambda: (torch.randn(4, 16, 32), *mk()[1:]), {}, r"q must be 4-D"),
        "k_5d": (lambda: (mk()[0], torch.randn(2, 2, 1, 20, 32), mk()[2]), {}, r"k must be 4-D"),
        "head_dim_257": (lambda: mk(q=(1, 1, 4, 257), k=(1, 1, 4, 257)), {},
                         r"head_dim \(q.size\(3\)\) must be in \[1, 256\], got 257"),
        "head_dim_0": (lambda: mk(q=(1, 1, 4, 0), k=(1, 1, 4, 0)), {},
                       r"head_dim \(q.size\(3\)\) must be in \[1, 256\], got 0"),
        "window_left": (lambda: mk(), dict(window=(-2, 0)), r"window_left must be >= -1"),
        "window_right": (lambda: mk(), dict(window=(3, -5)), r"window_right must be >= -1"),
        "k_device": (lambda: (mk()[0], mk()[1].to("meta"), mk()[2]), {}, r"k is on meta but q is on cpu"),
    }


def test_bad_deterministic():
    """deterministic is a bool or None (the ops' schemas check their own arguments)."""
    q, k, v = (torch.randn(1, 2, 8, 16) for _ in range(3))
    with pytest.raises(RuntimeError, match=r"deterministic must be True, False or None, got 'yes'"):
        mmm.fused_attention(q, k, v, deterministic="yes")


@pytest.mark.parametrize("api", ["public", "raw", "raw_forward", "fake"])
@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_inputs(case, api):
    make, kwargs, match = _bad_cases()[case]
    q, k, v = make()
    left, right = kwargs.get("window", (-1, -1))
    if api == "fake":  # the fake kernel (what torch.compile traces) raises the same errors
        from torch._subclasses.fake_tensor import FakeTensorMode

        if case == "k_device":
            pytest.skip("meta tensors are already fake")
        with FakeTensorMode() as mode:
            q, k, v = (mode.from_tensor(t) for t in (q, k, v))
            with pytest.raises(RuntimeError, match=match):
                torch.ops.mmm.fused_attention_forward(q, k, v, 0.5, left, right)
        return
    with pytest.raises(RuntimeError, match=match):
        if api == "public":
            mmm.fused_attention(q, k, v, **kwargs)
        elif api == "raw":
            torch.ops.mmm.fused_attention(q, k, v, window_left=left, window_right=right)
        else:
            torch.ops.mmm.fused_attention_forward(q, k, v, 0.5, left, right)


def test_bad_window_argument():
    q, k, v = make_qkv((1, 1, 1, 4, 4, 8), F32, "cpu")
    for w in (3, (1, 2, 3), None):
        with pytest.raises(RuntimeError, match="window must be a pair"):
            mmm.fused_attention(q, k, v, window=w)


def test_backward_op_bad_inputs():
    q, k, v = make_qkv((1, 2, 1, 6, 6, 8), F32, "cpu")
    out, lse = torch.ops.mmm.fused_attention_forward(q, k, v, 0.3, -1, -1)
    with pytest.raises(RuntimeError, match="grad_out must have shape"):
        torch.ops.mmm.fused_attention_backward(out[:, :1], None, q, k, v, out, lse, 0.3, -1, -1)
    with pytest.raises(RuntimeError, match="lse must have shape"):
        torch.ops.mmm.fused_attention_backward(out, None, q, k, v, out, lse.double(), 0.3, -1, -1)
    with pytest.raises(RuntimeError, match="grad_lse must have shape"):
        torch.ops.mmm.fused_attention_backward(out, lse[:, :, 1:], q, k, v, out, lse, 0.3, -1, -1)


@pytest.mark.cuda
def test_bad_inputs_cuda():
    require_cuda_head_dim(64)
    q, k, v = make_qkv((1, 2, 2, 16, 16, 64), BF16, "cuda")
    with pytest.raises(RuntimeError, match=r"q must be float16 or bfloat16 on CUDA, got Float.*cast"):
        mmm.fused_attention(q.float(), k.float(), v.float())
    with pytest.raises(RuntimeError, match=r"k is on cpu but q is on cuda"):
        mmm.fused_attention(q, k.cpu(), v)
    qd, kd, vd = make_qkv((1, 2, 2, 16, 16, 20), BF16, "cuda")
    with pytest.raises(RuntimeError, match=r"head_dim.*multiple of 8"):
        mmm.fused_attention(qd, kd, vd)


# ---------------------------------------------------------------------------------------------
# CUDA only: shapes that stress the grid and the compiled head dims, CPU/CUDA agreement
# ---------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("d", [8, 32, 40, 64, 96, 120, 128, 136, 192, 200, 256])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_cuda_head_dims_long(d, causal):
    q, k, v = make_qkv((1, 2, 1, 2049, 2049, d), BF16, "cuda", seed=d)
    check(q, k, v, causal=causal)


@pytest.mark.cuda
@pytest.mark.parametrize("d", [64, 128, 256])  # rings of 5, 3, 3 K/V buffers; 64- and 32-key tiles
@pytest.mark.parametrize("window", [(300, 100), (-1, 200), (500, -1), (0, 0)], ids=_id)
@pytest.mark.parametrize("seqs", [(1000, 1000), (700, 1100), (1100, 700)], ids=_id)
def test_cuda_pipeline_windows(d, window, seqs):
    """Many K/V tiles per CTA through the cp.async ring (K and V in turn), with windows wide
    enough that some tiles are fully visible (the unmasked path) next to tiles the window cuts
    (the masked path), tiles skipped on both sides, and a ragged last tile."""
    q, k, v = make_qkv((1, 2, 1, *seqs, d), BF16, "cuda", layout="bshd", seed=d + window[0])
    check(q, k, v, window=window, return_lse=True)


@pytest.mark.cuda
@pytest.mark.parametrize("d", [32, 40, 64, 80, 96, 120, 128])  # the atomic-dQ kernel's head dims, padded or not
@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "atomic"])
@pytest.mark.parametrize("mask", ["full", "causal", "w16_-1", "w3_5"])
@pytest.mark.parametrize("seqs", [(700, 1100), (1100, 700), (129, 255)], ids=_id)
def test_cuda_backward_modes(d, deterministic, mask, seqs):
    """Both backward modes at the head dims where they are different kernels (on GPUs with the
    shared memory for the atomic one; elsewhere both run the deterministic kernels): MQA,
    windows, ragged key blocks of 128 and query steps of 64, the (B, S, H, D) layout, and an odd
    number of query rows (3 x 129: where the dq accumulator follows the row sums in the scratch)."""
    causal, window = MASKS[mask]
    q, k, v = make_qkv((1, 3, 1, *seqs, d), BF16, "cuda", layout="bshd", seed=d + seqs[0])
    check(q, k, v, causal=causal, window=window, return_lse=True, deterministic=deterministic)


@pytest.mark.cuda
@pytest.mark.parametrize("d", [32, 64, 96, 128])
def test_cuda_backward_modes_agree(d):
    """dK and dV are the same sums in the same order in both modes (bitwise); dQ differs only by
    the order of the atomic fp32 adds, and the deterministic mode repeats itself bitwise."""
    require_cuda_head_dim(d)
    q, k, v = make_qkv((2, 4, 2, 1000, 900, d), BF16, "cuda", seed=d)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(5)).to("cuda", BF16)
    det = _grads(q, k, v, dout, causal=True, deterministic=True)
    det2 = _grads(q, k, v, dout, causal=True, deterministic=True)
    fast = _grads(q, k, v, dout, causal=True, deterministic=False)
    for x, y in zip(det, det2):
        assert torch.equal(x, y)
    assert torch.equal(det[0], fast[0])  # the forward
    assert torch.equal(det[2], fast[2]) and torch.equal(det[3], fast[3])  # dk, dv
    torch.testing.assert_close(fast[1].float(), det[1].float(), rtol=0, atol=2e-2 * det[1].abs().max().item())


@pytest.mark.cuda
def test_cuda_deterministic_follows_torch():
    """deterministic=None follows torch.use_deterministic_algorithms."""
    require_cuda_head_dim(64)
    q, k, v = make_qkv((1, 4, 4, 600, 600, 64), BF16, "cuda", seed=3)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(6)).to("cuda", BF16)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        a, b = (_grads(q, k, v, dout) for _ in range(2))
    finally:
        torch.use_deterministic_algorithms(was)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.cuda
def test_cuda_many_batch_heads():
    """batch x heads > 65535 (more blocks than one grid dimension holds)."""
    q, k, v = make_qkv((2, 33000, 33000, 3, 5, 8), F16, "cuda", seed=17)
    check(q, k, v, causal=True)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [F16, BF16], ids=_id)
def test_cuda_matches_cpu(dtype):
    require_cuda_head_dim(64)
    q, k, v = make_qkv((2, 4, 2, 300, 257, 64), dtype, "cpu", seed=18)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    cpu = _grads(q, k, v, dout, causal=True)
    gpu = _grads(q.cuda(), k.cuda(), v.cuda(), dout.cuda(), causal=True)
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a.cpu().float(), b.float(), rtol=0, atol=2e-2)


# A small CUDA set for compute-sanitizer (memcheck, racecheck): partial tiles, GQA, each mask
# kind, a non-compiled head dim, rows without keys, strided views, an empty key sequence.
SANITIZER_CASES = {
    "gqa_causal_d64": ((1, 4, 2, 70, 70, 64), True, (-1, -1), "bhsd"),
    "window_d128_sq_lt_sk": ((1, 2, 2, 33, 97, 128), False, (7, 3), "bshd"),
    "d40_sq_gt_sk": ((2, 2, 1, 90, 31, 40), True, (-1, -1), "bhsd"),
    "mqa_d256": ((1, 3, 1, 65, 65, 256), False, (-1, -1), "bshd"),
    "d32_one_row": ((1, 1, 1, 1, 130, 32), False, (-1, -1), "bhsd"),
    "det_gqa_d128": ((1, 4, 2, 150, 140, 128), True, (-1, -1), "bshd"),  # deterministic=True below
}


@pytest.mark.cuda
@pytest.mark.parametrize("case", list(SANITIZER_CASES))
def test_attention_sanitizer_subset(case):
    shape, causal, window, layout = SANITIZER_CASES[case]
    q, k, v = make_qkv(shape, BF16, "cuda", layout=layout, seed=19)
    check(q, k, v, causal=causal, window=window, return_lse=True, deterministic=case.startswith("det_") or None)


@pytest.mark.cuda
def test_attention_empty_sanitizer_subset():
    require_cuda_head_dim(64)
    q, k, v = make_qkv((2, 2, 2, 9, 0, 64), BF16, "cuda")
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = mmm.fused_attention(*leaves)
    assert (out == 0).all()
    (dq,) = torch.autograd.grad(out.float().sum(), leaves[0])
    assert (dq == 0).all()


# ---------------------------------------------------------------------------------------------
# the compiled head dims (CMake MMM_ATTENTION_HEAD_DIMS): reported, routed, and a clear error
# ---------------------------------------------------------------------------------------------
def test_build_info_head_dims():
    info = mmm.build_info()
    dims = info["attention_head_dims"]
    if not info["cuda_kernels"]:
        assert dims == []
        return
    assert dims and dims == sorted(set(dims)) and set(dims) <= set(ALL_CUDA_HEAD_DIMS), dims


def _fake_cuda_forward(d):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(1, 2, 5, d, device="cuda", dtype=BF16)
        return torch.ops.mmm.fused_attention_forward(q, q, q, 0.5, -1, -1)


def test_fake_kernel_knows_the_compiled_head_dims(monkeypatch):
    """The fake kernel (what torch.compile traces) routes like the launcher: a head dim runs on the
    smallest compiled one >= it, and one above every compiled head dim raises naming the set."""
    from mmm.ops import attention

    monkeypatch.setattr(attention, "_compiled_dims", (64, 128))
    for d in (8, 64, 72, 128):
        out, lse = _fake_cuda_forward(d)
        assert out.shape == (1, 2, 5, d) and lse.shape == (1, 2, 5)
    with pytest.raises(RuntimeError, match=r"head_dim \(q.size\(3\)\) 136 has no CUDA kernel in this build of mmm, "
                                           r"which compiled head dims 64, 128 only \(rebuild with MMM_ATTENTION_HEAD_DIMS"):
        _fake_cuda_forward(136)


@pytest.mark.cuda
def test_cuda_head_dim_not_compiled():
    dims = mmm.build_info()["attention_head_dims"]
    if max(dims) == 256:
        pytest.skip(f"every head dim up to 256 has a kernel in this build ({dims})")
    d = max(dims) + 8
    q, k, v = make_qkv((1, 2, 2, 16, 16, d), BF16, "cuda")
    match = rf"head_dim \(q.size\(3\)\) {d} has no CUDA kernel in this build of mmm"
    with pytest.raises(RuntimeError, match=match):
        mmm.fused_attention(q, k, v)
    out, lse = torch.ops.mmm.fused_attention_forward(q.cpu(), k.cpu(), v.cpu(), 0.5, -1, -1)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.mmm.fused_attention_backward(out.cuda(), None, q, k, v, out.cuda(), lse.cuda(), 0.5, -1, -1)


# ---------------------------------------------------------------------------------------------
# the kernels' shared-memory primitives (swizzled tiles, cp.async loader, ldmatrix fragments):
# tests/cuda/test_attention_primitives.cu, compiled wherever nvcc is, run where there is a GPU
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def primitives_binary(tmp_path_factory):
    return build_cuda_test("test_attention_primitives", tmp_path_factory.mktemp("attention"))


def test_attention_primitives_compile(primitives_binary):
    assert primitives_binary.exists()


@pytest.mark.cuda
def test_attention_primitives_cuda(primitives_binary):
    run_cuda_test(primitives_binary)


# ---------------------------------------------------------------------------------------------
# The CUDA launcher and kernels (every compiled head dim, each with paths of its own: 32, 64, 96,
# 128, 192, 256) run on the host: tests/emulate/attention.cpp via tests/emulate/run.sh, one fiber
# per CUDA thread, ldmatrix / mma.sync / cp.async modelled from the PTX ISA
# (tests/emulate/ptx_on_cpu.h), against the CPU twin; under ThreadSanitizer and with the memory
# counts the "quick" subset (every kernel path, fewer shapes). Opt-in (see run_emulation), ~1.5
# min build, ~2 min run.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sanitizer", emulation_sanitizers())
def test_cuda_kernels_on_cpu_threads(tmp_path, sanitizer, monkeypatch):
    monkeypatch.setenv("MMM_EMULATE_ATTENTION_DIMS", os.environ.get("MMM_EMULATE_ATTENTION_DIMS", "all"))
    out = run_emulation("attention", [] if sanitizer == "address" else ["quick"], tmp_path, sanitizer)
    assert "all ok" in out and "self-test: ok" in out, out[-4000:]
