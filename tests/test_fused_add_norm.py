"""Tests for mmm.fused_add_norm, its raw op torch.ops.mmm.fused_add_norm and mmm.nn.FusedAddNorm.

    h   = dropout(x, p) + residual
    y   = normalize(h) * weight + bias          (LayerNorm, or RMSNorm when rms=True)
    out = act(y)                                (none | gelu (erf) | gelu_tanh)
    returns out, or (out, h) when prenorm=True

Accuracy rule (the one FlashAttention's tests use): with `ref` the plainest PyTorch expression
evaluated in float64 on upcast copies of the inputs (the "truth"), and `ref_lowp` the *same*
expression evaluated by PyTorch in x's dtype, the kernel must satisfy

    max|kernel - ref| <= 2 * max|ref_lowp - ref| + atol

for every output and every gradient. The truth is float64 rather than float32 so that the rule
still means something for float32 inputs, where "PyTorch in low precision" is float32 itself.

Every test that takes a `device` argument runs on CPU and, marked `cuda`, on CUDA (see
conftest.py); on a machine without a GPU the CUDA versions are collected and skipped.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import mmm
from conftest import emulation_sanitizers, run_emulation

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
ACTIVATIONS = ["none", "gelu", "gelu_tanh"]
DTYPE_NAMES = {F32: "fp32", F16: "fp16", BF16: "bf16", F64: "fp64"}

# The precision "PyTorch doing the same math" uses for the low-precision reference. (The op
# documents float32 statistics for fp32/fp16/bf16 inputs and float64 ones for float64 inputs.)
LOWP = {F32: F32, F16: F16, BF16: BF16, F64: F64}

# Forward atol: about one float32 ulp of O(1) values for fp32/fp64 (the low-precision reference
# and the kernel round differently, and a max over many elements can catch a one-ulp difference
# the reference happens not to have), and a small fraction of an fp16/bf16 ulp of O(1) values.
FWD_ATOL = {F32: 1e-5, F64: 1e-12, F16: 1e-3, BF16: 1e-3}
# Gradient atol is a bit larger: dx = rstd * (w*dy - mean(w*dy) - xhat * mean(w*dy*xhat)) is a
# difference of reductions over N whose float32 summation order differs between the kernel and
# PyTorch, and dweight/dbias are reductions over rows (O(sqrt(rows)) magnitudes), so the
# kernel's rounding is not bounded elementwise by PyTorch's even when both are equally accurate.
BWD_ATOL = {F32: 1e-4, F64: 1e-11, F16: 2e-3, BF16: 4e-3}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def max_abs_err(a, b):
    if a.numel() == 0:
        return 0.0
    return (a.double() - b.double()).abs().max().item()


def assert_close_fa(out, ref_fp32, ref_lowp, atol, name="out"):
    """FlashAttention's rule: max|out - ref| <= 2 * max|ref_lowp - ref| + atol.

    `ref_fp32` is the high-precision truth (float64 here, see the module docstring); `ref_lowp`
    is PyTorch computing the same expression in the kernel's working precision.
    """
    assert out.shape == ref_fp32.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref_fp32.shape)}"
    err = max_abs_err(out, ref_fp32)
    err_lowp = max_abs_err(ref_lowp, ref_fp32)
    assert not math.isnan(err), f"{name}: kernel output contains NaN"
    assert err <= 2 * err_lowp + atol, (
        f"{name}: max|kernel - ref| = {err:.3e} > 2 * max|pytorch_lowp - ref| = {2 * err_lowp:.3e}"
        f" + atol {atol:.1e}"
    )


def reference(x, weight, bias, residual, *, eps, rms, activation, keep=None, p=0.0,
              dtype, h_dtype):
    """The plainest PyTorch expression of the op, computed in `dtype` (the residual stream h in
    `h_dtype`). `keep` is the boolean dropout mask (elements kept), or None. Returns (out, h)."""
    hx = x.to(dtype)
    if keep is not None:
        hx = hx * keep.to(dtype) * (1.0 / (1.0 - p))
    h = hx.to(h_dtype)
    if residual is not None:
        h = h + residual.to(h_dtype)
    hn = h.to(dtype)
    if rms:
        y = hn * torch.rsqrt(hn.pow(2).mean(-1, keepdim=True) + eps)
    else:
        y = F.layer_norm(hn, hn.shape[-1:], eps=eps)
    if weight is not None:
        y = y * weight.to(dtype)
    if bias is not None:
        y = y + bias.to(dtype)
    if activation == "gelu":
        y = F.gelu(y)
    elif activation == "gelu_tanh":
        y = F.gelu(y, approximate="tanh")
    else:
        assert activation == "none"
    return y, h


def residual_out_dtype(x, residual, residual_in_fp32):
    if residual_in_fp32:
        return F32
    return residual.dtype if residual is not None else x.dtype


def recover_keep(shape, dtype, device, p, seed):
    """The dropout mask mmm.fused_add_norm draws after torch.manual_seed(seed) for this shape:
    with x = ones and nothing else, residual_out = keep / (1 - p)."""
    torch.manual_seed(seed)
    ones = torch.ones(shape, dtype=dtype, device=device)
    _, h = mmm.fused_add_norm(ones, None, None, None, dropout_p=p, prenorm=True,
                              residual_in_fp32=True)
    keep = h != 0
    expected = torch.full((), 1.0 / (1.0 - p), dtype=torch.float64)
    assert torch.allclose(h[keep].double(), expected.expand(int(keep.sum())), rtol=1e-6, atol=0), (
        "kept elements of the dropout mask are not scaled by 1/(1-p)")
    return keep


def make_tensor(shape, dtype, device, gen, scale=1.0, shift=0.0):
    t = torch.randn(shape, generator=gen, dtype=torch.float32) * scale + shift
    return t.to(dtype=dtype, device=device)


def make_inputs(shape, dtype, device, *, wdtype=None, rdtype=None, weight=True, bias=True,
                residual=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = shape[-1]
    x = make_tensor(shape, dtype, device, gen)
    w = make_tensor((n,), wdtype or dtype, device, gen, scale=0.5, shift=1.0) if weight else None
    b = make_tensor((n,), wdtype or dtype, device, gen, scale=0.5) if bias else None
    r = make_tensor(shape, rdtype or dtype, device, gen) if residual else None
    return x, w, b, r


def check_op(x, weight, bias, residual, *, eps=1e-5, rms=False, activation="none",
             dropout_p=0.0, prenorm=False, residual_in_fp32=False, seed=1234, grad=True,
             grad_seed=7, fwd_atol=None, bwd_atol=None):
    """Run mmm.fused_add_norm forward (and backward) on these inputs, as given (strides
    included), and compare every output and gradient with the reference by the FA rule."""
    dtype, device = x.dtype, x.device
    fwd_atol = FWD_ATOL[dtype] if fwd_atol is None else fwd_atol
    bwd_atol = BWD_ATOL[dtype] if bwd_atol is None else bwd_atol
    # detach() keeps the strides, so the kernel sees the layout the caller built.
    leaves = [t.detach().requires_grad_(grad) if t is not None else None
              for t in (x, weight, bias, residual)]
    xk, wk, bk, rk = leaves
    opts = dict(eps=eps, rms=rms, activation=activation)

    torch.manual_seed(seed)
    res = mmm.fused_add_norm(xk, wk, bk, rk, dropout_p=dropout_p, prenorm=prenorm,
                             residual_in_fp32=residual_in_fp32, **opts)
    if prenorm:
        assert isinstance(res, tuple) and len(res) == 2
        out, h = res
    else:
        assert isinstance(res, torch.Tensor)
        out, h = res, None
    hdtype = residual_out_dtype(x, residual, residual_in_fp32)
    assert out.dtype == dtype and out.shape == x.shape and out.device == device
    if prenorm:
        assert h.dtype == hdtype and h.shape == x.shape and h.device == device

    keep = None
    if dropout_p > 0:
        keep = recover_keep(x.shape, dtype, device, dropout_p, seed)

    # The truth: float64 upcast leaf copies.
    leaves64 = [t.detach().double().requires_grad_(grad) if t is not None else None
                for t in (x, weight, bias, residual)]
    out64, h64 = reference(*leaves64, keep=keep, p=dropout_p, dtype=F64, h_dtype=F64, **opts)
    # PyTorch in low precision: leaf copies in the inputs' own dtypes.
    leaves_lp = [t.detach().clone().requires_grad_(grad) if t is not None else None
                 for t in (x, weight, bias, residual)]
    out_lp, h_lp = reference(*leaves_lp, keep=keep, p=dropout_p, dtype=LOWP[dtype],
                             h_dtype=hdtype, **opts)

    assert_close_fa(out, out64, out_lp, fwd_atol, "out")
    if prenorm:
        assert_close_fa(h, h64, h_lp, fwd_atol, "residual_out")
    if not grad:
        return

    gen = torch.Generator().manual_seed(grad_seed)
    dout = make_tensor(x.shape, dtype, device, gen)
    outs, outs64, outs_lp, gouts = [out], [out64], [out_lp], [dout]
    if prenorm:
        dh = make_tensor(x.shape, hdtype, device, gen)
        outs.append(h), outs64.append(h64), outs_lp.append(h_lp), gouts.append(dh)
    names = ["x", "weight", "bias", "residual"]
    idx = [i for i, t in enumerate(leaves) if t is not None]
    grads = torch.autograd.grad(outs, [leaves[i] for i in idx], gouts)
    grads64 = torch.autograd.grad(outs64, [leaves64[i] for i in idx], [g.double() for g in gouts])
    grads_lp = torch.autograd.grad(outs_lp, [leaves_lp[i] for i in idx],
                                   [g.to(o.dtype) for g, o in zip(gouts, outs_lp)])
    for i, g, g64, glp in zip(idx, grads, grads64, grads_lp):
        assert g.dtype == leaves[i].dtype, f"grad of {names[i]} has dtype {g.dtype}"
        # dweight/dbias are sums over rows (magnitude ~ sqrt(rows)) and the kernel may sum in a
        # different order than PyTorch, so atol is relative to the gradient's scale when > 1.
        scale = max(1.0, g64.abs().max().item()) if g64.numel() else 1.0
        assert_close_fa(g, g64, glp, bwd_atol * scale, f"grad {names[i]}")


def _dt(name):
    return {"x": None, "fp32": F32}[name]


# ---------------------------------------------------------------------------------------------
# every option combination, at one small shape
# ---------------------------------------------------------------------------------------------
def _combo_params():
    params = []
    for dtype, rms, act, res, affine, wd, prenorm, rif, p in itertools.product(
            [F32, F16, BF16], [False, True], ACTIVATIONS, ["none", "x", "fp32"],
            ["wb", "w", "b", "none"], ["x", "fp32"], [False, True], [False, True], [0.0, 0.1]):
        if dtype == F32 and (res == "fp32" or wd == "fp32"):
            continue  # same as "x" for float32 inputs
        if affine == "none" and wd == "fp32":
            continue
        pid = "-".join([DTYPE_NAMES[dtype], "rms" if rms else "ln", act, f"res_{res}",
                        f"aff_{affine}", f"w_{wd}", "prenorm" if prenorm else "plain",
                        "rf32" if rif else "rx", f"p{p}"])
        params.append(pytest.param(dtype, rms, act, res, affine, wd, prenorm, rif, p, id=pid))
    return params


@pytest.mark.parametrize(
    "dtype,rms,activation,res,affine,wdtype,prenorm,residual_in_fp32,dropout_p", _combo_params())
def test_all_options(device, dtype, rms, activation, res, affine, wdtype, prenorm,
                     residual_in_fp32, dropout_p):
    x, w, b, r = make_inputs((2, 3, 37), dtype, device, wdtype=_dt(wdtype),
                             rdtype=None if res == "none" else _dt(res),
                             weight="w" in affine, bias="b" in affine, residual=res != "none")
    check_op(x, w, b, r, rms=rms, activation=activation, dropout_p=dropout_p, prenorm=prenorm,
             residual_in_fp32=residual_in_fp32)


# ---------------------------------------------------------------------------------------------
# sizes and dtypes, with one option combination per norm
# ---------------------------------------------------------------------------------------------
CPU_SHAPES = [(1, 1), (3, 1), (5, 7), (37, 7), (3, 1023), (17, 1023), (2, 4097), (2, 65536),
              (3, 5, 7), (3, 5, 1023), (2, 2, 4097), (70001, 8)]


def _shape_id(shape):
    return "x".join(map(str, shape))


@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("dtype", [F32, F16, BF16, F64], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=_shape_id)
def test_sizes_cpu(shape, dtype, rms):
    x, w, b, r = make_inputs(shape, dtype, "cpu", bias=not rms)
    check_op(x, w, b, r, rms=rms, activation="gelu" if rms else "none", prenorm=True)


CUDA_NS = [1, 7, 8, 1023, 1024, 4096, 4097, 8192, 16384, 16385, 65536]
CUDA_SHAPES = ([(rows, n) for n in CUDA_NS for rows in (1, 3, 1000)]
               + [(70001, 8), (66000, 1), (65537, 256), (3, 5, 4097), (7, 3, 16385)])


@pytest.mark.cuda
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=_shape_id)
def test_sizes_cuda(shape, dtype, rms):
    x, w, b, r = make_inputs(shape, dtype, "cuda", bias=not rms)
    check_op(x, w, b, r, rms=rms, activation="gelu" if rms else "none", prenorm=True)


@pytest.mark.cuda
@pytest.mark.parametrize("n", [1024, 4097, 16385, 65536])
def test_sizes_cuda_dropout_fp32_weight(n):
    x, w, b, r = make_inputs((5, n), BF16, "cuda", wdtype=F32, rdtype=F32)
    check_op(x, w, b, r, activation="gelu_tanh", dropout_p=0.1, prenorm=True,
             residual_in_fp32=True)


@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
def test_float64_matches_reference(rms, dropout_p):
    """float64 inputs are computed in float64: errors at float64 rounding level."""
    x, w, b, r = make_inputs((4, 33), F64, "cpu")
    check_op(x, w, b, r, rms=rms, activation="gelu", dropout_p=dropout_p, prenorm=True)


@pytest.mark.parametrize("eps", [0.0, 0.5])
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
def test_eps(device, eps, rms):
    x, w, b, r = make_inputs((6, 40), F32, device)
    check_op(x, w, b, r, eps=eps, rms=rms)


@pytest.mark.parametrize("dtype", [F32, BF16], ids=DTYPE_NAMES.get)
def test_large_mean_offset(device, dtype):
    """LayerNorm statistics must not lose the variance to cancellation when |mean| >> std."""
    gen = torch.Generator().manual_seed(3)
    x = make_tensor((8, 2048), dtype, device, gen, shift=100.0)
    r = make_tensor((8, 2048), dtype, device, gen, shift=-20.0)
    w = make_tensor((2048,), dtype, device, gen, scale=0.5, shift=1.0)
    check_op(x, w, None, r, prenorm=True)


@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("n", [1, 64, 1024])
def test_constant_rows(device, dtype, n):
    """Rows whose h is constant (zero variance, rstd = 1/sqrt(eps) ~ 316): the backward must
    not amplify the rounding of the stored residual_out into huge gradients."""
    gen = torch.Generator().manual_seed(9)
    x = torch.full((4, n), 0.3, dtype=dtype, device=device)
    r = torch.full((4, n), 1.7, dtype=dtype, device=device)
    w = make_tensor((n,), dtype, device, gen, scale=0.5, shift=1.0)
    b = make_tensor((n,), dtype, device, gen, scale=0.5)
    check_op(x, w, b, r, prenorm=True)


@pytest.mark.parametrize("dtype", [F32, F16, BF16, F64], ids=DTYPE_NAMES.get)
def test_output_dtypes(device, dtype):
    """out: x's dtype. residual_out: float32 if residual_in_fp32, else the residual's dtype,
    else x's dtype."""
    if device == "cuda" and dtype == F64:  # float64 is CPU-only
        with pytest.raises(RuntimeError, match=r"\bx\b"):
            mmm.fused_add_norm(torch.ones(3, 16, dtype=F64, device=device), None, None, None)
        return
    for rdtype, rif in itertools.product([None, dtype, F32], [False, True]):
        x, w, b, r = make_inputs((3, 16), dtype, device, rdtype=rdtype, residual=rdtype is not None)
        out, h = mmm.fused_add_norm(x, w, b, r, prenorm=True, residual_in_fp32=rif)
        want = F32 if rif else (rdtype or dtype)
        assert out.dtype == dtype, (rdtype, rif)
        assert h.dtype == want, f"residual {rdtype}, residual_in_fp32={rif}: residual_out {h.dtype}"


@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("rif", [False, True], ids=["rx", "rf32"])
def test_residual_out_bitwise(device, dtype, rif):
    """Without dropout, residual_out is exactly x + residual rounded once to its dtype."""
    x, w, b, r = make_inputs((9, 129), dtype, device)
    _, h = mmm.fused_add_norm(x, w, b, r, prenorm=True, residual_in_fp32=rif)
    hdtype = F32 if rif else dtype
    assert torch.equal(h, (x.float() + r.float()).to(hdtype))
    _, h = mmm.fused_add_norm(x, w, b, None, prenorm=True, residual_in_fp32=rif)
    assert torch.equal(h, x.to(hdtype))


# ---------------------------------------------------------------------------------------------
# layouts: non-contiguous and misaligned inputs, expanded gradients
# ---------------------------------------------------------------------------------------------
def _layout(kind, shape, dtype, device, gen):
    """A tensor of `shape` whose memory layout is `kind`."""
    if kind == "contiguous":
        return make_tensor(shape, dtype, device, gen)
    if kind == "col_stride2":  # last dim strided: x[:, ::2]
        base = make_tensor(shape[:-1] + (2 * shape[-1],), dtype, device, gen)
        return base[..., ::2]
    if kind == "row_pad3":  # row stride N + 3: rows not 8-element aligned
        base = make_tensor(shape[:-1] + (shape[-1] + 3,), dtype, device, gen)
        return base[..., : shape[-1]]
    if kind == "misaligned":  # data pointer offset by one element
        base = make_tensor(shape[:-1] + (shape[-1] + 1,), dtype, device, gen)
        return base[..., 1:]
    if kind == "transposed":  # (B, T, N) viewed as (T, B, N): leading dims don't collapse
        base = make_tensor((shape[1], shape[0]) + shape[2:], dtype, device, gen)
        return base.transpose(0, 1)
    if kind == "flat_offset":  # contiguous but storage offset 1
        base = make_tensor((math.prod(shape) + 1,), dtype, device, gen)
        return base[1:].view(shape)
    raise AssertionError(kind)


LAYOUTS = ["col_stride2", "row_pad3", "misaligned", "transposed", "flat_offset"]


@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("n", [40, 1029, 4096])
def test_noncontiguous(device, layout, dtype, n):
    gen = torch.Generator().manual_seed(11)
    shape = (3, 5, n)
    x = _layout(layout, shape, dtype, device, gen)
    r = _layout(layout, shape, dtype, device, gen)
    wbase = make_tensor((2 * n,), dtype, device, gen, scale=0.5, shift=1.0)
    w = wbase[::2] if layout == "col_stride2" else wbase[1: n + 1]
    b = make_tensor((n,), dtype, device, gen, scale=0.5)
    if layout != "contiguous":
        assert not (x.is_contiguous() and x.data_ptr() % 16 == 0)
    check_op(x, w, b, r, prenorm=True, dropout_p=0.1, activation="gelu")


@pytest.mark.parametrize("layout", ["row_pad3", "misaligned"])
@pytest.mark.parametrize("rows", [3, 70])
@pytest.mark.parametrize("odd_n", [False, True], ids=["n_mult8", "n_odd"])
def test_noncontiguous_big_rows(device, layout, rows, odd_n):
    gen = torch.Generator().manual_seed(12)
    shape = (rows, (4096 if device == "cpu" else 16384) + (5 if odd_n else 0))
    x = _layout(layout, shape, BF16, device, gen)
    r = _layout(layout, shape, F32, device, gen)
    w = make_tensor((shape[-1],), F32, device, gen, scale=0.5, shift=1.0)
    check_op(x, w, None, r, rms=True, prenorm=True, residual_in_fp32=True)


@pytest.mark.parametrize("prenorm", [False, True])
def test_expanded_and_noncontiguous_grad_outputs(device, prenorm):
    """out.sum().backward() hands the backward a stride-0 (expanded) gradient."""
    x, w, b, r = make_inputs((6, 50), F32, device)
    leaves = [t.clone().requires_grad_() for t in (x, w, b, r)]
    res = mmm.fused_add_norm(*leaves, activation="gelu", prenorm=prenorm)
    loss = res[0].sum() + res[1].sum() if prenorm else res.sum()
    grads = torch.autograd.grad(loss, leaves)
    leaves64 = [t.double().requires_grad_() for t in (x, w, b, r)]
    o64, h64 = reference(*leaves64, eps=1e-5, rms=False, activation="gelu", dtype=F64,
                         h_dtype=F64)
    loss64 = o64.sum() + h64.sum() if prenorm else o64.sum()
    grads64 = torch.autograd.grad(loss64, leaves64)
    for g, g64 in zip(grads, grads64):
        torch.testing.assert_close(g.double(), g64, rtol=1e-4, atol=1e-4)

    # A non-contiguous (transposed) gradient of the output.
    res = mmm.fused_add_norm(*leaves, activation="gelu", prenorm=prenorm)
    gen = torch.Generator().manual_seed(5)
    dout = make_tensor((50, 6), F32, device, gen).t()
    outs = list(res) if prenorm else [res]
    gouts = [dout] + ([make_tensor((50, 6), F32, device, gen).t()] if prenorm else [])
    grads = torch.autograd.grad(outs, leaves, gouts)
    o64, h64 = reference(*leaves64, eps=1e-5, rms=False, activation="gelu", dtype=F64,
                         h_dtype=F64)
    grads64 = torch.autograd.grad([o64, h64][: len(outs)], leaves64, [g.double() for g in gouts])
    for g, g64 in zip(grads, grads64):
        torch.testing.assert_close(g.double(), g64, rtol=1e-4, atol=1e-4)


def test_only_one_output_used(device):
    """With prenorm, a loss that uses only one of the two outputs (the other's grad undefined)."""
    x, w, b, r = make_inputs((4, 24), F32, device)
    for which in (0, 1):
        leaves = [t.clone().requires_grad_() for t in (x, w, b, r)]
        out, h = mmm.fused_add_norm(*leaves, rms=True, prenorm=True)
        (out if which == 0 else h).pow(2).sum().backward()
        leaves64 = [t.double().requires_grad_() for t in (x, w, b, r)]
        o64, h64 = reference(*leaves64, eps=1e-5, rms=True, activation="none", dtype=F64,
                             h_dtype=F64)
        (o64 if which == 0 else h64).pow(2).sum().backward()
        for t, t64 in zip(leaves, leaves64):
            got = t.grad if t.grad is not None else torch.zeros_like(t)
            want = t64.grad if t64.grad is not None else torch.zeros_like(t64)
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# gradcheck (float64, CPU)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
def test_gradcheck(rms, activation, dropout_p):
    gen = torch.Generator().manual_seed(21)
    x = torch.randn(3, 6, generator=gen, dtype=F64).requires_grad_()
    r = torch.randn(3, 6, generator=gen, dtype=F64).requires_grad_()
    w = (1 + 0.5 * torch.randn(6, generator=gen, dtype=F64)).requires_grad_()
    b = (0.5 * torch.randn(6, generator=gen, dtype=F64)).requires_grad_()

    def fn(x, r, w, b):
        torch.manual_seed(99)  # the same dropout mask for every evaluation
        return mmm.fused_add_norm(x, w, b, r, rms=rms, activation=activation,
                                  dropout_p=dropout_p, prenorm=True)

    # float64 inputs are computed in float64 (statistics included), so gradcheck's default
    # tolerances apply. check_undefined_grad (on by default) also feeds the backward a missing
    # gradient for one of the two outputs.
    assert torch.autograd.gradcheck(fn, (x, r, w, b))


# ---------------------------------------------------------------------------------------------
# dropout
# ---------------------------------------------------------------------------------------------
def test_dropout_reproducible(device):
    x, w, b, r = make_inputs((16, 300), BF16, device, wdtype=F32)

    def run(seed):
        leaves = [t.clone().requires_grad_() for t in (x, w, b, r)]
        if seed is not None:
            torch.manual_seed(seed)
        out, h = mmm.fused_add_norm(*leaves, activation="gelu", dropout_p=0.25, prenorm=True)
        (out.float().pow(2).sum() + h.float().sum()).backward()
        return [out, h] + [t.grad for t in leaves]

    a, b_, c = run(5), run(5), run(6)
    for t1, t2 in zip(a, b_):
        assert torch.equal(t1, t2)
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[1], c[1])
    assert not torch.equal(a[2], c[2])  # grad of x carries the mask
    # The seed comes from the default generator, which the call advances.
    torch.manual_seed(5)
    d1, d2 = run(None), run(None)
    assert torch.equal(d1[1], a[1])
    assert not torch.equal(d1[1], d2[1])


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_mask_statistics(device, p):
    shape = (64, 4096)
    n = math.prod(shape)
    keep = recover_keep(shape, F32, device, p, seed=17).cpu()
    sigma = math.sqrt(p * (1 - p) / n)
    frac = keep.double().mean().item()
    assert abs(frac - (1 - p)) < 6 * sigma, f"kept fraction {frac} vs {1 - p}"
    flat = keep.flatten()
    # Each of Philox's four output lanes (index % 4) keeps 1-p of its elements.
    for lane in range(4):
        f = flat[lane::4].double().mean().item()
        assert abs(f - (1 - p)) < 6 * sigma * 2, f"lane {lane}: kept fraction {f}"
    # Neighbours are independent: P(keep_i and keep_i+1) = (1-p)^2.
    both = (flat[1:] & flat[:-1]).double().mean().item()
    sig2 = math.sqrt((1 - p) ** 2 * (1 - (1 - p) ** 2) / n)
    assert abs(both - (1 - p) ** 2) < 8 * sig2, f"P(both kept) {both} vs {(1 - p) ** 2}"
    # Rows and columns are not copies of each other.
    assert not any(torch.equal(keep[0], keep[i]) for i in range(1, shape[0]))
    assert not torch.equal(keep[:, 0], keep[:, 1])
    # Different seeds, different masks; same seed, same mask.
    keep2 = recover_keep(shape, F32, device, p, seed=18).cpu()
    agree = (keep == keep2).double().mean().item()
    assert abs(agree - (p * p + (1 - p) ** 2)) < 8 * sig2 + 6 * sigma
    assert torch.equal(keep, recover_keep(shape, F32, device, p, seed=17).cpu())


def test_dropout_mask_independent_of_dtype_and_layout(device):
    shape = (7, 3, 129)
    keep = recover_keep(shape, F32, device, 0.3, seed=4)
    for dtype in (F16, BF16):
        assert torch.equal(keep, recover_keep(shape, dtype, device, 0.3, seed=4))
    # A transposed view: the mask is keyed on the logical row-major index, not on memory.
    ones = torch.ones((3, 7, 129), device=device).transpose(0, 1)
    torch.manual_seed(4)
    _, h = mmm.fused_add_norm(ones, None, None, None, dropout_p=0.3, prenorm=True)
    assert torch.equal(h != 0, keep)


def test_dropout_backward_regenerates_mask(device):
    """dh/dx = keep / (1 - p): the backward must draw the forward's mask again."""
    p = 0.4
    x = torch.ones((33, 517), device=device, requires_grad=True)
    torch.manual_seed(8)
    _, h = mmm.fused_add_norm(x, None, None, None, dropout_p=p, prenorm=True)
    keep = h.detach() != 0
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(device)
    torch.manual_seed(123)  # the backward must not depend on the generator's state
    (gx,) = torch.autograd.grad(h, x, g)
    torch.testing.assert_close(gx, g * keep / (1 - p), rtol=1e-6, atol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("shape", [(1000, 1027), (3, 65536), (70001, 8)], ids=_shape_id)
def test_dropout_mask_cpu_equals_cuda(shape, p):
    keep_cpu = recover_keep(shape, F32, "cpu", p, seed=31)
    keep_cuda = recover_keep(shape, BF16, "cuda", p, seed=31)
    assert torch.equal(keep_cpu, keep_cuda.cpu())
    # and the full outputs agree to rounding
    x, w, b, r = make_inputs((4, 1029), F32, "cpu")
    torch.manual_seed(2)
    out_c, h_c = mmm.fused_add_norm(x, w, b, r, dropout_p=p, prenorm=True)
    torch.manual_seed(2)
    out_g, h_g = mmm.fused_add_norm(x.cuda(), w.cuda(), b.cuda(), r.cuda(), dropout_p=p,
                                    prenorm=True)
    torch.testing.assert_close(out_g.cpu(), out_c, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h_g.cpu(), h_c, rtol=1e-6, atol=1e-6)


# The mask's exact Philox4x32-10 definition is checked bit for bit in tests/test_core.py.


# ---------------------------------------------------------------------------------------------
# the raw op
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("dtype", [F32, BF16], ids=DTYPE_NAMES.get)
def test_raw_op_outputs(device, rms, dtype):
    x, w, b, r = make_inputs((5, 3, 33), dtype, device)
    res = torch.ops.mmm.fused_add_norm(x, w, b, r, eps=1e-5, rms=rms, activation="gelu",
                                       prenorm=True)
    assert isinstance(res, (tuple, list)) and len(res) == 4
    out, h, mean, rstd = res
    assert out.shape == x.shape and out.dtype == dtype
    assert h.shape == x.shape and h.dtype == dtype
    assert torch.equal(out, mmm.fused_add_norm(x, w, b, r, rms=rms, activation="gelu"))
    h64 = x.double() + r.double()
    # bf16: the statistics may come from h before or after its rounding to bf16.
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == F32 else dict(rtol=1e-2, atol=1e-2)
    assert rstd.dtype == F32 and rstd.shape == (15,)
    if rms:
        assert mean.dtype == F32 and mean.numel() == 0
        ref_rstd = torch.rsqrt(h64.pow(2).mean(-1) + 1e-5).reshape(15)
    else:
        assert mean.dtype == F32 and mean.shape == (15,)
        torch.testing.assert_close(mean.double(), h64.mean(-1).reshape(15), **tol)
        ref_rstd = torch.rsqrt(h64.var(-1, unbiased=False) + 1e-5).reshape(15)
    torch.testing.assert_close(rstd.double(), ref_rstd, **tol)


def test_raw_op_residual_out_when_not_needed(device):
    x, w, b, _ = make_inputs((4, 16), F32, device)
    out, h, mean, rstd = torch.ops.mmm.fused_add_norm(x, w, b, None)
    assert h.numel() == 0 or (h.shape == x.shape and torch.equal(h, x))
    assert out.shape == x.shape and mean.shape == (4,) and rstd.shape == (4,)


@pytest.mark.parametrize("prenorm", [False, True])
@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
@pytest.mark.parametrize("types", ["bf16", "bf16_fp32res", "fp64_fp32res"])
def test_raw_op_inference_skips_h(device, prenorm, dropout_p, types):
    # inference=True writes h only when it is an output (prenorm); out is bitwise the same (h is
    # rounded to its dtype before the statistics either way).
    dtype, rdtype, rif = {"bf16": (BF16, BF16, False), "bf16_fp32res": (BF16, F32, True),
                          "fp64_fp32res": (F64, F32, False)}[types]
    if dtype == F64 and device != "cpu":
        pytest.skip("float64 is CPU-only")
    x, w, b, r = make_inputs((6, 48), dtype, device, rdtype=rdtype)
    seed = torch.tensor(9, dtype=torch.int64)
    kw = dict(dropout_p=dropout_p, dropout_seed=seed if dropout_p else None, prenorm=prenorm,
              residual_in_fp32=rif)
    full = torch.ops.mmm.fused_add_norm(x, w, b, r, **kw)
    lean = torch.ops.mmm.fused_add_norm(x, w, b, r, inference=True, **kw)
    assert torch.equal(full[0], lean[0])
    if prenorm:
        assert torch.equal(full[1], lean[1])
    else:
        assert full[1].shape == x.shape and lean[1].numel() == 0


def test_public_no_grad_matches_grad_mode(device):
    x, w, b, r = make_inputs((5, 40), F32, device)
    with torch.no_grad():
        lean = mmm.fused_add_norm(x, w, b, r, activation="gelu")
    full = mmm.fused_add_norm(x, w.clone().requires_grad_(), b, r, activation="gelu")
    assert torch.equal(lean, full.detach())


def test_raw_op_inference_with_grad_raises(device):
    x, w, b, r = make_inputs((4, 16), F32, device)
    with pytest.raises(RuntimeError, match="inference=True"):
        torch.ops.mmm.fused_add_norm(x.requires_grad_(), w, b, r, inference=True)


def test_unused_residual_out_is_not_read(device, monkeypatch):
    # Autograd would pass zeros for the unused residual_out (a fill and a read of x's size);
    # the backward op must get None instead.
    x, w, b, r = (t.requires_grad_() if t is not None else t for t in make_inputs((4, 32), F32, device))
    seen = []
    real = torch.ops.mmm.fused_add_norm_backward

    def spy(grad_out, grad_residual_out, *args, **kwargs):
        seen.append(grad_residual_out)
        return real(grad_out, grad_residual_out, *args, **kwargs)

    monkeypatch.setattr(torch.ops.mmm, "fused_add_norm_backward", spy)
    out, h = mmm.fused_add_norm(x, w, b, r, prenorm=True)
    out.sum().backward()
    assert seen == [None]


def test_raw_op_explicit_seed(device):
    x, w, b, r = make_inputs((8, 64), F32, device)
    seed = torch.tensor(77, dtype=torch.int64)
    torch.manual_seed(1)
    a = torch.ops.mmm.fused_add_norm(x, w, b, r, dropout_p=0.2, prenorm=True, dropout_seed=seed)
    torch.manual_seed(2)
    c = torch.ops.mmm.fused_add_norm(x, w, b, r, dropout_p=0.2, prenorm=True, dropout_seed=seed)
    for t1, t2 in zip(a, c):
        assert torch.equal(t1, t2)
    d = torch.ops.mmm.fused_add_norm(x, w, b, r, dropout_p=0.2, prenorm=True,
                                     dropout_seed=torch.tensor(78, dtype=torch.int64))
    assert not torch.equal(a[1], d[1])


def test_raw_op_dropout_needs_seed(device):
    x, w, b, r = make_inputs((4, 16), F32, device)
    with pytest.raises(RuntimeError, match="dropout_seed"):
        torch.ops.mmm.fused_add_norm(x, w, b, r, dropout_p=0.1)


def _opcheck_cases(device):
    x, w, b, r = make_inputs((4, 3, 24), F32, device)
    xb, wf, bf, rf = make_inputs((5, 40), BF16, device, wdtype=F32, rdtype=F32)
    seed = torch.tensor(5, dtype=torch.int64)
    rg = lambda t: t.clone().requires_grad_()  # noqa: E731
    return [
        ((x, w, b, None), {}),
        ((rg(x), rg(w), rg(b), rg(r)), dict(prenorm=True, activation="gelu")),
        ((rg(x), rg(w), None, rg(r)), dict(rms=True, activation="gelu_tanh", eps=1e-6)),
        ((rg(x), None, None, rg(r)), dict(dropout_p=0.1, dropout_seed=seed, prenorm=True)),
        ((rg(xb), rg(wf), rg(bf), rg(rf)), dict(residual_in_fp32=True, prenorm=True,
                                               dropout_p=0.2, dropout_seed=seed)),
        ((x, w, b, r), dict(inference=True)),
    ]


@pytest.mark.parametrize("case", range(6))
def test_opcheck(device, case):
    args, kwargs = _opcheck_cases(device)[case]
    torch.library.opcheck(torch.ops.mmm.fused_add_norm.default, args, kwargs)


# ---------------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def dynamo_reset():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compile_case(device):
    x, w, b, r = make_inputs((6, 96), F32, device)
    return [t.clone().requires_grad_() for t in (x, w, b, r)]


def _fn(x, w, b, r, dropout_p=0.0):
    out, h = mmm.fused_add_norm(x * 1.5, w, b, r, rms=False, activation="gelu",
                                dropout_p=dropout_p, prenorm=True)
    return out * 2.0, h


def test_compile_inference_matches_eager(device, dynamo_reset):
    # Under no_grad the public function passes inference=True: the fake kernel must agree that h
    # is not an output then (fullgraph: no graph break either).
    x, w, b, r = make_inputs((6, 96), BF16, device)
    f = lambda x, w, b, r: mmm.fused_add_norm(x, w, b, r, activation="gelu") * 2.0  # noqa: E731
    with torch.no_grad():
        got = torch.compile(f, fullgraph=True, backend="aot_eager")(x, w, b, r)
        want = f(x, w, b, r)
    assert torch.equal(got, want)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_matches_eager(device, backend, dynamo_reset):
    leaves = _compile_case(device)
    out_e, h_e = _fn(*leaves)
    g_e = torch.autograd.grad((out_e.sum() + (h_e * h_e).sum()), leaves)
    leaves_c = [t.detach().clone().requires_grad_() for t in leaves]
    cfn = torch.compile(_fn, backend=backend, fullgraph=True)
    out_c, h_c = cfn(*leaves_c)
    g_c = torch.autograd.grad((out_c.sum() + (h_c * h_c).sum()), leaves_c)
    tol = dict(rtol=0, atol=0) if backend == "aot_eager" else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_c, out_e, **tol)
    torch.testing.assert_close(h_c, h_e, **tol)
    for a, e in zip(g_c, g_e):
        torch.testing.assert_close(a, e, **tol)


def test_compile_dropout(device, dynamo_reset):
    """Compiled RNG may differ from eager's; check fullgraph, finiteness, the mask's statistics
    and that the compiled backward regenerates the compiled forward's mask."""
    p = 0.25

    def f(x):
        out, h = mmm.fused_add_norm(x, None, None, None, dropout_p=p, prenorm=True,
                                    residual_in_fp32=True)
        return out, h

    cf = torch.compile(f, backend="aot_eager", fullgraph=True)
    x = torch.ones((128, 512), device=device, requires_grad=True)
    torch.manual_seed(0)
    out, h = cf(x)
    assert torch.isfinite(out).all() and torch.isfinite(h).all()
    keep = h.detach() != 0
    frac = keep.double().mean().item()
    assert abs(frac - (1 - p)) < 6 * math.sqrt(p * (1 - p) / keep.numel())
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(device)
    (gx,) = torch.autograd.grad([h, out], x, [g, torch.zeros_like(out)])
    torch.testing.assert_close(gx, g * keep / (1 - p), rtol=1e-6, atol=0)
    # A second call draws a new mask; a reseeded call repeats the first.
    _, h2 = cf(x)
    assert not torch.equal(h2, h)
    torch.manual_seed(0)
    _, h3 = cf(x)
    assert torch.equal(h3, h)


# ---------------------------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------------------------
def test_deterministic_backward(device):
    rows, n = (512, 256) if device == "cpu" else (8192, 1024)
    x, w, b, r = make_inputs((rows, n), BF16, device, wdtype=F32)
    gen = torch.Generator().manual_seed(4)
    dout = make_tensor((rows, n), BF16, device, gen)

    def grads(threads=None):
        old = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            leaves = [t.clone().requires_grad_() for t in (x, w, b, r)]
            out = mmm.fused_add_norm(*leaves, activation="gelu")
            return torch.autograd.grad(out, leaves, dout)
        finally:
            torch.set_num_threads(old)

    g1, g2 = grads(), grads()
    for a, c in zip(g1, g2):
        assert torch.equal(a, c)
    if device == "cpu":  # dweight/dbias must not depend on the thread count either
        g3 = grads(threads=1)
        for a, c in zip(g1, g3):
            assert torch.equal(a, c)


# ---------------------------------------------------------------------------------------------
# empty tensors and bad inputs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(0, 8), (2, 0, 8)], ids=_shape_id)
def test_empty_rows(device, shape):
    x, w, b, r = make_inputs(shape, F32, device)
    leaves = [t.clone().requires_grad_() for t in (x, w, b, r)]
    out, h = mmm.fused_add_norm(*leaves, prenorm=True, dropout_p=0.1)
    assert out.shape == shape and h.shape == shape
    (out.sum() + h.sum()).backward()
    for t in leaves:
        assert t.grad is not None and t.grad.shape == t.shape
    assert torch.equal(leaves[1].grad, torch.zeros_like(w))
    assert torch.equal(leaves[2].grad, torch.zeros_like(b))
    out = mmm.fused_add_norm(x, w, b, None, rms=True)
    assert out.shape == shape


def test_empty_last_dim(device):
    x = torch.randn(3, 0, device=device)
    with pytest.raises(RuntimeError, match=r"\bN\b"):
        mmm.fused_add_norm(x, None, None, None)
    with pytest.raises(RuntimeError, match=r"\bN\b"):
        mmm.fused_add_norm(x, torch.randn(0, device=device), torch.randn(0, device=device), None)


def test_zero_dim_x(device):
    with pytest.raises(RuntimeError):
        mmm.fused_add_norm(torch.tensor(1.0, device=device), None, None, None)


def _bad_cases():
    def mk(dtype=F32, wdtype=None, bdtype=None, rdtype=None, shape=(4, 8), wn=8, bn=8,
           rshape=None):
        x = torch.randn(shape, dtype=dtype)
        w = torch.randn(wn, dtype=wdtype or dtype)
        b = torch.randn(bn, dtype=bdtype or wdtype or dtype)
        r = torch.randn(rshape or shape, dtype=rdtype or dtype)
        return x, w, b, r

    return {
        "weight_size": (lambda: mk(wn=7), {}, r"weight"),
        "bias_size": (lambda: mk(bn=9), {}, r"bias"),
        "residual_shape": (lambda: mk(rshape=(4, 7)), {}, r"residual"),
        "residual_rows": (lambda: mk(rshape=(3, 8)), {}, r"residual"),
        "weight_dtype_fp16_x_bf16": (lambda: mk(BF16, wdtype=F16, bdtype=BF16), {}, r"weight"),
        "weight_dtype_bf16_x_fp32": (lambda: mk(F32, wdtype=BF16, bdtype=F32), {}, r"weight"),
        "bias_dtype": (lambda: mk(BF16, wdtype=BF16, bdtype=F16), {}, r"bias"),
        "residual_dtype": (lambda: mk(BF16, rdtype=F16), {}, r"residual"),
        "residual_dtype_fp64": (lambda: mk(F32, rdtype=F64), {}, r"residual"),
        "x_int32": (lambda: (torch.ones(4, 8, dtype=torch.int32), None, None, None), {}, r"\bx\b"),
        "dropout_p_1": (lambda: mk(), dict(dropout_p=1.0), r"dropout_p"),
        "dropout_p_neg": (lambda: mk(), dict(dropout_p=-0.1), r"dropout_p"),
        "eps_neg": (lambda: mk(), dict(eps=-1e-5), r"eps"),
        "activation": (lambda: mk(), dict(activation="relu"), r"activation"),
    }


@pytest.mark.parametrize("api", ["public", "raw"])
@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_inputs(case, api):
    make, kwargs, match = _bad_cases()[case]
    x, w, b, r = make()
    fn = mmm.fused_add_norm if api == "public" else torch.ops.mmm.fused_add_norm
    if api == "raw" and kwargs.get("dropout_p", 0) > 0:
        kwargs = dict(kwargs, dropout_seed=torch.tensor(0, dtype=torch.int64))
    with pytest.raises(RuntimeError, match=match):
        fn(x, w, b, r, **kwargs)


@pytest.mark.cuda
def test_bad_inputs_cuda():
    x = torch.randn(4, 8, device="cuda")
    with pytest.raises(RuntimeError, match="weight"):
        mmm.fused_add_norm(x, torch.ones(8), None, None)
    with pytest.raises(RuntimeError, match="bias"):
        mmm.fused_add_norm(x, None, torch.ones(8), None)
    with pytest.raises(RuntimeError, match="residual"):
        mmm.fused_add_norm(x, None, None, torch.ones(4, 8))
    with pytest.raises(RuntimeError, match=r"\bx\b"):
        mmm.fused_add_norm(x.double(), None, None, None)


# ---------------------------------------------------------------------------------------------
# the module
# ---------------------------------------------------------------------------------------------
def _randomize(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + 1.0)
    return module


@pytest.mark.parametrize("kind", ["ln", "ln_nobias", "ln_noaffine", "rms", "rms_noaffine"])
def test_module_matches_torch_norm(device, kind):
    n = 48
    torch_mod = {
        "ln": lambda: torch.nn.LayerNorm(n),
        "ln_nobias": lambda: torch.nn.LayerNorm(n, bias=False),
        "ln_noaffine": lambda: torch.nn.LayerNorm(n, elementwise_affine=False),
        "rms": lambda: torch.nn.RMSNorm(n),
        "rms_noaffine": lambda: torch.nn.RMSNorm(n, elementwise_affine=False),
    }[kind]()
    kwargs = dict(rms=kind.startswith("rms"))
    if kind == "ln_nobias":
        kwargs["bias"] = False
    if kind.endswith("noaffine"):
        kwargs["elementwise_affine"] = False
    mod = mmm.nn.FusedAddNorm(n, **kwargs)
    _randomize(torch_mod)
    assert set(mod.state_dict()) == set(torch_mod.state_dict())
    mod.load_state_dict(torch_mod.state_dict())
    mod, torch_mod = mod.to(device), torch_mod.to(device)
    # Small inputs, so that the default eps (1e-5 for LayerNorm, finfo.eps for RMSNorm) matters.
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(3, 5, n, generator=gen) * 1e-3).to(device)
    xr = x.clone().requires_grad_()
    y = mod(xr)
    xt = x.clone().requires_grad_()
    yt = torch_mod(xt)
    torch.testing.assert_close(y, yt, rtol=1e-4, atol=1e-5)
    gy = torch.randn(y.shape, generator=gen).to(device)
    y.backward(gy)
    yt.backward(gy)
    torch.testing.assert_close(xr.grad, xt.grad, rtol=1e-3, atol=1e-3 * xt.grad.abs().max().item())
    for name, p in mod.named_parameters():
        pt = dict(torch_mod.named_parameters())[name]
        torch.testing.assert_close(p.grad, pt.grad, rtol=1e-4, atol=1e-4)


def test_module_parameters_and_defaults():
    ln = mmm.nn.FusedAddNorm(16)
    assert ln.weight.shape == (16,) and ln.bias.shape == (16,)
    assert torch.equal(ln.weight, torch.ones(16)) and torch.equal(ln.bias, torch.zeros(16))
    rms = mmm.nn.FusedAddNorm(16, rms=True)
    assert rms.weight.shape == (16,) and getattr(rms, "bias", None) is None
    assert set(rms.state_dict()) == {"weight"}
    rms_b = mmm.nn.FusedAddNorm(16, rms=True, bias=True)
    assert rms_b.bias.shape == (16,)
    m = mmm.nn.FusedAddNorm(16, dtype=torch.bfloat16)
    assert m.weight.dtype == torch.bfloat16 and m.bias.dtype == torch.bfloat16
    m = mmm.nn.FusedAddNorm((4, 8))
    assert m.weight.shape == (4, 8)


def test_module_multidim_normalized_shape(device):
    torch_mod = _randomize(torch.nn.LayerNorm((4, 8)))
    mod = mmm.nn.FusedAddNorm((4, 8))
    mod.load_state_dict(torch_mod.state_dict())
    mod, torch_mod = mod.to(device), torch_mod.to(device)
    x = torch.randn(3, 5, 4, 8, generator=torch.Generator().manual_seed(0)).to(device)
    torch.testing.assert_close(mod(x), torch_mod(x), rtol=1e-5, atol=1e-5)
    r = torch.randn_like(x)
    torch.testing.assert_close(mod(x, r), torch_mod(x + r), rtol=1e-5, atol=1e-5)


def test_module_residual_prenorm_and_dropout(device):
    n = 64
    mod = _randomize(mmm.nn.FusedAddNorm(n, activation="gelu", dropout_p=0.3, prenorm=True,
                                         residual_in_fp32=True, dtype=BF16)).to(device)
    x, _, _, r = make_inputs((8, n), BF16, device)
    # eval: dropout is off, and the result matches the functional form with p = 0
    mod.eval()
    out, h = mod(x, r)
    assert out.dtype == BF16 and h.dtype == F32
    out_f, h_f = mmm.fused_add_norm(x, mod.weight, mod.bias, r, activation="gelu", prenorm=True,
                                    residual_in_fp32=True)
    assert torch.equal(out, out_f) and torch.equal(h, h_f)
    torch.manual_seed(0)
    out2, h2 = mod(x, r)
    assert torch.equal(out2, out) and torch.equal(h2, h)
    # train: dropout is on, and reproducible with manual_seed
    mod.train()
    torch.manual_seed(0)
    out_t, h_t = mod(x, r)
    assert not torch.equal(h_t, h)
    torch.manual_seed(0)
    out_f, h_f = mmm.fused_add_norm(x, mod.weight, mod.bias, r, activation="gelu",
                                    dropout_p=0.3, prenorm=True, residual_in_fp32=True)
    assert torch.equal(out_t, out_f) and torch.equal(h_t, h_f)


@pytest.mark.parametrize("dtype", [F32, BF16, F64], ids=DTYPE_NAMES.get)
def test_module_rms_default_eps_matches_torch(dtype):
    """eps=None must give nn.RMSNorm's default eps. (torch 2.14 documents it as
    finfo(float32).eps for fp16/bf16/fp32 inputs and finfo(float64).eps for float64 ones.)"""
    n = 32
    mod = _randomize(mmm.nn.FusedAddNorm(n, rms=True, dtype=dtype))
    ref = torch.nn.RMSNorm(n, dtype=dtype)
    ref.load_state_dict(mod.state_dict())
    # mean(x^2) ~ 1e-8: far from bf16's eps (7.8e-3), fp32's (1.2e-7) and fp64's (2.2e-16),
    # so using another dtype's eps changes the output by a large factor.
    x = (torch.randn(4, n, generator=torch.Generator().manual_seed(0)) * 1e-4).to(dtype)
    tol = dict(rtol=2e-2, atol=1e-3) if dtype == BF16 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mod(x), ref(x), **tol)


# ---------------------------------------------------------------------------------------------
# a small CUDA subset for compute-sanitizer (memcheck, racecheck): every row shape of the
# kernels (warp, 4 warps, 16 warps, looped), the scalar path (odd N), forward and backward
# ---------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("n", [7, 1000, 4096, 8192, 20000])
@pytest.mark.parametrize("dtype", [F32, BF16], ids=DTYPE_NAMES.get)
def test_sanitizer_subset(n, dtype):
    x, w, b, r = make_inputs((3, n), dtype, "cuda", wdtype=F32 if dtype == BF16 else None)
    check_op(x, w, b, r, activation="gelu", dropout_p=0.1, prenorm=True)


# ---------------------------------------------------------------------------------------------
# The CUDA launcher and kernels (forward and backward, every row shape, dropout, the dweight /
# dbias reduction) run on the host: tests/emulate/fused_add_norm.cpp via tests/emulate/run.sh,
# one fiber per CUDA thread, against the CPU twin; with the memory counts the "quick" subset
# (every row shape still). Opt-in (see run_emulation), ~1 min build, ~15 s run.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sanitizer", emulation_sanitizers())
def test_cuda_kernels_on_cpu_threads(tmp_path, sanitizer):
    out = run_emulation("fused_add_norm", ["quick"] if sanitizer == "counts" else [], tmp_path, sanitizer)
    assert "all ok" in out, out[-4000:]
