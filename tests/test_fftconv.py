"""Tests for mmm.fftconv, torch.ops.mmm.fftconv(_backward) and mmm.nn.FFTConv.

    y = postgate * (irfft(rfft(pregate * u, L) * rfft(k, L))[..., :N] + bias[:, None] * u)

Reference: the same expression through torch.fft (pad, rfft, multiply, irfft, slice) in float64
on upcast copies of the inputs, gradients by autograd through it. Accuracy rule (FlashAttention's,
as in test_fused_add_norm.py): for the output and every gradient,

    max|kernel - ref64| <= 2 * max|ref_lowp - ref64| + atol

where ref_lowp is PyTorch doing the same math at the kernel's storage precision: torch.fft in
float32 on the (rounded) inputs, rounded to the input dtype (torch.fft has no bfloat16 and, on the
CPU, no float16). atol is a small multiple of the dtype's resolution times the output's scale.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import mmm
from conftest import emulation_sanitizers, run_emulation
from mmm.ops.fftconv import fftconv_reference

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
NAMES = {F32: "fp32", F16: "fp16", BF16: "bf16", F64: "fp64"}
UNIT = {F32: 2e-6, F64: 1e-13, F16: 2e-4, BF16: 2e-3}
ARGS = ("u", "k", "bias", "pregate", "postgate")


def make_inputs(b, h, n, dtype, device, bias=True, pregate=True, postgate=True, k_dtype=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, h, n, generator=g, dtype=F64)
    k = torch.randn(h, n, generator=g, dtype=F64) / math.sqrt(n)  # O(1) outputs at every N
    bs = torch.randn(h, generator=g, dtype=F64) if bias else None
    pre = torch.randn(b, h, n, generator=g, dtype=F64) if pregate else None
    post = torch.randn(b, h, n, generator=g, dtype=F64) if postgate else None
    kd = k_dtype or dtype
    cast = lambda t, d=dtype: None if t is None else t.to(device, d)  # noqa: E731
    return [cast(u), cast(k, kd), cast(bs, kd), cast(pre), cast(post)]


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def run_with_grads(fn, args, dy, grad_mask=None):
    leaves = [None if a is None else a.detach().clone().requires_grad_(grad_mask is None or grad_mask[i])
              for i, a in enumerate(args)]
    y = fn(*leaves)
    want = [a for a in leaves if a is not None and a.requires_grad]
    grads = torch.autograd.grad(y, want, dy) if want else []
    out, it = [], iter(grads)
    for a in leaves:
        out.append(next(it) if a is not None and a.requires_grad else None)
    return y.detach(), out


def check(args, dy=None, grad_mask=None, atol_scale=1.0):
    """Output and every gradient of mmm.fftconv against float64 torch.fft, FlashAttention's rule."""
    u = args[0]
    dtype = u.dtype
    if dy is None:
        dy = torch.randn(u.shape, generator=torch.Generator().manual_seed(1), dtype=F64).to(u.device, dtype)
    y, grads = run_with_grads(mmm.fftconv, args, dy, grad_mask)
    assert y.shape == u.shape and y.dtype == dtype
    up = [None if a is None else a.detach().double() for a in args]
    ref_y, ref_grads = run_with_grads(fftconv_reference, up, dy.double(), grad_mask)
    low = [None if a is None else a.detach().float() for a in args]
    low_y, low_grads = run_with_grads(fftconv_reference, low, dy.float(), grad_mask)
    rnd = lambda t, like: None if t is None else t.to(like.dtype)  # noqa: E731
    low_y = low_y.to(dtype)
    low_grads = [rnd(g, a) for g, a in zip(low_grads, args)]
    for name, got, want, lp, a in zip(("y",) + ARGS, [y] + grads, [ref_y] + ref_grads, [low_y] + low_grads,
                                     [u] + list(args)):
        if want is None:
            assert got is None, f"{name}: got a gradient for an input that needs none"
            continue
        assert got is not None, f"{name}: missing gradient"
        assert got.shape == want.shape and got.dtype == a.dtype, f"{name}: {got.shape}/{got.dtype}"
        assert not torch.isnan(got).any(), f"{name}: NaN"
        scale = max(1.0, want.abs().max().item())
        atol = atol_scale * UNIT[a.dtype] * scale
        err, err_lp = max_err(got, want), max_err(lp, want)
        assert err <= 2 * err_lp + atol, (
            f"{name} ({NAMES[a.dtype]}): max|kernel - ref| = {err:.3e} > 2 * {err_lp:.3e} + {atol:.1e}")


# ---------------------------------------------------------------------------------------------
# Numerics
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [F32, F16, BF16, F64], ids=NAMES.get)
@pytest.mark.parametrize("n", [1, 2, 3, 17, 64, 100, 1000, 1024, 4096])
@pytest.mark.parametrize("opt", ["all", "none"])
def test_matches_reference(device, dtype, n, opt):
    if device == "cuda" and dtype == F64:
        pytest.skip("float64 is CPU-only")
    if opt == "none" and dtype != F32 and device == "cpu":
        pytest.skip("the ungated form in one dtype is enough on the CPU (test_optional_arguments covers the rest)")
    full = opt == "all"
    check(make_inputs(2, 3, n, dtype, device, bias=full, pregate=full, postgate=full, seed=n))


@pytest.mark.parametrize("bias,pregate,postgate", list(itertools.product([False, True], repeat=3)))
def test_optional_arguments(device, bias, pregate, postgate):
    check(make_inputs(3, 2, 77, F32, device, bias=bias, pregate=pregate, postgate=postgate))


@pytest.mark.parametrize("mask", [(True, False, False, False, False), (False, True, False, False, False),
                                  (False, False, True, False, False), (False, False, False, True, False),
                                  (False, False, False, False, True), (False, True, True, False, True)])
def test_partial_gradients(device, mask):
    # Only the gradients asked for are computed; each alone must still be right.
    check(make_inputs(2, 3, 50, F32, device), grad_mask=mask)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=NAMES.get)
def test_fp32_kernel_and_bias_with_lowp_u(device, dtype):
    check(make_inputs(2, 4, 300, dtype, device, k_dtype=F32))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [F32, BF16], ids=NAMES.get)
@pytest.mark.parametrize("b,h,n", [(2, 3, 8192), (2, 2, 16384), (1, 3, 16383), (2, 2, 16385), (1, 2, 32768),
                                   (1, 2, 65536), (1, 1, 100000), (1, 1, 1 << 20)])
def test_long_sequences_cuda(dtype, b, h, n):
    # Up to 16384 one CTA per row where shared memory allows (on sm_90 a cluster of two where one
    # CTA would be alone on its SM), beyond it the multi-kernel path.
    check(make_inputs(b, h, n, dtype, "cuda", seed=n), atol_scale=4.0)


@pytest.mark.cuda
@pytest.mark.parametrize("mask", [None, (True, False, False, False, False), (False, True, True, False, False),
                                  (False, False, False, False, True)])
def test_split_backward_cuda(mask):
    # On sm_90 the backward at N = 8192 runs on clusters of two CTAs (fftconv_bwd_split_kernel):
    # 512 channels make one batch chunk (fftconv_bwd_chunks), so each task sums dk and dbias over
    # the 4 rows; each partial set of gradients takes its own branches (no v, no inverse of g, no
    # epilogue).
    args = make_inputs(4, 512, 8192, F32, "cuda", seed=5)
    check(args, grad_mask=mask, atol_scale=4.0)
    if mask is None:
        dy = torch.randn_like(args[0])
        _, g1 = run_with_grads(mmm.fftconv, args, dy)
        _, g2 = run_with_grads(mmm.fftconv, args, dy)
        for a, b in zip(g1, g2):
            assert torch.equal(a, b)


@pytest.mark.cuda
@pytest.mark.parametrize("b,h,n", [(1, 70001, 8), (3, 40000, 5), (700, 100, 64)])
def test_many_rows_cuda(b, h, n):
    check(make_inputs(b, h, n, F32, "cuda"))


@pytest.mark.parametrize("n", [8192, 16384])
def test_long_sequences_cpu(n):
    check(make_inputs(1, 2, n, F32, "cpu", seed=n), atol_scale=4.0)


@pytest.mark.parametrize("dtype", [F32, F64], ids=NAMES.get)
@pytest.mark.parametrize("b,h,n", [(5, 37, 50), (3, 16, 9), (70, 1, 33)])
def test_channel_groups_cpu(dtype, b, h, n):
    # The CPU transforms 16 channels at a time, one per vector lane (the last group padded), and
    # sums the backward's dk / dbias over batch chunks: several groups, an exact one, and 64
    # chunks of a single channel.
    check(make_inputs(b, h, n, dtype, "cpu", seed=h))


def test_known_filters(device):
    # k = delta(s): y = u shifted right by s (causal), zeros in front; plus bias * u.
    u = torch.randn(2, 3, 50, device=device)
    for s in (0, 1, 7, 49):
        k = torch.zeros(3, 50, device=device)
        k[:, s] = 1.0
        want = torch.zeros_like(u)
        want[..., s:] = u[..., : 50 - s]
        torch.testing.assert_close(mmm.fftconv(u, k), want, rtol=0, atol=1e-5)
    bias = torch.tensor([0.5, -1.0, 2.0], device=device)
    torch.testing.assert_close(mmm.fftconv(u, torch.zeros(3, 50, device=device), bias), bias[:, None] * u)


def test_causal_and_skip_takes_raw_u(device):
    b, h, n = 2, 3, 40
    u, k, bias, pre, post = make_inputs(b, h, n, F32, device)
    y = mmm.fftconv(u, k, bias, pre, post)
    u2 = u.clone()
    u2[..., 25:] += 1.0  # the future must not leak into the past
    y2 = mmm.fftconv(u2, k, bias, pre, post)
    torch.testing.assert_close(y2[..., :25], y[..., :25], rtol=0, atol=2e-6)  # FFT rounding only
    assert (y2[..., 25:] - y[..., 25:]).abs().max() > 0.1
    # bias multiplies the raw u: with k = 0, y = post * bias * u whatever the pregate.
    z = torch.zeros_like(k)
    torch.testing.assert_close(mmm.fftconv(u, z, bias, pre, post), post * bias[:, None] * u)


def test_noncontiguous(device):
    b, h, n = 3, 4, 33
    u, k, bias, pre, post = make_inputs(b, h, n, F32, device)
    wide = torch.randn(h, 2 * n, device=device)
    wide[:, :n] = k
    check([u.transpose(0, 1).contiguous().transpose(0, 1), wide[:, :n], bias, pre, post])  # permuted u; k slice
    ut = torch.randn(n, b, h, device=device).permute(1, 2, 0)  # last dim strided: copied once
    check([ut, k, bias, pre.expand(b, h, n), post])
    big = torch.randn(b, 2 * h, n + 5, device=device)
    check([big[:, ::2, 2 : n + 2], k, bias, pre, post])


def test_empty(device):
    u = torch.randn(0, 3, 16, device=device, requires_grad=True)
    k = torch.randn(3, 16, device=device, requires_grad=True)
    bias = torch.randn(3, device=device, requires_grad=True)
    y = mmm.fftconv(u, k, bias)
    assert y.shape == (0, 3, 16)
    du, dk, db = torch.autograd.grad(y.sum(), (u, k, bias))
    assert du.shape == (0, 3, 16)
    assert torch.equal(dk, torch.zeros_like(k)) and torch.equal(db, torch.zeros_like(bias))
    y = mmm.fftconv(torch.randn(2, 0, 8, device=device), torch.randn(0, 8, device=device))
    assert y.shape == (2, 0, 8)


def test_deterministic_weight_gradients(device):
    args = make_inputs(9, 3, 300, F32, device)
    dy = torch.randn(9, 3, 300, device=device)
    _, g1 = run_with_grads(mmm.fftconv, args, dy)
    _, g2 = run_with_grads(mmm.fftconv, args, dy)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


def test_gradcheck():
    for b, h, n in ((2, 2, 5), (2, 1, 1)):
        args = [a.requires_grad_() for a in make_inputs(b, h, n, F64, "cpu", seed=n)]
        assert torch.autograd.gradcheck(mmm.fftconv, tuple(args))
        assert torch.autograd.gradcheck(lambda u, k: mmm.fftconv(u, k), (args[0], args[1]))


def test_opcheck(device):
    args = [a.requires_grad_() for a in make_inputs(2, 3, 8, F32, device)]
    torch.library.opcheck(torch.ops.mmm.fftconv, tuple(args))
    args = make_inputs(2, 3, 13, F32, device, bias=False, postgate=False)
    dy = torch.randn(2, 3, 13, device=device)
    torch.library.opcheck(torch.ops.mmm.fftconv_backward, (dy, *args), dict(
        need_u=True, need_k=True, need_bias=False, need_pregate=True, need_postgate=False))


def test_compile(device):
    torch._dynamo.reset()
    args = [a.requires_grad_() for a in make_inputs(2, 3, 24, F32, device)]
    f = torch.compile(lambda *a: mmm.fftconv(*a).sin().sum(), fullgraph=True, backend="aot_eager")
    f(*args).backward()
    args2 = [a.detach().clone().requires_grad_() for a in args]
    mmm.fftconv(*args2).sin().sum().backward()
    for a, b in zip(args, args2):
        torch.testing.assert_close(a.grad, b.grad)


def test_compile_inductor_layer():
    torch._dynamo.reset()
    layer = mmm.nn.FFTConv(4, 32)
    u = torch.randn(2, 4, 20, requires_grad=True)
    f = torch.compile(lambda x: layer(x, x.sigmoid()).square().sum(), fullgraph=True)
    f(u).backward()
    u2 = u.detach().clone().requires_grad_()
    layer(u2, u2.sigmoid()).square().sum().backward()
    torch.testing.assert_close(u.grad, u2.grad, rtol=1e-4, atol=1e-5)


def test_bad_inputs():
    u, k, bias, pre, post = make_inputs(2, 3, 10, F32, "cpu")
    cases = [
        ((u[0], k), "u must have shape \\(B, H, N\\)"),
        ((torch.randn(2, 3, 0), torch.randn(3, 0)), "must be >= 1"),
        ((u, k[:, :9]), "k must have shape \\(H, N\\) = \\(3, 10\\)"),
        ((u, k[:2]), "k must have shape"),
        ((u, k, bias[:2]), "bias must have shape \\(H,\\) = \\(3,\\)"),
        ((u, k, bias, pre[:, :, :9]), "pregate must have u's shape"),
        ((u, k, bias, pre, post[:1]), "postgate must have u's shape"),
        ((u, k.double()), "k must have u's dtype"),
        ((u, k, bias.double()), "bias must have u's dtype"),
        ((u, k, bias, pre.half()), "pregate must have u's dtype"),
        ((u, k, bias, pre, post.bfloat16()), "postgate must have u's dtype"),
        ((u.int(), k), "u must be"),
        ((torch.empty(1, 1, (1 << 20) + 1), torch.empty(1, (1 << 20) + 1)), "at most 1048576"),
    ]
    for args, msg in cases:
        with pytest.raises(RuntimeError, match=msg):
            mmm.fftconv(*args)
        with torch._subclasses.FakeTensorMode() as mode:  # the fake kernel says the same
            fake = [mode.from_tensor(a) for a in args]
            with pytest.raises(RuntimeError, match=msg):
                torch.ops.mmm.fftconv(*fake)


@pytest.mark.cuda
def test_bad_inputs_cuda():
    u, k, bias, pre, post = make_inputs(2, 3, 10, F32, "cuda")
    for args, msg in (((u.double(), k.double()), "float64 only on the CPU"), ((u, k.cpu()), "k is on cpu"),
                      ((u, k, bias.cpu()), "bias is on cpu"), ((u, k, bias, pre.cpu()), "pregate is on cpu"),
                      ((u, k, bias, pre, post.cpu()), "postgate is on cpu")):
        with pytest.raises(RuntimeError, match=msg):
            mmm.fftconv(*args)


@pytest.mark.cuda
def test_cpu_equals_cuda():
    args = make_inputs(2, 5, 3000, F32, "cpu")
    dy = torch.randn(2, 5, 3000)
    y, g = run_with_grads(mmm.fftconv, args, dy)
    yc, gc = run_with_grads(mmm.fftconv, [a.cuda() for a in args], dy.cuda())
    for a, b in zip([y] + g, [yc] + gc):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.parametrize("n", [1, 7, 300, 4096, 8192, 16384, 40000])
def test_sanitizer_subset(n):
    check(make_inputs(2, 2, n, F32, "cuda"), atol_scale=4.0)


# The CUDA kernels themselves, run on CPU threads (tests/emulate/fftconv.cpp via
# tests/emulate/run.sh) against a direct convolution in double, through all three shared-memory /
# scratch paths and rows split over clusters of two CTAs: opt-in (see run_emulation),
# ~1 min each.
@pytest.mark.parametrize("sanitizer", emulation_sanitizers())
def test_cuda_kernels_on_cpu_threads(tmp_path, sanitizer):
    run_emulation("fftconv", ["1000"], tmp_path, sanitizer)


# ---------------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------------
def test_layer(device):
    torch.manual_seed(0)
    layer = mmm.nn.FFTConv(6, 128).to(device)
    assert layer.kernel.shape == (6, 128) and layer.bias.shape == (6,)
    assert torch.allclose(layer.kernel.norm(dim=1), torch.ones(6, device=device))
    # Decaying: the fast channel's tail is tiny, the slow one's is not.
    tail = layer.kernel[:, 64:].abs().max(dim=1).values
    assert tail[0] < 1e-6 and tail[-1] > 1e-3
    u = torch.randn(3, 6, 100, device=device, requires_grad=True)
    gate = torch.randn(3, 6, 100, device=device)
    y = layer(u, gate, gate)
    want = fftconv_reference(u.double(), layer.kernel[:, :100].double(), layer.bias.double(), gate.double(),
                             gate.double())
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert layer.kernel.grad.shape == (6, 128) and torch.all(layer.kernel.grad[:, 100:] == 0)
    assert layer.bias.grad.shape == (6,)
    with pytest.raises(RuntimeError, match="exceeds the kernel length"):
        layer(torch.randn(1, 6, 129, device=device))
    with pytest.raises(RuntimeError, match="expected u of shape"):
        layer(torch.randn(1, 5, 10, device=device))


def test_layer_lowp_activations(device):
    layer = mmm.nn.FFTConv(4, 64).to(device)  # fp32 parameters
    u = torch.randn(2, 4, 64, device=device, dtype=BF16)
    y = layer(u)
    assert y.dtype == BF16
    want = fftconv_reference(u.double(), layer.kernel.double(), layer.bias.double())
    assert (y.double() - want).abs().max() < 3e-2
