"""Tests for mmm.block_diag_matmul and mmm.monarch_matmul (and their raw ops torch.ops.mmm.*).

    block_diag_matmul(x, w):   x (..., nb*k), w (nb, n, k)  ->  y (..., nb*n)
        y[..., b*n:(b+1)*n] = x[..., b*k:(b+1)*k] @ w[b].T

    monarch_matmul(x, w1, w2): x (..., N), w1 (k, q, p) with k*p == N, w2 (l, s, r) with
        l*r == k*q  ->  y (..., l*s); HazyResearch/fly's blockdiag_butterfly_multiply, defined
        here by `monarch_reference` (and that reference is itself checked against the dense
        block_diag / rearrange form).

Accuracy rule (the one FlashAttention's tests use, as in test_fused_add_norm.py): with `ref` the
plainest PyTorch expression (an einsum) evaluated in float64 on upcast copies of the inputs (the
"truth"), and `ref_lowp` the *same* expression evaluated by PyTorch in the inputs' dtype (for
fp32 inputs: fp32 einsum, with TF32 off), the kernel must satisfy

    max|kernel - ref| <= 2 * max|ref_lowp - ref| + atol * max(1, max|ref|)

for the output and every gradient. The atol is relative to the tensor's scale because the
products grow with the block size and the dweight reductions with the token count.

Every test that takes a `device` argument runs on CPU and, marked `cuda`, on CUDA (see
conftest.py); on a machine without a GPU the CUDA versions are collected and skipped. Tests named
`*sanitizer_subset*` are the small CUDA set bench/gpu_check.sh runs under compute-sanitizer.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

import mmm
from conftest import emulation_sanitizers, run_emulation

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
DTYPE_NAMES = {F32: "fp32", F16: "fp16", BF16: "bf16", F64: "fp64"}
LOWP_DTYPES = [F32, F16, BF16]

# Relative to max(1, max|ref|): about one fp32 ulp for fp32/fp64 outputs (the kernel and PyTorch
# sum in different orders, and a max over many elements catches a difference the reference does
# not have), a small fraction of an ulp for fp16/bf16.
FWD_ATOL = {F32: 1e-5, F64: 1e-12, F16: 1e-3, BF16: 1e-3}
BWD_ATOL = {F32: 2e-5, F64: 1e-11, F16: 2e-3, BF16: 4e-3}


# ---------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------
def block_diag_reference(x, w):
    """y[..., b*n:(b+1)*n] = x[..., b*k:(b+1)*k] @ w[b].T, as one einsum."""
    nb, n, k = w.shape
    lead = x.shape[:-1]
    return torch.einsum("...bk,bnk->...bn", x.reshape(*lead, nb, k), w).reshape(*lead, nb * n)


def monarch_reference(x, w1, w2):
    """THE definition of monarch_matmul (HazyResearch/fly's blockdiag_butterfly_multiply)."""
    k, q, p = w1.shape
    l, s, r = w2.shape
    lead = x.shape[:-1]
    out1 = torch.einsum("...kp,kqp->...kq", x.reshape(*lead, k, p), w1).reshape(*lead, k * q)
    z = out1.reshape(*lead, r, l).transpose(-1, -2).reshape(*lead, l * r)
    out2 = torch.einsum("...lr,lsr->...ls", z.reshape(*lead, l, r), w2)
    return out2.transpose(-1, -2).reshape(*lead, s * l)


def monarch_dense_reference(x, w1, w2):
    """The same map written with dense block-diagonal matrices and explicit rearranges:
    out1 = x @ blockdiag(w1).T; 'b (r l) -> b (l r)'; out2 = out1 @ blockdiag(w2).T;
    'b (l s) -> b (s l)'."""
    k, q, p = w1.shape
    l, s, r = w2.shape
    lead = x.shape[:-1]
    xb = x.reshape(-1, k * p)
    out1 = xb @ torch.block_diag(*w1).T  # (b, k*q)
    out1 = out1.reshape(-1, r, l).transpose(1, 2).reshape(-1, l * r)  # b (r l) -> b (l r)
    out2 = out1 @ torch.block_diag(*w2).T  # (b, l*s)
    out2 = out2.reshape(-1, l, s).transpose(1, 2).reshape(-1, s * l)  # b (l s) -> b (s l)
    return out2.reshape(*lead, s * l)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def max_abs_err(a, b):
    if a.numel() == 0:
        return 0.0
    return (a.double() - b.double()).abs().max().item()


def assert_close_fa(out, ref, ref_lowp, atol, name="out"):
    """FlashAttention's rule: max|out - ref| <= 2 * max|ref_lowp - ref| + atol."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    err = max_abs_err(out, ref)
    err_lowp = max_abs_err(ref_lowp, ref)
    assert not math.isnan(err), f"{name}: kernel output contains NaN"
    assert err <= 2 * err_lowp + atol, (
        f"{name}: max|kernel - ref| = {err:.3e} > 2 * max|pytorch_lowp - ref| = {2 * err_lowp:.3e}"
        f" + atol {atol:.1e}"
    )


@contextlib.contextmanager
def full_fp32_matmul():
    """PyTorch's fp32 references in true fp32 (no TF32), whatever the global setting."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def make_tensor(shape, dtype, device, gen, scale=1.0):
    t = torch.randn(shape, generator=gen, dtype=torch.float32) * scale
    return t.to(dtype=dtype, device=device)


def bdm_inputs(lead, nb, n, k, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = make_tensor(tuple(lead) + (nb * k,), dtype, device, gen)
    w = make_tensor((nb, n, k), dtype, device, gen, scale=1 / math.sqrt(k))
    return x, w


def monarch_inputs(lead, w1_shape, w2_shape, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    k, q, p = w1_shape
    x = make_tensor(tuple(lead) + (k * p,), dtype, device, gen)
    w1 = make_tensor(w1_shape, dtype, device, gen, scale=1 / math.sqrt(p))
    w2 = make_tensor(w2_shape, dtype, device, gen, scale=1 / math.sqrt(w2_shape[2]))
    return x, w1, w2


def check_op(fn, ref, inputs, *, names, grad=True, requires_grad=None, dout=None, grad_seed=7,
             fwd_atol=None, bwd_atol=None):
    """Run fn on `inputs` as given (strides included) forward and backward, and compare the
    output and every gradient with `ref` by the FA rule. Returns (out, grads)."""
    dtype, device = inputs[0].dtype, inputs[0].device
    fwd_atol = FWD_ATOL[dtype] if fwd_atol is None else fwd_atol
    bwd_atol = BWD_ATOL[dtype] if bwd_atol is None else bwd_atol
    if requires_grad is None:
        requires_grad = [grad] * len(inputs)
    # detach() keeps the strides, so the kernel sees the layout the caller built.
    leaves = [t.detach().requires_grad_(rg) for t, rg in zip(inputs, requires_grad)]
    out = fn(*leaves)
    leaves64 = [t.detach().to(F64).requires_grad_(rg) for t, rg in zip(inputs, requires_grad)]
    leaves_lp = [t.detach().clone().requires_grad_(rg) for t, rg in zip(inputs, requires_grad)]
    with full_fp32_matmul():
        out64 = ref(*leaves64)
        out_lp = ref(*leaves_lp)
    assert out.dtype == dtype, f"out dtype {out.dtype} != {dtype}"
    assert out.device == device
    assert out.shape == out64.shape, f"out shape {tuple(out.shape)} != {tuple(out64.shape)}"
    scale = max(1.0, out64.abs().max().item()) if out64.numel() else 1.0
    assert_close_fa(out, out64, out_lp, fwd_atol * scale, "out")
    if not any(requires_grad):
        return out, []
    if dout is None:
        gen = torch.Generator().manual_seed(grad_seed)
        dout = make_tensor(tuple(out.shape), dtype, device, gen)
    idx = [i for i, rg in enumerate(requires_grad) if rg]
    grads = torch.autograd.grad(out, [leaves[i] for i in idx], dout)
    with full_fp32_matmul():
        grads64 = torch.autograd.grad(out64, [leaves64[i] for i in idx], dout.to(F64))
        grads_lp = torch.autograd.grad(out_lp, [leaves_lp[i] for i in idx], dout)
    for i, g, g64, glp in zip(idx, grads, grads64, grads_lp):
        assert g.dtype == dtype, f"grad {names[i]}: dtype {g.dtype} != {dtype}"
        assert g.device == device
        scale = max(1.0, g64.abs().max().item()) if g64.numel() else 1.0
        assert_close_fa(g, g64, glp, bwd_atol * scale, f"grad {names[i]}")
    return out, grads


def check_bdm(x, w, **kw):
    return check_op(mmm.block_diag_matmul, block_diag_reference, [x, w], names=["x", "w"], **kw)


def check_monarch(x, w1, w2, **kw):
    return check_op(mmm.monarch_matmul, monarch_reference, [x, w1, w2], names=["x", "w1", "w2"],
                    **kw)


def _id(v):
    if isinstance(v, torch.dtype):
        return DTYPE_NAMES[v]
    if isinstance(v, tuple):
        return "x".join(map(str, v)) if v else "scalar"
    return str(v)


# ---------------------------------------------------------------------------------------------
# block_diag_matmul: block sizes, block counts, leading dims, token counts, dtypes
# ---------------------------------------------------------------------------------------------
SQUARE_BLOCKS = [(b, b) for b in (1, 3, 16, 17, 64, 128, 256)]
RECT_BLOCKS = [(1, 16), (16, 1), (3, 17), (17, 3), (16, 64), (64, 17), (128, 256), (256, 128),
               (256, 3), (17, 256)]


@pytest.mark.parametrize("dtype", LOWP_DTYPES, ids=_id)
@pytest.mark.parametrize("k,n", SQUARE_BLOCKS + RECT_BLOCKS, ids=lambda v: str(v))
def test_block_sizes(device, k, n, dtype):
    x, w = bdm_inputs((7,), 2, n, k, dtype, device)
    check_bdm(x, w)


@pytest.mark.parametrize("dtype", [F32, BF16], ids=_id)
@pytest.mark.parametrize("k,n", [(3, 5), (16, 16), (17, 8)], ids=lambda v: str(v))
@pytest.mark.parametrize("nb", [1, 2, 4, 16, 64])
def test_nblocks(device, nb, k, n, dtype):
    x, w = bdm_inputs((33,), nb, n, k, dtype, device)
    check_bdm(x, w)


@pytest.mark.parametrize("dtype", LOWP_DTYPES, ids=_id)
@pytest.mark.parametrize("lead", [(), (5,), (2, 3), (2, 3, 4)], ids=_id)
def test_leading_dims(device, lead, dtype):
    x, w = bdm_inputs(lead, 4, 8, 16, dtype, device)
    out, _ = check_bdm(x, w)
    assert out.shape == tuple(lead) + (32,)


@pytest.mark.parametrize("dtype", LOWP_DTYPES, ids=_id)
@pytest.mark.parametrize("nb,k,n", [(4, 16, 24), (2, 64, 64), (3, 33, 7)], ids=_id)
@pytest.mark.parametrize("tokens", [0, 1, 7, 100, 1000])
def test_token_counts(device, tokens, nb, k, n, dtype):
    x, w = bdm_inputs((tokens,), nb, n, k, dtype, device)
    check_bdm(x, w)


@pytest.mark.parametrize("dtype", LOWP_DTYPES, ids=_id)
@pytest.mark.parametrize("k", [2048, 2051, 4100])
def test_long_reductions(device, k, dtype):
    """Reductions longer than the CPU kernel's 2048-element panel, odd ones included (its bf16
    pairs end in half a pair), in all three products: x·wᵀ, dy·w and dyᵀ·x over 70 tokens."""
    x, w = bdm_inputs((70,), 2, 20, k, dtype, device)
    check_bdm(x, w)
    x, w = bdm_inputs((2051,), 1, 5, 3, dtype, device)  # the weight gradient's reduction is long
    check_bdm(x, w)


@pytest.mark.parametrize("dtype", [F32, BF16], ids=_id)
@pytest.mark.parametrize("shape", [(0, 48), (2, 0, 48), (0, 3, 48)], ids=_id)
def test_empty_tokens(device, shape, dtype):
    gen = torch.Generator().manual_seed(0)
    x = make_tensor(shape, dtype, device, gen).requires_grad_()
    w = make_tensor((3, 5, 16), dtype, device, gen).requires_grad_()
    y = mmm.block_diag_matmul(x, w)
    assert y.shape == shape[:-1] + (15,) and y.dtype == dtype and y.device.type == device
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert w.grad is not None and torch.equal(w.grad, torch.zeros_like(w))
    y = torch.ops.mmm.block_diag_matmul(x.detach(), w.detach())
    assert y.shape == shape[:-1] + (15,)


def test_float64_matches_reference():
    """float64 inputs (CPU only) are computed in float64."""
    for lead, nb, n, k in [((5,), 3, 4, 6), ((2, 3), 2, 17, 3), ((), 4, 2, 2)]:
        x, w = bdm_inputs(lead, nb, n, k, F64, "cpu")
        check_bdm(x, w)


@pytest.mark.parametrize("dtype", LOWP_DTYPES + [F64], ids=_id)
def test_output_dtype_and_raw_op(device, dtype):
    if device == "cuda" and dtype == F64:
        x, w = bdm_inputs((3,), 2, 4, 4, F64, device)
        with pytest.raises(RuntimeError, match=r"\bx\b"):
            mmm.block_diag_matmul(x, w)
        return
    x, w = bdm_inputs((3, 5), 4, 6, 8, dtype, device)
    y = mmm.block_diag_matmul(x, w)
    assert y.dtype == dtype and y.shape == (3, 5, 24) and y.is_contiguous()
    assert torch.equal(torch.ops.mmm.block_diag_matmul(x, w), y)
    with torch.inference_mode():
        assert torch.equal(mmm.block_diag_matmul(x, w), y)


@pytest.mark.parametrize("which", ["x", "w"])
def test_partial_grads(device, which):
    """Only one input requires grad: the other gradient is not needed (and must not break)."""
    x, w = bdm_inputs((9,), 4, 5, 6, F32, device)
    check_bdm(x, w, requires_grad=[which == "x", which == "w"])


@pytest.mark.parametrize("nb,k,n", [(70001, 1, 2), (66000, 2, 1)], ids=_id)
def test_many_blocks(device, nb, k, n):
    """More blocks than a CUDA grid dimension holds (65535): the kernels must stride."""
    x, w = bdm_inputs((5,), nb, n, k, F32, device)
    check_bdm(x, w)


# ---------------------------------------------------------------------------------------------
# layouts: non-contiguous x, w, and upstream gradients
# ---------------------------------------------------------------------------------------------
def _layout(kind, shape, dtype, device, gen, scale=1.0):
    """A tensor of `shape` whose memory layout is `kind`."""
    if kind == "contiguous":
        return make_tensor(shape, dtype, device, gen, scale)
    if kind == "transposed":  # (B, T, F) viewed as (T, B, F): leading dims don't collapse
        base = make_tensor((shape[1], shape[0]) + shape[2:], dtype, device, gen, scale)
        return base.transpose(0, 1)
    if kind == "col_slice":  # buf[..., :F] of a wider buffer: row stride F + 3
        base = make_tensor(shape[:-1] + (shape[-1] + 3,), dtype, device, gen, scale)
        return base[..., : shape[-1]]
    if kind == "misaligned":  # data pointer one element past an aligned one
        base = make_tensor(shape[:-1] + (shape[-1] + 1,), dtype, device, gen, scale)
        return base[..., 1:]
    if kind == "col_stride2":  # last dim strided: buf[..., ::2]
        base = make_tensor(shape[:-1] + (2 * shape[-1],), dtype, device, gen, scale)
        return base[..., ::2]
    if kind == "flat_offset":  # contiguous, storage offset 1
        base = make_tensor((math.prod(shape) + 1,), dtype, device, gen, scale)
        return base[1:].view(shape)
    if kind == "broadcast_rows":  # one row expanded: leading stride 0
        base = make_tensor((1,) * (len(shape) - 1) + shape[-1:], dtype, device, gen, scale)
        return base.expand(shape)
    raise AssertionError(kind)


X_LAYOUTS = ["transposed", "col_slice", "misaligned", "col_stride2", "flat_offset",
             "broadcast_rows"]


@pytest.mark.parametrize("dtype", LOWP_DTYPES, ids=_id)
@pytest.mark.parametrize("nb,k,n", [(4, 16, 16), (2, 64, 32), (3, 17, 5)], ids=_id)
@pytest.mark.parametrize("layout", X_LAYOUTS)
def test_noncontiguous_x(device, layout, nb, k, n, dtype):
    gen = torch.Generator().manual_seed(11)
    x = _layout(layout, (5, 7, nb * k), dtype, device, gen)
    assert not x.is_contiguous() or x.storage_offset() != 0
    w = make_tensor((nb, n, k), dtype, device, gen, scale=1 / math.sqrt(k))
    check_bdm(x, w)


@pytest.mark.parametrize("kind", ["transposed_nk", "block_slice", "misaligned"])
def test_noncontiguous_w(device, kind):
    nb, n, k = 3, 16, 32
    gen = torch.Generator().manual_seed(12)
    x = make_tensor((20, nb * k), BF16, device, gen)
    if kind == "transposed_nk":  # stored as (nb, k, n)
        w = make_tensor((nb, k, n), BF16, device, gen, scale=0.2).transpose(1, 2)
    elif kind == "block_slice":  # every other block of a bigger weight
        w = make_tensor((2 * nb, n, k), BF16, device, gen, scale=0.2)[::2]
    else:
        w = make_tensor((nb * n * k + 1,), BF16, device, gen, scale=0.2)[1:].view(nb, n, k)
    check_bdm(x, w)


def test_expanded_and_transposed_grad_output(device):
    """out.sum().backward() hands the backward a stride-0 gradient; a transposed one too."""
    x, w = bdm_inputs((6, 5), 3, 7, 4, F32, device)
    gen = torch.Generator().manual_seed(3)
    douts = [
        make_tensor((), F32, device, gen).expand(6, 5, 21),           # all strides 0
        make_tensor((1, 1, 21), F32, device, gen).expand(6, 5, 21),   # row strides 0
        make_tensor((5, 6, 21), F32, device, gen).transpose(0, 1),    # rows don't collapse
        make_tensor((6, 5, 42), F32, device, gen)[..., ::2],          # last dim strided
    ]
    for d in douts:
        check_bdm(x, w, dout=d)
    xm, w1, w2 = monarch_inputs((6, 5), *MONARCH_RECT[0], F32, device)
    for d in [make_tensor((), F32, device, gen).expand(6, 5, 60),
              make_tensor((5, 6, 60), F32, device, gen).transpose(0, 1)]:
        check_monarch(xm, w1, w2, dout=d)
    # the .sum() path itself
    xl, wl = x.clone().requires_grad_(), w.clone().requires_grad_()
    mmm.block_diag_matmul(xl, wl).sum().backward()
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    block_diag_reference(x64, w64).sum().backward()
    torch.testing.assert_close(xl.grad.double(), x64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(wl.grad.double(), w64.grad, rtol=1e-5, atol=1e-5)


def test_grad_accumulates_into_existing_grad(device):
    x, w = bdm_inputs((4,), 2, 3, 5, F32, device)
    xl, wl = x.clone().requires_grad_(), w.clone().requires_grad_()
    mmm.block_diag_matmul(xl, wl).sum().backward()
    g1x, g1w = xl.grad.clone(), wl.grad.clone()
    mmm.block_diag_matmul(xl, wl).sum().backward()
    torch.testing.assert_close(xl.grad, 2 * g1x)
    torch.testing.assert_close(wl.grad, 2 * g1w)


# ---------------------------------------------------------------------------------------------
# gradcheck (float64, CPU)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lead,nb,n,k", [((3,), 2, 4, 3), ((), 3, 2, 2), ((2, 1, 2), 2, 3, 1),
                                         ((0,), 2, 2, 2)], ids=_id)
def test_gradcheck_block_diag(lead, nb, n, k):
    x, w = bdm_inputs(lead, nb, n, k, F64, "cpu", seed=21)
    assert torch.autograd.gradcheck(mmm.block_diag_matmul,
                                    (x.requires_grad_(), w.requires_grad_()))


@pytest.mark.parametrize("w1_shape,w2_shape", [((2, 3, 2), (3, 2, 2)), ((2, 2, 2), (2, 2, 2)),
                                               ((1, 4, 3), (4, 1, 1))], ids=_id)
def test_gradcheck_monarch(w1_shape, w2_shape):
    x, w1, w2 = monarch_inputs((3,), w1_shape, w2_shape, F64, "cpu", seed=22)
    assert torch.autograd.gradcheck(mmm.monarch_matmul, (x.requires_grad_(),
                                                         w1.requires_grad_(), w2.requires_grad_()))


@pytest.mark.parametrize("op", ["block_diag", "monarch"])
def test_double_backward_raises_or_is_correct(op):
    """Second-order gradients (create_graph=True, e.g. a gradient penalty) must either be right
    or raise; silently dropping them (None / zero gradients) is the failure this catches."""
    if op == "block_diag":
        x, w = bdm_inputs((3,), 2, 2, 2, F64, "cpu", seed=30)
        args, fn, ref = [x, w], mmm.block_diag_matmul, block_diag_reference
    else:
        x, w1, w2 = monarch_inputs((3,), (2, 3, 2), (3, 2, 2), F64, "cpu", seed=30)
        args, fn, ref = [x, w1, w2], mmm.monarch_matmul, monarch_reference
    dy = torch.randn(fn(*args).shape, generator=torch.Generator().manual_seed(1), dtype=F64)

    def second_order(f):
        leaves = [t.clone().requires_grad_() for t in args]
        grads = torch.autograd.grad(f(*leaves), leaves, dy, create_graph=True)
        loss = sum(g.pow(2).sum() for g in grads)
        return torch.autograd.grad(loss, leaves, allow_unused=True)

    want = second_order(ref)
    try:
        got = second_order(fn)
    except RuntimeError:
        return  # unsupported, and says so: fine
    for i, (g, e) in enumerate(zip(got, want)):
        assert g is not None, f"second-order gradient of input {i} silently missing (None)"
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# monarch_matmul
# ---------------------------------------------------------------------------------------------
# (w1 shape (k, q, p), w2 shape (l, s, r)); N = k*p, l*r == k*q, out = l*s
MONARCH_SQUARE = [((b, b, b), (b, b, b)) for b in (2, 4, 8, 16, 32)]
MONARCH_RECT = [
    ((4, 6, 12), (6, 10, 4)),   # N=48 -> 60
    ((2, 8, 12), (4, 5, 4)),    # N=24 -> 20
    ((3, 5, 4), (5, 7, 3)),     # N=12 -> 35, all odd
    ((1, 8, 16), (8, 2, 1)),    # k=1 (w1 dense), r=1
    ((4, 3, 2), (1, 5, 12)),    # l=1 (w2 dense)
    ((6, 2, 1), (3, 4, 4)),     # p=1
    ((16, 8, 16), (8, 32, 16)),  # N=256 -> 256, q != p
]


def _mid(shapes):
    (k, q, p), (l, s, r) = shapes
    return f"w1_{k}x{q}x{p}-w2_{l}x{s}x{r}"


def test_monarch_reference_matches_dense_form():
    """The reference itself against the dense block_diag / rearrange form (float64)."""
    for i, (w1s, w2s) in enumerate(MONARCH_SQUARE + MONARCH_RECT):
        for j, lead in enumerate([(5,), (2, 3), ()]):
            x, w1, w2 = monarch_inputs(lead, w1s, w2s, F64, "cpu", seed=10 * i + j)
            a = monarch_reference(x, w1, w2)
            b = monarch_dense_reference(x, w1, w2)
            assert a.shape == tuple(lead) + (w2s[0] * w2s[1],)
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", LOWP_DTYPES, ids=_id)
@pytest.mark.parametrize("shapes", MONARCH_SQUARE + MONARCH_RECT, ids=_mid)
def test_monarch_shapes(device, shapes, dtype):
    x, w1, w2 = monarch_inputs((7,), *shapes, dtype, device)
    out, _ = check_monarch(x, w1, w2)
    assert out.shape == (7, shapes[1][0] * shapes[1][1])


@pytest.mark.parametrize("dtype", LOWP_DTYPES, ids=_id)
@pytest.mark.parametrize("shapes", [MONARCH_SQUARE[3], MONARCH_RECT[0]], ids=_mid)
@pytest.mark.parametrize("tokens", [0, 1, 100, 1000])
def test_monarch_token_counts(device, tokens, shapes, dtype):
    x, w1, w2 = monarch_inputs((tokens,), *shapes, dtype, device)
    _, grads = check_monarch(x, w1, w2)
    if tokens == 0:
        assert torch.equal(grads[1], torch.zeros_like(w1))
        assert torch.equal(grads[2], torch.zeros_like(w2))


@pytest.mark.parametrize("dtype", LOWP_DTYPES, ids=_id)
@pytest.mark.parametrize("tokens", [300, 513])
@pytest.mark.parametrize("shapes", [((2, 37, 3), (37, 3, 2)), ((4, 20, 8), (20, 5, 4))], ids=_mid)
def test_monarch_block_groups(device, shapes, tokens, dtype):
    """The second stage's blocks are interleaved element by element, so the CPU takes them 16 at
    a time (block_gemm_cpu_group): l = 37 and 20 end in a partial group, and the weight
    gradient's reduction over tokens runs past one 256-token panel of a group, odd and even."""
    x, w1, w2 = monarch_inputs((tokens,), *shapes, dtype, device)
    check_monarch(x, w1, w2)


@pytest.mark.parametrize("lead", [(), (5,), (2, 3), (2, 3, 4)], ids=_id)
def test_monarch_leading_dims(device, lead):
    x, w1, w2 = monarch_inputs(lead, *MONARCH_RECT[0], BF16, device)
    out, _ = check_monarch(x, w1, w2)
    assert out.shape == tuple(lead) + (60,)


def test_monarch_float64():
    for shapes in (MONARCH_SQUARE[1], MONARCH_RECT[0], MONARCH_RECT[2]):
        x, w1, w2 = monarch_inputs((5,), *shapes, F64, "cpu")
        check_monarch(x, w1, w2)


@pytest.mark.parametrize("layout", ["transposed", "col_slice", "misaligned", "col_stride2"])
def test_monarch_noncontiguous_x(device, layout):
    gen = torch.Generator().manual_seed(13)
    w1s, w2s = MONARCH_RECT[0]
    x = _layout(layout, (3, 4, 48), BF16, device, gen)
    _, w1, w2 = monarch_inputs((1,), w1s, w2s, BF16, device, seed=14)
    check_monarch(x, w1, w2)


@pytest.mark.parametrize("which", ["x", "w1", "w2", "w1w2"])
def test_monarch_partial_grads(device, which):
    x, w1, w2 = monarch_inputs((9,), *MONARCH_RECT[0], F32, device)
    check_monarch(x, w1, w2, requires_grad=["x" == which, "w1" in which, "w2" in which])


@pytest.mark.parametrize("dtype", [F32, BF16], ids=_id)
def test_monarch_equals_two_block_diag_matmuls(device, dtype):
    """Stage 1 of monarch is block_diag_matmul(x, w1): check the composition."""
    x, w1, w2 = monarch_inputs((11,), *MONARCH_RECT[1], dtype, device)
    (k, q, p), (l, s, r) = MONARCH_RECT[1]
    u = mmm.block_diag_matmul(x, w1)
    z = u.reshape(11, r, l).transpose(-1, -2).reshape(11, l * r)
    y = mmm.block_diag_matmul(z, w2).reshape(11, l, s).transpose(-1, -2).reshape(11, s * l)
    got = mmm.monarch_matmul(x, w1, w2)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == F32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got, y, **tol)
    assert torch.equal(torch.ops.mmm.monarch_matmul(x, w1, w2), got)


# ---------------------------------------------------------------------------------------------
# the fused Monarch forward (CUDA kernel; on the CPU its twin, with the same index map)
# ---------------------------------------------------------------------------------------------
from mmm.ops.block_diag_matmul import monarch_forward_plan  # noqa: E402

# Shapes the plan accepts (l | q with l % 16 == 0, or q | l with q % 16 == 0; p, r, s multiples
# of 16 up to 256), with what each exercises. (w1 (k, q, p), w2 (l, s, r))
MONARCH_FUSED = [
    ((16, 16, 16), (16, 16, 16)),     # the smallest: one 16-wide tile per GEMM
    ((32, 32, 32), (32, 32, 32)),     # square, two chunks when forced to J=16
    ((8, 32, 16), (16, 32, 16)),      # n_sub = q/l = 2: each chunk takes two row runs of w1
    ((16, 96, 64), (32, 48, 48)),     # n_sub = 3, r = s = 48 (3 column tiles: uneven warps)
    ((2, 256, 32), (32, 16, 16)),     # few big w1 blocks (q = 256), n_sub = 8
    ((4, 64, 80), (16, 64, 16)),     # p = 80: a 64 + 16 K split; n_sub = 4
    ((32, 16, 16), (32, 16, 16)),     # q | l ("by blocks"): 2 stage-2 blocks per w1 row set
    ((64, 16, 32), (64, 32, 16)),     # by blocks, l / q = 4, r = 16
    ((32, 32, 16), (64, 16, 16)),     # by blocks with q = 32: chunks of 32 or 64 blocks
]


def _smallest_chunk(shapes):
    """The smallest chunk the plan allows: 16 by rows, a multiple of q by blocks."""
    (k, q, p), (l, s, r) = shapes
    return 16 if q % l == 0 else max(16, q)
MONARCH_FALLBACK = [
    ((16, 8, 16), (8, 32, 16)),       # l = 8: not a multiple of 16
    ((4, 24, 16), (16, 16, 6)),       # l = 16 does not divide q = 24
    ((3, 5, 4), (5, 7, 3)),           # odd sizes
    ((16, 16, 17), (16, 16, 16)),     # p = 17
    ((1, 512, 16), (16, 16, 32)),     # n_sub*J >= 32*16 = 512 > 256 accumulator columns
    ((16, 16, 16), (16, 272, 16)),    # s = 272 > 256
]


def _set_chunk(monkeypatch, chunk, bt=0):
    for name, v in (("MMM_MONARCH_CHUNK", chunk), ("MMM_MONARCH_BT", bt)):
        if v:
            monkeypatch.setenv(name, str(v))
        else:
            monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("dtype", LOWP_DTYPES, ids=_id)
@pytest.mark.parametrize("chunk", ["auto", "smallest"])
@pytest.mark.parametrize("shapes", MONARCH_FUSED, ids=_mid)
def test_monarch_fused_shapes(device, monkeypatch, shapes, chunk, dtype):
    """Shapes that take the fused forward (on CUDA for fp16/bf16; the CPU twin for every dtype),
    with the chunk the plan picks and forced to the smallest one (several chunks)."""
    chunk = 0 if chunk == "auto" else _smallest_chunk(shapes)
    _set_chunk(monkeypatch, chunk)
    x, w1, w2 = monarch_inputs((37,), *shapes, dtype, device)
    plan = monarch_forward_plan(x, w1, w2)
    expect_fused = not (device == "cuda" and dtype == F32)
    assert plan["fused"] == expect_fused, plan
    if expect_fused:
        l = shapes[1][0]
        assert plan["chunk"] % 16 == 0 and l % plan["chunk"] == 0
        assert chunk == 0 or plan["chunk"] == chunk
        assert plan["tokens_per_cta"] in (16, 32)
    check_monarch(x, w1, w2)


@pytest.mark.parametrize("shapes", [MONARCH_FUSED[2], MONARCH_FUSED[8]], ids=_mid)
@pytest.mark.parametrize("bt", [16, 32])
@pytest.mark.parametrize("tokens", [1, 15, 16, 17, 31, 33, 100])
def test_monarch_fused_token_tails(device, monkeypatch, tokens, bt, shapes):
    """Token counts around the 16/32-token CTA tiles (both kernel instantiations), by rows and
    by blocks: the rows past the end are zero-filled on load and never stored."""
    _set_chunk(monkeypatch, _smallest_chunk(shapes), bt)
    x, w1, w2 = monarch_inputs((tokens,), *shapes, BF16, device)
    plan = monarch_forward_plan(x, w1, w2)
    assert plan["fused"] and plan["tokens_per_cta"] == bt, plan
    check_monarch(x, w1, w2)


@pytest.mark.parametrize("cap", [1, 2, 4])
@pytest.mark.parametrize("shapes", [MONARCH_FUSED[i] for i in (0, 2, 6, 8)], ids=_mid)
def test_monarch_fused_units_per_step(device, monkeypatch, shapes, cap):
    """On CUDA, stage-1 GEMMs of n1 <= 32 columns go 2 or 4 to a pipeline step (64 / n1, so that
    each warp has a 16-column tile), stage-2 blocks of s <= 32 likewise; MMM_MONARCH_UNITS caps
    both. Every setting computes the same map. The CPU twin has no pipeline steps: always 1."""
    (k, q, p), (l, s, r) = shapes
    chunk = _smallest_chunk(shapes)
    _set_chunk(monkeypatch, chunk)
    monkeypatch.setenv("MMM_MONARCH_UNITS", str(cap))
    x, w1, w2 = monarch_inputs((37,), *shapes, BF16, device)
    plan = monarch_forward_plan(x, w1, w2)
    assert plan["fused"] and plan["chunk"] == chunk, plan
    n1 = (q // l) * chunk if q % l == 0 else q
    assert plan["units_per_step"] == (1 if device == "cpu" else min(cap, max(1, 64 // n1))), plan
    assert plan["blocks_per_step"] == (1 if device == "cpu" else min(cap, max(1, 64 // s))), plan
    check_monarch(x, w1, w2)


@pytest.mark.parametrize("bt", [16, 32])
@pytest.mark.parametrize("shapes", MONARCH_FUSED, ids=_mid)
def test_monarch_fused_tokens_per_cta(device, monkeypatch, shapes, bt):
    """Every fused shape through both instantiations (16 and 32 tokens per CTA) where they fit."""
    _set_chunk(monkeypatch, 0, bt)
    x, w1, w2 = monarch_inputs((45,), *shapes, F16, device)
    plan = monarch_forward_plan(x, w1, w2)
    if bt == 16:  # every MONARCH_FUSED shape fits 99 KB at 16 tokens per CTA
        assert plan["fused"], plan
    if plan["fused"]:
        assert plan["tokens_per_cta"] == bt
    check_monarch(x, w1, w2)


@pytest.mark.parametrize("dtype", LOWP_DTYPES, ids=_id)
@pytest.mark.parametrize("tokens", [1, 15, 17, 100, 3000])
@pytest.mark.parametrize("block", [32, 64])
def test_monarch_cluster_kernel(device, monkeypatch, block, tokens, dtype):
    """Square Monarch of blocks of 32 or 64 (MonarchLinear(1024), MonarchLinear(4096)): on sm_90
    the kernel of thread-block clusters that holds the weights on chip (clusters of block / 8
    CTAs, persistent over 16-token tiles: 3000 tokens give each cluster several); elsewhere the
    streaming kernel or the CPU twin. MMM_MONARCH_CLUSTER=0 takes the streaming kernel, which
    computes the same map."""
    if device == "cpu" and tokens > 100:
        pytest.skip("the CPU twin has no per-tile state: many tiles matter to the cluster kernel only")
    for name in ("MMM_MONARCH_CHUNK", "MMM_MONARCH_BT", "MMM_MONARCH_UNITS", "MMM_MONARCH_CLUSTER", "MMM_MONARCH_FUSED"):
        monkeypatch.delenv(name, raising=False)
    shape = (block, block, block)
    x, w1, w2 = monarch_inputs((tokens,), shape, shape, dtype, device)
    plan = monarch_forward_plan(x, w1, w2)
    clusters = 0
    if device == "cuda":
        props = torch.cuda.get_device_properties(x.device)
        need = 2 * (4 * 16 * (8 * block + 8) + 3 * 8 * block * 16)  # monarch_cluster_smem: 113 KB at 64
        if props.major >= 9 and props.shared_memory_per_block_optin >= need:
            clusters = block // 8
    assert plan["fused"] and plan["cluster"] == clusters, plan
    out, _ = check_monarch(x, w1, w2)
    monkeypatch.setenv("MMM_MONARCH_CLUSTER", "0")
    assert monarch_forward_plan(x, w1, w2)["cluster"] == 0
    torch.testing.assert_close(mmm.monarch_matmul(x, w1, w2), out, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("shapes", MONARCH_FALLBACK, ids=_mid)
def test_monarch_fallback_shapes(device, shapes):
    """Shapes the fused kernel does not take run the two block GEMMs, and are right."""
    x, w1, w2 = monarch_inputs((9,), *shapes, BF16, device)
    assert not monarch_forward_plan(x, w1, w2)["fused"]
    check_monarch(x, w1, w2)


@pytest.mark.parametrize("dtype", [F32, BF16], ids=_id)
def test_monarch_fused_matches_two_gemms(device, monkeypatch, dtype):
    """The fused forward and the two-GEMM forward compute the same map with the intermediate
    rounded the same way (to x's dtype): they agree to accumulation-order round-off."""
    x, w1, w2 = monarch_inputs((70,), *MONARCH_FUSED[3], dtype, device)
    _set_chunk(monkeypatch, 16)
    assert monarch_forward_plan(x, w1, w2)["fused"]
    fused = mmm.monarch_matmul(x, w1, w2)
    monkeypatch.setenv("MMM_MONARCH_FUSED", "0")
    assert not monarch_forward_plan(x, w1, w2)["fused"]
    two = mmm.monarch_matmul(x, w1, w2)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == F32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(fused, two, **tol)


def test_monarch_plan_rules(monkeypatch):
    """The plan's rules on the CPU twin (which plans for a 227 KB shared-memory GPU, an H100)."""
    def plan(w1s, w2s, dtype=BF16, tokens=4):
        x, w1, w2 = monarch_inputs((tokens,), w1s, w2s, dtype, "cpu")
        return monarch_forward_plan(x, w1, w2)
    for shapes in MONARCH_FUSED:
        assert plan(*shapes)["fused"], shapes
    for shapes in MONARCH_FALLBACK:
        assert not plan(*shapes)["fused"], shapes
    for shapes in MONARCH_FUSED + [((64, 64, 64), (64, 64, 64))]:
        p = plan(*shapes)
        assert p["fused"] and shapes[1][0] % p["chunk"] == 0 and p["smem_bytes"] <= 227 * 1024
    # 4096 features (64 blocks of 64) does not fit in one chunk: x is re-read l / chunk times.
    assert plan((64, 64, 64), (64, 64, 64))["chunk"] < 64
    assert plan((32, 32, 32), (32, 32, 32), dtype=F64)["fused"]  # the twin serves every dtype
    # Every fused shape also fits a 99 KB GPU (RTX 30/40) at 16 tokens per CTA and its smallest
    # chunk, which the plan there can always fall back to.
    for shapes in MONARCH_FUSED + [((64, 64, 64), (64, 64, 64))]:
        _set_chunk(monkeypatch, _smallest_chunk(shapes), 16)
        p = plan(*shapes)
        assert p["fused"] and p["smem_bytes"] <= 99 * 1024, (shapes, p)


def test_monarch_plan_l2_rule(device, monkeypatch):
    """CUDA keeps the two GEMMs where every CTA would stream far more weight bytes from L2 than
    fusing saves in HBM traffic (here 1.1 MB of weights per 16 tokens of 4 KB in, 2 KB out:
    ~74 KB a token against 3x 14 KB), whatever the GPU's shared memory; MMM_MONARCH_FUSED=1
    fuses anyway. The CPU twin has no such rule."""
    x, w1, w2 = monarch_inputs((40,), (8, 256, 256), (32, 16, 64), BF16, device)
    assert monarch_forward_plan(x, w1, w2)["fused"] == (device == "cpu")
    check_monarch(x, w1, w2)
    monkeypatch.setenv("MMM_MONARCH_FUSED", "1")
    assert monarch_forward_plan(x, w1, w2)["fused"]
    check_monarch(x, w1, w2)


def test_monarch_plan_env(monkeypatch):
    x, w1, w2 = monarch_inputs((4,), *MONARCH_FUSED[1], BF16, "cpu")
    monkeypatch.setenv("MMM_MONARCH_FUSED", "0")
    assert not monarch_forward_plan(x, w1, w2)["fused"]
    monkeypatch.delenv("MMM_MONARCH_FUSED")
    monkeypatch.setenv("MMM_MONARCH_CHUNK", "48")  # does not divide l = 32: no fused plan
    assert not monarch_forward_plan(x, w1, w2)["fused"]
    check_monarch(x, w1, w2)
    monkeypatch.setenv("MMM_MONARCH_CHUNK", "32")
    monkeypatch.setenv("MMM_MONARCH_BT", "16")  # 1024 features: x read once at 16 tokens per CTA
    p = monarch_forward_plan(x, w1, w2)
    assert p["fused"] and p["chunk"] == 32 and p["tokens_per_cta"] == 16
    monkeypatch.setenv("MMM_MONARCH_BT", "8")  # not an instantiation
    assert not monarch_forward_plan(x, w1, w2)["fused"]


@pytest.mark.parametrize("layout", ["misaligned", "col_slice", "transposed"])
def test_monarch_fused_layouts(device, layout):
    """x views: rows that are not 16-byte aligned fall back to the two GEMMs on CUDA (cp.async
    needs 16-byte rows); the CPU twin takes every layout."""
    gen = torch.Generator().manual_seed(15)
    x = _layout(layout, (3, 11, 256), BF16, device, gen)
    _, w1, w2 = monarch_inputs((1,), *MONARCH_FUSED[0], BF16, device, seed=16)
    plan = monarch_forward_plan(x, w1, w2)
    if device == "cpu" or layout == "transposed":  # transposed: a contiguous copy is made
        assert plan["fused"]
    elif layout == "misaligned":
        assert not plan["fused"]
    check_monarch(x, w1, w2)


@pytest.mark.cuda
@pytest.mark.parametrize("shapes,tokens,fused", [
    (((32, 32, 32), (32, 32, 32)), 16384, True),      # 1024 features
    (((64, 64, 64), (64, 64, 64)), 16384, True),      # 4096 features: the performance target
    (((64, 128, 128), (64, 128, 128)), 4097, None),   # 8192: fused where the smem allows
    (((128, 64, 64), (128, 64, 64)), 4097, None),     # 8192, 128 blocks by blocks: 182 KB at 16 tokens
], ids=lambda v: _mid(v) if isinstance(v, tuple) else str(v))
def test_cuda_monarch_fused_benchmark_shapes(shapes, tokens, fused):
    x, w1, w2 = monarch_inputs((tokens,), *shapes, BF16, "cuda")
    plan = monarch_forward_plan(x, w1, w2)
    if fused is not None:
        assert plan["fused"] == fused, plan
    check_monarch(x, w1, w2, grad=False)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [F16, BF16], ids=_id)
def test_cuda_monarch_fused_matches_cpu_twin(monkeypatch, dtype):
    """The kernel and its CPU twin use one index map: same chunking, close results."""
    _set_chunk(monkeypatch, 16)
    x, w1, w2 = monarch_inputs((45,), *MONARCH_FUSED[3], dtype, "cpu")
    yc = mmm.monarch_matmul(x, w1, w2)
    xg, w1g, w2g = x.cuda(), w1.cuda(), w2.cuda()
    assert monarch_forward_plan(xg, w1g, w2g)["fused"]
    yg = mmm.monarch_matmul(xg, w1g, w2g)
    torch.testing.assert_close(yg.cpu(), yc, rtol=2e-2, atol=2e-2)


@pytest.mark.cuda
@pytest.mark.parametrize("shapes", [MONARCH_FUSED[2], MONARCH_FUSED[8]], ids=_mid)
def test_monarch_fused_sanitizer_subset(monkeypatch, shapes):
    """compute-sanitizer: forced several-chunk runs with a token tail, by rows (n_sub = 2) and by
    blocks (q = 32)."""
    _set_chunk(monkeypatch, _smallest_chunk(shapes))
    x, w1, w2 = monarch_inputs((35,), *shapes, BF16, "cuda")
    assert monarch_forward_plan(x, w1, w2)["fused"]
    check_monarch(x, w1, w2, grad=False)


# ---------------------------------------------------------------------------------------------
# opcheck
# ---------------------------------------------------------------------------------------------
def _bdm_opcheck_cases(device):
    rg = lambda t: t.clone().requires_grad_()  # noqa: E731
    x, w = bdm_inputs((4, 3), 2, 5, 8, F32, device)
    xb, wb = bdm_inputs((6,), 4, 16, 16, BF16, device)
    x0, w0 = bdm_inputs((), 3, 2, 4, F32, device)
    xe, we = bdm_inputs((0,), 2, 3, 4, F32, device)
    xn = _layout("col_slice", (5, 16), F32, device, torch.Generator().manual_seed(1))
    return [(x, w), (rg(x), rg(w)), (rg(xb), rg(wb)), (rg(x0), rg(w0)), (rg(xe), rg(we)),
            (rg(xn), rg(bdm_inputs((1,), 4, 3, 4, F32, device)[1]))]


@pytest.mark.parametrize("case", range(6))
def test_opcheck_block_diag(device, case):
    args = _bdm_opcheck_cases(device)[case]
    torch.library.opcheck(torch.ops.mmm.block_diag_matmul.default, args)


def _monarch_opcheck_cases(device):
    rg = lambda t: t.clone().requires_grad_()  # noqa: E731
    out = []
    for lead, shapes, dtype, grad in [((5,), MONARCH_SQUARE[1], F32, False),
                                      ((2, 3), MONARCH_RECT[0], F32, True),
                                      ((4,), MONARCH_RECT[2], BF16, True),
                                      ((0,), MONARCH_RECT[1], F32, True)]:
        ts = monarch_inputs(lead, *shapes, dtype, device)
        out.append(tuple(rg(t) for t in ts) if grad else ts)
    return out


@pytest.mark.parametrize("case", range(4))
def test_opcheck_monarch(device, case):
    args = _monarch_opcheck_cases(device)[case]
    torch.library.opcheck(torch.ops.mmm.monarch_matmul.default, args)


# ---------------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def dynamo_reset():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compiled_fn(x, w, w1, w2):
    y = mmm.block_diag_matmul(x * 1.5, w)            # (..., 48) -> (..., 48)
    z = mmm.monarch_matmul(torch.tanh(y), w1, w2)     # (..., 48) -> (..., 60)
    return z * 2.0, y


def _compile_leaves(device, lead=(6,)):
    gen = torch.Generator().manual_seed(5)
    x = make_tensor(tuple(lead) + (48,), F32, device, gen)
    w = make_tensor((4, 12, 12), F32, device, gen, scale=0.3)
    w1 = make_tensor((4, 6, 12), F32, device, gen, scale=0.3)
    w2 = make_tensor((6, 10, 4), F32, device, gen, scale=0.5)
    return [t.requires_grad_() for t in (x, w, w1, w2)]


def _run_and_grad(fn, leaves):
    z, y = fn(*leaves)
    grads = torch.autograd.grad(z.pow(2).sum() + y.sum(), leaves)
    return [z, y, *grads]


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_matches_eager(device, backend, dynamo_reset):
    leaves = _compile_leaves(device)
    eager = _run_and_grad(_compiled_fn, leaves)
    leaves_c = [t.detach().clone().requires_grad_() for t in leaves]
    cfn = torch.compile(_compiled_fn, backend=backend, fullgraph=True)
    comp = _run_and_grad(cfn, leaves_c)
    tol = dict(rtol=0, atol=0) if backend == "aot_eager" else dict(rtol=1e-5, atol=1e-5)
    for name, a, e in zip(["z", "y", "dx", "dw", "dw1", "dw2"], comp, eager):
        torch.testing.assert_close(a, e, **tol, msg=lambda m, name=name: f"{name}: {m}")


def test_compile_dynamic_shapes(device, dynamo_reset):
    """dynamic=True: the fake kernels must give symbolic output shapes; new token counts and a
    different leading rank run without error and match eager."""
    cfn = torch.compile(_compiled_fn, backend="aot_eager", fullgraph=True, dynamic=True)
    for lead in [(5,), (9,), (0,), (2, 7)]:
        leaves = _compile_leaves(device, lead)
        eager = _run_and_grad(_compiled_fn, leaves)
        comp = _run_and_grad(cfn, [t.detach().clone().requires_grad_() for t in leaves])
        for a, e in zip(comp, eager):
            torch.testing.assert_close(a, e, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------------------------
def test_deterministic_dw(device):
    if device == "cpu":
        tokens, nb, k = 1000, 4, 64
    else:
        tokens, nb, k = 16384, 16, 64
    x, w = bdm_inputs((tokens,), nb, k, k, BF16, device, seed=3)
    dout = make_tensor((tokens, nb * k), BF16, device, torch.Generator().manual_seed(4))
    xm, w1, w2 = monarch_inputs((tokens,), (nb, nb, k), (nb, k, nb), BF16, device, seed=5)
    doutm = make_tensor((tokens, nb * k), BF16, device, torch.Generator().manual_seed(6))

    def grads(threads=None):
        old = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            leaves = [t.clone().requires_grad_() for t in (x, w)]
            g = list(torch.autograd.grad(mmm.block_diag_matmul(*leaves), leaves, dout))
            leaves = [t.clone().requires_grad_() for t in (xm, w1, w2)]
            g += list(torch.autograd.grad(mmm.monarch_matmul(*leaves), leaves, doutm))
            return g
        finally:
            torch.set_num_threads(old)

    g1, g2 = grads(), grads()
    for name, a, c in zip(["dx", "dw", "monarch dx", "dw1", "dw2"], g1, g2):
        assert torch.equal(a, c), f"{name} differs between two identical backward runs"
    if device == "cpu":  # and does not depend on the thread count
        g3 = grads(threads=1)
        for name, a, c in zip(["dx", "dw", "monarch dx", "dw1", "dw2"], g1, g3):
            assert torch.equal(a, c), f"{name} differs between 1 thread and the default"


# ---------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------
def _bdm_bad_cases():
    r = lambda *s, dtype=F32: torch.randn(*s).to(dtype)  # noqa: E731
    return {
        "k_not_dividing": (lambda: (r(4, 10), r(3, 2, 3)), r"\b(x|w)\b"),
        "nb_mismatch": (lambda: (r(4, 12), r(2, 5, 4)), r"\b(x|w)\b"),
        "too_many_blocks": (lambda: (r(4, 12), r(4, 5, 4)), r"\b(x|w)\b"),
        "w_2d": (lambda: (r(4, 12), r(5, 12)), r"\bw\b"),
        "w_4d": (lambda: (r(4, 12), r(1, 2, 5, 6)), r"\bw\b"),
        "w_1d": (lambda: (r(4, 12), r(12)), r"\bw\b"),
        "dtype_x32_wbf16": (lambda: (r(4, 12), r(2, 5, 6, dtype=BF16)), r"\bw\b"),
        "dtype_xbf16_wf16": (lambda: (r(4, 12, dtype=BF16), r(2, 5, 6, dtype=F16)), r"\bw\b"),
        "dtype_x32_w64": (lambda: (r(4, 12), r(2, 5, 6, dtype=F64)), r"\bw\b"),
        "x_int32": (lambda: (torch.ones(4, 12, dtype=torch.int32),
                             torch.ones(2, 5, 6, dtype=torch.int32)), r"\bx\b"),
        "x_int64_w_f32": (lambda: (torch.ones(4, 12, dtype=torch.int64), r(2, 5, 6)), r"\b(x|w)\b"),
    }


@pytest.mark.parametrize("api", ["public", "raw"])
@pytest.mark.parametrize("case", list(_bdm_bad_cases()))
def test_bad_inputs_block_diag(case, api):
    make, match = _bdm_bad_cases()[case]
    x, w = make()
    fn = mmm.block_diag_matmul if api == "public" else torch.ops.mmm.block_diag_matmul
    with pytest.raises(RuntimeError, match=match):
        fn(x, w)


def test_bad_input_zero_dim_x():
    with pytest.raises(RuntimeError):
        mmm.block_diag_matmul(torch.tensor(1.0), torch.ones(1, 1, 1))
    with pytest.raises(RuntimeError):
        mmm.monarch_matmul(torch.tensor(1.0), torch.ones(1, 1, 1), torch.ones(1, 1, 1))


def _monarch_bad_cases():
    r = lambda *s, dtype=F32: torch.randn(*s).to(dtype)  # noqa: E731
    return {
        "N_mismatch": (lambda: (r(4, 48), r(4, 6, 10), r(6, 10, 4)), r"\b(x|w1)\b"),
        "N_not_dividing": (lambda: (r(4, 48), r(5, 6, 7), r(6, 5, 5)), r"\b(x|w1)\b"),
        "w2_lr_mismatch": (lambda: (r(4, 48), r(4, 6, 12), r(6, 10, 5)), r"\bw2\b"),
        "w2_l_mismatch": (lambda: (r(4, 48), r(4, 6, 12), r(5, 10, 4)), r"\bw2\b"),
        "w1_2d": (lambda: (r(4, 48), r(24, 12), r(6, 10, 4)), r"\bw1\b"),
        "w2_2d": (lambda: (r(4, 48), r(4, 6, 12), r(60, 4)), r"\bw2\b"),
        "w2_4d": (lambda: (r(4, 48), r(4, 6, 12), r(1, 6, 10, 4)), r"\bw2\b"),
        "w1_dtype": (lambda: (r(4, 48), r(4, 6, 12, dtype=BF16), r(6, 10, 4)), r"\bw1\b"),
        "w2_dtype": (lambda: (r(4, 48, dtype=BF16), r(4, 6, 12, dtype=BF16), r(6, 10, 4)),
                     r"\bw2\b"),
        "x_int": (lambda: tuple(torch.ones(*s, dtype=torch.int32)
                                for s in [(4, 48), (4, 6, 12), (6, 10, 4)]), r"\bx\b"),
    }


@pytest.mark.parametrize("api", ["public", "raw"])
@pytest.mark.parametrize("case", list(_monarch_bad_cases()))
def test_bad_inputs_monarch(case, api):
    make, match = _monarch_bad_cases()[case]
    args = make()
    fn = mmm.monarch_matmul if api == "public" else torch.ops.mmm.monarch_matmul
    with pytest.raises(RuntimeError, match=match):
        fn(*args)


@pytest.mark.cuda
def test_bad_inputs_cuda():
    x = torch.randn(4, 12, device="cuda")
    with pytest.raises(RuntimeError, match=r"\bw\b"):
        mmm.block_diag_matmul(x, torch.randn(2, 5, 6))
    with pytest.raises(RuntimeError, match=r"\bw\b"):
        mmm.block_diag_matmul(x.cpu(), torch.randn(2, 5, 6, device="cuda"))
    with pytest.raises(RuntimeError, match=r"\bx\b"):
        mmm.block_diag_matmul(x.double(), torch.randn(2, 5, 6, device="cuda", dtype=F64))
    x = torch.randn(4, 48, device="cuda")
    w1, w2 = torch.randn(4, 6, 12, device="cuda"), torch.randn(6, 10, 4, device="cuda")
    with pytest.raises(RuntimeError, match=r"\bw1\b"):
        mmm.monarch_matmul(x, w1.cpu(), w2)
    with pytest.raises(RuntimeError, match=r"\bw2\b"):
        mmm.monarch_matmul(x, w1, w2.cpu())
    with pytest.raises(RuntimeError, match=r"\bx\b"):
        mmm.monarch_matmul(x.double(), w1.double(), w2.double())


# ---------------------------------------------------------------------------------------------
# CUDA only: the fast paths (block sizes multiples of 16 up to 256), 16k tokens, odd sizes
# ---------------------------------------------------------------------------------------------
CUDA_FAST_BLOCKS = ([(b, b) for b in (16, 32, 48, 64, 80, 96, 128, 160, 192, 224, 256)]
                    + [(16, 256), (256, 16), (64, 128), (128, 64), (32, 96), (256, 48)])
CUDA_ODD_BLOCKS = [(1, 1), (3, 5), (8, 8), (15, 17), (17, 33), (100, 7), (255, 257), (257, 255)]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", LOWP_DTYPES, ids=_id)
@pytest.mark.parametrize("tokens", [1000, 4097])
@pytest.mark.parametrize("k,n", CUDA_FAST_BLOCKS, ids=lambda v: str(v))
def test_cuda_fast_path_blocks(k, n, tokens, dtype):
    x, w = bdm_inputs((tokens,), 4, n, k, dtype, "cuda")
    check_bdm(x, w)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", LOWP_DTYPES, ids=_id)
@pytest.mark.parametrize("tokens", [1, 7, 1000, 16385])
@pytest.mark.parametrize("k,n", CUDA_ODD_BLOCKS, ids=lambda v: str(v))
def test_cuda_odd_blocks(k, n, tokens, dtype):
    x, w = bdm_inputs((tokens,), 3, n, k, dtype, "cuda")
    check_bdm(x, w)


@pytest.mark.cuda
@pytest.mark.parametrize("nb,k,n", [(4, 256, 256), (8, 128, 128), (16, 64, 64), (32, 32, 32),
                                    (64, 16, 16), (16, 64, 128), (8, 128, 64)], ids=_id)
def test_cuda_16k_tokens_bf16(nb, k, n):
    """The benchmark shape: 16384 tokens, 1024 input features, bf16."""
    x, w = bdm_inputs((16384,), nb, n, k, BF16, "cuda")
    check_bdm(x, w)


@pytest.mark.cuda
@pytest.mark.parametrize("layout", ["transposed", "col_slice", "misaligned", "col_stride2"])
def test_cuda_16k_tokens_noncontiguous(layout):
    gen = torch.Generator().manual_seed(8)
    x = _layout(layout, (128, 128, 1024), BF16, "cuda", gen)
    w = make_tensor((16, 64, 64), BF16, "cuda", gen, scale=0.125)
    check_bdm(x, w)


@pytest.mark.cuda
@pytest.mark.parametrize("shapes,tokens", [
    (((32, 32, 32), (32, 32, 32)), 16384),      # N = 1024
    (((64, 64, 64), (64, 64, 64)), 16384),      # N = 4096
    (((64, 128, 128), (64, 128, 128)), 4096),   # N = 8192, 64 blocks
    (((128, 64, 64), (128, 64, 64)), 4096),     # N = 8192, 128 blocks
    (((16, 96, 64), (32, 48, 48)), 16385),      # N = 1024 -> 1536, rectangular, odd tokens
    (((4, 6, 12), (6, 10, 4)), 16385),          # N = 48 -> 60
], ids=lambda v: _mid(v) if isinstance(v, tuple) else str(v))
def test_cuda_monarch_large_bf16(shapes, tokens):
    x, w1, w2 = monarch_inputs((tokens,), *shapes, BF16, "cuda")
    check_monarch(x, w1, w2)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [F32, BF16], ids=_id)
def test_cuda_more_tokens_than_grid_rows(dtype):
    """65535 * 128 + 77 tokens: more row tiles than a CUDA grid's y dimension holds for both the
    128-row tensor-core tiles and the 64-row fp32 ones, so the kernels must stride over rows."""
    x, w = bdm_inputs((65535 * 128 + 77,), 2, 8, 8, dtype, "cuda")
    check_bdm(x, w)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [F16, BF16], ids=_id)
@pytest.mark.parametrize("k,n,tokens", [(64, 64, 1000), (17, 33, 100), (256, 16, 4097)], ids=_id)
def test_cuda_simt_path_half(monkeypatch, k, n, tokens, dtype):
    """MMM_DISABLE_TENSOR_CORES=1 sends fp16/bf16 to the fp32-FMA kernel: it must be right too."""
    monkeypatch.setenv("MMM_DISABLE_TENSOR_CORES", "1")
    x, w = bdm_inputs((tokens,), 3, n, k, dtype, "cuda")
    check_bdm(x, w)
    xm, w1, w2 = monarch_inputs((tokens,), *MONARCH_RECT[0], dtype, "cuda")
    check_monarch(xm, w1, w2)


@pytest.mark.cuda
@pytest.mark.parametrize("op", ["block_diag", "monarch"])
def test_cuda_fp32_is_not_tf32(op):
    """fp32 on CUDA computes in full fp32, also when PyTorch's TF32 is switched on: the error vs
    float64 must be at fp32 level (TF32's 10-bit mantissa would give ~1e-3 relative)."""
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")  # let PyTorch use TF32
        if op == "block_diag":
            x, w = bdm_inputs((2048,), 4, 256, 256, F32, "cuda")
            args, ref = (x, w), block_diag_reference
            y = mmm.block_diag_matmul(*args)
        else:
            x, w1, w2 = monarch_inputs((2048,), (32, 32, 32), (32, 32, 32), F32, "cuda")
            args, ref = (x, w1, w2), monarch_reference
            y = mmm.monarch_matmul(*args)
    finally:
        torch.set_float32_matmul_precision(old)
    y64 = ref(*[a.double() for a in args])
    rel = (y.double() - y64).abs().max().item() / y64.abs().max().item()
    assert rel < 1e-5, f"relative error {rel:.2e}: not full fp32"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", LOWP_DTYPES, ids=_id)
def test_cuda_matches_cpu(dtype):
    x, w = bdm_inputs((37, 3), 4, 48, 32, dtype, "cpu")
    xm, w1, w2 = monarch_inputs((37,), *MONARCH_RECT[0], dtype, "cpu")
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == F32 else dict(rtol=1e-2, atol=2e-2)
    for fn, args in [(mmm.block_diag_matmul, (x, w)), (mmm.monarch_matmul, (xm, w1, w2))]:
        cpu = [t.clone().requires_grad_() for t in args]
        gpu = [t.cuda().requires_grad_() for t in args]
        yc, yg = fn(*cpu), fn(*gpu)
        torch.testing.assert_close(yg.cpu(), yc, **tol)
        dy = torch.randn(yc.shape, generator=torch.Generator().manual_seed(0)).to(dtype)
        gc = torch.autograd.grad(yc, cpu, dy)
        gg = torch.autograd.grad(yg, gpu, dy.cuda())
        for a, b in zip(gg, gc):
            torch.testing.assert_close(a.cpu(), b, **tol)


# ---------------------------------------------------------------------------------------------
# CUDA only: split-K weight gradients and the cp.async pipeline's operand layouts
# ---------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("splits", [None, 1, 2, 3, 7, 64])
@pytest.mark.parametrize("nb,k,n,tokens", [(16, 64, 64, 16385), (4, 48, 24, 1000), (2, 17, 33, 4099)],
                         ids=_id)
def test_cuda_split_k_dw(monkeypatch, splits, nb, k, n, tokens):
    """dweight reduces over every token: split-K cuts the tokens into ranges whose fp32 partials
    a second kernel sums in order. Any split count is right, and bitwise reproducible."""
    if splits is not None:
        monkeypatch.setenv("MMM_BLOCK_GEMM_SPLITS", str(splits))
    x, w = bdm_inputs((tokens,), nb, n, k, BF16, "cuda", seed=9)
    _, grads = check_bdm(x, w)
    dy = make_tensor((tokens, nb * n), BF16, "cuda", torch.Generator().manual_seed(7))
    again = torch.ops.mmm.block_diag_matmul_backward(dy, x, w)
    assert torch.equal(again[1], grads[1]), "dw differs between two runs with the same splits"
    xm, w1, w2 = monarch_inputs((tokens,), (4, 16, 16), (16, 16, 4), BF16, "cuda", seed=10)
    check_monarch(xm, w1, w2)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [F16, BF16], ids=_id)
@pytest.mark.parametrize("nb,k,n,tokens", [
    (3, 24, 40, 97),     # multiples of 8, not 16: 16-byte chunks, ragged 32-wide K-tiles
    (2, 8, 8, 33),       # one chunk per row; dw's K (tokens) ends one past a tile
    (5, 20, 12, 50),     # row strides not multiples of 8 elements: element-wise staging
    (2, 136, 72, 300),   # tiles past 128 rows / 64 columns, partial last tiles
], ids=_id)
def test_cuda_pipeline_layouts(nb, k, n, tokens, dtype):
    """Forward, dx and dw stage their operands as [rows][k] or [k][rows] (whichever dimension is
    contiguous), with cp.async where rows are 16-byte chunks: every combination, with tails."""
    x, w = bdm_inputs((tokens,), nb, n, k, dtype, "cuda")
    check_bdm(x, w)


# ---------------------------------------------------------------------------------------------
# a small CUDA subset for compute-sanitizer (memcheck, racecheck): one shape per tile path
# (multiple-of-16 blocks, odd blocks, big blocks), partial tiles, misaligned and strided x,
# forward and backward of both ops
# ---------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [F32, BF16], ids=_id)
@pytest.mark.parametrize("k,n,tokens", [(16, 16, 37), (64, 128, 70), (256, 256, 65), (17, 33, 5)],
                         ids=_id)
def test_block_diag_sanitizer_subset(k, n, tokens, dtype):
    x, w = bdm_inputs((tokens,), 3, n, k, dtype, "cuda")
    check_bdm(x, w)


@pytest.mark.cuda
@pytest.mark.parametrize("layout", ["misaligned", "col_stride2"])
def test_block_diag_noncontiguous_sanitizer_subset(layout):
    gen = torch.Generator().manual_seed(2)
    x = _layout(layout, (3, 11, 128), BF16, "cuda", gen)
    w = make_tensor((4, 48, 32), BF16, "cuda", gen, scale=0.2)
    check_bdm(x, w)


@pytest.mark.cuda
@pytest.mark.parametrize("block", [32, 64])
def test_monarch_cluster_sanitizer_subset(monkeypatch, block):
    """compute-sanitizer: the sm_90 cluster kernel (skipped where it does not run), several
    tiles a cluster and a ragged last one."""
    for name in ("MMM_MONARCH_CHUNK", "MMM_MONARCH_BT", "MMM_MONARCH_UNITS", "MMM_MONARCH_CLUSTER", "MMM_MONARCH_FUSED"):
        monkeypatch.delenv(name, raising=False)
    x, w1, w2 = monarch_inputs((1000,), (block,) * 3, (block,) * 3, BF16, "cuda")
    if monarch_forward_plan(x, w1, w2)["cluster"] == 0:
        pytest.skip("this device does not run the cluster kernel")
    check_monarch(x, w1, w2, grad=False)


@pytest.mark.cuda
@pytest.mark.parametrize("shapes", [((16, 16, 16), (16, 16, 16)), MONARCH_RECT[2]], ids=_mid)
def test_monarch_sanitizer_subset(shapes):
    x, w1, w2 = monarch_inputs((67,), *shapes, BF16, "cuda")
    check_monarch(x, w1, w2)


@pytest.mark.cuda
def test_empty_sanitizer_subset():
    x, w = bdm_inputs((0,), 3, 16, 16, BF16, "cuda")
    _, grads = check_bdm(x, w)
    assert torch.equal(grads[1], torch.zeros_like(w))


# ---------------------------------------------------------------------------------------------
# The CUDA launchers and kernels (tensor-core block GEMM with split-K, the fp32 FMA kernel, the
# fused Monarch forward) run on the host: tests/emulate/block_diag_matmul.cpp via
# tests/emulate/run.sh, one fiber per CUDA thread, ldmatrix / mma.sync / cp.async modelled
# from the PTX ISA (tests/emulate/ptx_on_cpu.h), against the CPU twins. Opt-in (see
# run_emulation), ~1.5 min.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sanitizer", emulation_sanitizers())
def test_cuda_kernels_on_cpu_threads(tmp_path, sanitizer):
    # TSan: the cluster kernel in clusters of 4 only (its fiber contexts: 8 GB for clusters of 8).
    out = run_emulation("block_diag_matmul", ["quick"] if sanitizer == "thread" else [], tmp_path, sanitizer)
    assert "all ok" in out, out[-4000:]
