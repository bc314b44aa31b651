"""Tests for mmm.butterfly_multiply (torch.ops.mmm.butterfly_multiply) and mmm.nn.ButterflyLinear.

Reference: torch_butterfly's ``butterfly_multiply_torch`` semantics written in plain PyTorch below
(one view/permute/sum per factor), in float64 / complex128. Accuracy rule (FlashAttention's): the
kernel's error against that reference is at most 2x the error of the same PyTorch loop run in
x's dtype (twiddles rounded the same way), plus a small atol relative to the result's size.

Size classes of the CUDA kernel: n = 2 (one factor), n <= 256 (a tile's group step fits one
warp), n <= 16384 (one pass on chip, forward and backward), beyond (multi-pass: forward past
32768 real / 16384 complex, backward past 16384 real / 8192 complex on a 228 KB-smem GPU).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import mmm
from conftest import emulation_sanitizers, run_emulation
from mmm.ops.butterfly import bit_reversal_permutation, fft_twiddle

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
C64, C128 = torch.complex64, torch.complex128
NAMES = {F32: "fp32", F16: "fp16", BF16: "bf16", F64: "fp64", C64: "c64", C128: "c128"}


def reference(x, twiddle, increasing_stride=True):
    """torch_butterfly's butterfly_multiply_torch, for x of shape (..., nstacks, n_in)."""
    nstacks, nblocks, log_n = twiddle.shape[:3]
    n = 1 << log_n
    lead = x.shape[:-2]
    x = x.reshape(-1, nstacks, x.shape[-1])
    x = F.pad(x, (0, n - x.shape[-1])) if x.shape[-1] < n else x[..., :n]
    batch = x.shape[0]
    out = x
    inc = increasing_stride
    for block in range(nblocks):
        for idx in range(log_n):
            stride = 1 << (idx if inc else log_n - 1 - idx)
            # (nstacks, n / (2 stride), i, j, stride)
            t = twiddle[:, block, idx].reshape(nstacks, n // (2 * stride), stride, 2, 2).permute(0, 1, 3, 4, 2)
            o = out.reshape(batch, nstacks, n // (2 * stride), 1, 2, stride)
            out = (t * o).sum(dim=4).reshape(batch, nstacks, n)
        inc = not inc
    return out.reshape(*lead, nstacks, n)


def random_twiddle(nstacks, nblocks, log_n, dtype=F32, device="cpu"):
    # std 1/sqrt(2) per entry keeps E|v|^2 through every factor.
    n = 1 << log_n
    real = F32 if dtype in (F32, C64, F16, BF16) else F64
    t = torch.randn(nstacks, nblocks, log_n, n // 2, 2, 2, dtype=real) / math.sqrt(2)
    if dtype.is_complex:
        t = torch.complex(t, torch.randn_like(t) / math.sqrt(2)) / math.sqrt(2)
    return t.to(device=device, dtype=dtype)


def high(t):
    return t.detach().to(C128 if t.dtype.is_complex else F64)


def err(a, b):
    return (a.to(b.dtype) - b).abs().max().item() if b.numel() else 0.0


def check(x, tw, inc=True, atol_unit=None):
    """Forward and both gradients against the float64 reference, FlashAttention's rule."""
    x = x.detach().requires_grad_()
    tw = tw.detach().requires_grad_()
    y = mmm.butterfly_multiply(x, tw, inc)
    log_n = tw.shape[2]
    assert y.shape == (*x.shape[:-1], 1 << log_n) and y.dtype == x.dtype
    dy = torch.randn_like(y)
    dx, dtw = torch.autograd.grad(y, (x, tw), dy)
    assert dx.shape == x.shape and dx.dtype == x.dtype and dtw.shape == tw.shape and dtw.dtype == tw.dtype

    hx, htw = high(x).requires_grad_(), high(tw).requires_grad_()
    ref = reference(hx, htw, inc)
    ref_dx, ref_dtw = torch.autograd.grad(ref, (hx, htw), high(dy))
    # PyTorch doing the same loop in the storage dtypes (the twiddle in x's dtype).
    lx, ltw = x.detach().clone().requires_grad_(), tw.detach().to(x.dtype).requires_grad_()
    low = reference(lx, ltw, inc)
    low_dx, low_dtw = torch.autograd.grad(low, (lx, ltw), dy)
    if atol_unit is None:
        atol_unit = {F32: 1e-5, C64: 1e-5, F64: 1e-12, C128: 1e-12, F16: 1e-3, BF16: 1e-2}[x.dtype]
    for name, got, want, lp in (("y", y, ref, low), ("dx", dx, ref_dx, low_dx), ("dtwiddle", dtw, ref_dtw, low_dtw)):
        scale = want.abs().max().item() if want.numel() else 0.0
        e, e_lp = err(got, want), err(lp, want)
        assert e <= 2 * e_lp + atol_unit * max(scale, 1.0), f"{name}: error {e:.3e} > 2 * {e_lp:.3e} + atol (|ref| {scale:.2e})"


@pytest.mark.parametrize("inc", [True, False], ids=["inc", "dec"])
@pytest.mark.parametrize("dtype", [F32, F16, BF16, F64], ids=NAMES.get)
@pytest.mark.parametrize("log_n", [1, 4, 8, 10])
def test_matches_reference(device, dtype, log_n, inc):
    if device == "cuda" and dtype == F64:
        pytest.skip("float64 is CPU-only")
    torch.manual_seed(log_n)
    x = torch.randn(15, 1, 1 << log_n, device=device, dtype=dtype)  # 15 rows: no tile multiple
    check(x, random_twiddle(1, 1, log_n, dtype, device), inc)


@pytest.mark.parametrize("dtype", [C64, C128], ids=NAMES.get)
@pytest.mark.parametrize("log_n", [1, 3, 7])
def test_complex(device, dtype, log_n):
    if device == "cuda" and dtype == C128:
        pytest.skip("complex128 is CPU-only")
    torch.manual_seed(0)
    x = torch.randn(5, 2, 1 << log_n, dtype=dtype, device=device)
    for inc in (True, False):
        check(x, random_twiddle(2, 2, log_n, dtype, device), inc)


@pytest.mark.parametrize("n_in", [50, 64, 70, 1])
@pytest.mark.parametrize("inc", [True, False], ids=["inc", "dec"])
def test_stacks_blocks_pad_trim(device, n_in, inc):
    # nstacks = 3, nblocks = 3 (the stride order flips twice); x padded or trimmed to n = 64.
    torch.manual_seed(n_in)
    x = torch.randn(7, 3, n_in, device=device)
    check(x, random_twiddle(3, 3, 6, F32, device), inc)


@pytest.mark.parametrize("batch,nstacks,log_n,dtype", [(37, 2, 7, F32), (37, 2, 7, C64), (20, 1, 5, C128),
                                                       (9, 1, 13, F32), (9, 1, 14, F32)])
def test_row_lanes_cpu(batch, nstacks, log_n, dtype):
    # The CPU runs a vector of rows of one stack at a time (a ragged last vector; 37 rows: several
    # backward chunks), and one row at a time where the backward's buffers would pass 32 MB (2^14
    # fp32 points; 2^13 still on lanes).
    torch.manual_seed(log_n)
    x = torch.randn(batch, nstacks, 1 << log_n, dtype=dtype)
    check(x, random_twiddle(nstacks, 1, log_n, dtype, "cpu"), inc=log_n % 2 == 1)


def test_leading_dims(device):
    tw = random_twiddle(3, 2, 5, F32, device)
    check(torch.randn(2, 3, 3, 32, device=device), tw)
    check(torch.randn(3, 32, device=device), tw)  # no batch dims at all


@pytest.mark.parametrize("dtype", [F16, BF16], ids=NAMES.get)
def test_half_x_with_fp32_twiddle(device, dtype):
    torch.manual_seed(1)
    check(torch.randn(9, 2, 128, device=device, dtype=dtype), random_twiddle(2, 2, 7, F32, device), False)


def test_dense_matrix(device):
    # The product is the dense matrix obtained by pushing the identity through the reference.
    torch.manual_seed(2)
    tw = random_twiddle(1, 2, 5, F64 if device == "cpu" else F32, device)
    dense = reference(torch.eye(32, dtype=tw.dtype, device=device).reshape(32, 1, 32), tw, False).reshape(32, 32)
    x = torch.randn(6, 1, 32, dtype=tw.dtype, device=device)
    torch.testing.assert_close(mmm.butterfly_multiply(x, tw, False).reshape(6, 32), x.reshape(6, 32) @ dense)


@pytest.mark.parametrize("log_n", [3, 8, 12])
def test_dft(device, log_n):
    # Bit-reverse the input, then the FFT's radix-2 twiddles at increasing strides: the DFT.
    if device == "cpu" and log_n > 8:
        pytest.skip("large DFT is a CUDA case")
    n = 1 << log_n
    torch.manual_seed(log_n)
    x = torch.randn(4, 1, n, dtype=C64, device=device)
    y = mmm.butterfly_multiply(x[..., bit_reversal_permutation(n).to(device)], fft_twiddle(log_n, device=device))
    ref = torch.fft.fft(x.to(C128))
    assert err(y, ref) <= 2 * err(torch.fft.fft(x), ref) + 1e-5 * math.sqrt(n) * ref.abs().max().item()


def test_dft_gradient(device):
    # The DFT is linear with matrix W: dx = W^H dy (PyTorch's conjugate convention).
    n = 16
    x = torch.randn(3, 1, n, dtype=C64, device=device, requires_grad=True)
    perm = bit_reversal_permutation(n).to(device)
    y = mmm.butterfly_multiply(x[..., perm], fft_twiddle(4, device=device))
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    x2 = x.detach().clone().requires_grad_()
    (dx_ref,) = torch.autograd.grad(torch.fft.fft(x2), x2, dy)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-5, atol=1e-5)


def test_noncontiguous(device):
    tw = random_twiddle(2, 1, 5, F32, device)
    base = torch.randn(2, 4, 32, device=device)
    check(base.transpose(0, 1), tw)                       # leading dims permuted
    check(torch.randn(4, 2, 48, device=device)[..., :32], tw)  # strided rows read in place
    x = torch.randn(5, 1, 32, device=device).expand(5, 2, 32)  # stride-0 stack dim
    check(x, tw)
    # An expanded (stride-0) gradient, as from .sum().
    x = torch.randn(3, 2, 32, device=device, requires_grad=True)
    mmm.butterfly_multiply(x, tw).sum().backward()
    xr = x.detach().double().requires_grad_()
    reference(xr, tw.double()).sum().backward()
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-5, atol=1e-5)
    # A twiddle view at an odd offset (the CUDA kernels copy it for aligned vector loads).
    big = torch.randn(1 + 2 * 5 * 16 * 4, device=device)
    check(torch.randn(3, 2, 32, device=device), big[1:].reshape(2, 1, 5, 16, 2, 2))


def test_empty_batch(device):
    tw = random_twiddle(2, 1, 3, F32, device).requires_grad_()
    x = torch.randn(0, 2, 8, device=device, requires_grad=True)
    y = mmm.butterfly_multiply(x, tw)
    assert y.shape == (0, 2, 8)
    y.sum().backward()
    assert x.grad.shape == (0, 2, 8) and torch.equal(tw.grad, torch.zeros_like(tw))


def test_deterministic_twiddle_gradient(device):
    tw = random_twiddle(2, 2, 6, F32, device).requires_grad_()
    x = torch.randn(301, 2, 64, device=device)
    dy = torch.randn(301, 2, 64, device=device)
    grads = [torch.autograd.grad(mmm.butterfly_multiply(x, tw), tw, dy)[0] for _ in range(2)]
    if device == "cpu":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            grads.append(torch.autograd.grad(mmm.butterfly_multiply(x, tw), tw, dy)[0])
        finally:
            torch.set_num_threads(threads)
    for g in grads[1:]:
        assert torch.equal(g, grads[0])


def test_gradcheck():
    for dtype in (F64, C128):
        for inc in (True, False):
            x = torch.randn(2, 2, 3, dtype=dtype, requires_grad=True)  # padded to n = 4
            tw = random_twiddle(2, 2, 2, dtype).requires_grad_()
            assert torch.autograd.gradcheck(lambda a, b: mmm.butterfly_multiply(a, b, inc), (x, tw))


def test_opcheck(device):
    torch.manual_seed(0)
    cases = [
        (torch.randn(3, 1, 8, device=device), random_twiddle(1, 1, 3, F32, device), True),
        (torch.randn(2, 5, 2, 12, device=device), random_twiddle(2, 2, 4, F32, device), False),
        (torch.randn(4, 1, 16, dtype=C64, device=device), random_twiddle(1, 1, 4, C64, device), True),
    ]
    for x, tw, inc in cases:
        torch.library.opcheck(torch.ops.mmm.butterfly_multiply, (x.requires_grad_(), tw.requires_grad_(), inc))


def test_compile(device):
    torch._dynamo.reset()
    tw = random_twiddle(2, 2, 5, F32, device).requires_grad_()
    f = torch.compile(lambda a, t: mmm.butterfly_multiply(a, t, False).sin().sum(), fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 2, 30, device=device, requires_grad=True)
    f(x, tw).backward()
    x2, tw2 = x.detach().clone().requires_grad_(), tw.detach().clone().requires_grad_()
    mmm.butterfly_multiply(x2, tw2, False).sin().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(tw.grad, tw2.grad)


def test_bad_inputs():
    x = torch.randn(3, 2, 16)
    tw = random_twiddle(2, 1, 4)
    with pytest.raises(RuntimeError, match=r"x must have at least 2 dimensions"):
        mmm.butterfly_multiply(torch.randn(16), tw)
    with pytest.raises(RuntimeError, match=r"twiddle must be 6-D"):
        mmm.butterfly_multiply(x, tw[0])
    with pytest.raises(RuntimeError, match=r"twiddle.shape\[3\] = 8 \(the butterfly size n must be a power of two\)"):
        mmm.butterfly_multiply(x, torch.randn(2, 1, 4, 6, 2, 2))
    with pytest.raises(RuntimeError, match=r"twiddle.shape\[3\] = 8"):
        mmm.butterfly_multiply(x, torch.randn(2, 1, 4, 8, 2, 3))
    with pytest.raises(RuntimeError, match=r"twiddle.shape\[2\] \(log_n\)"):
        mmm.butterfly_multiply(x, torch.randn(2, 1, 0, 0, 2, 2))
    with pytest.raises(RuntimeError, match=r"x.shape\[-2\] must equal twiddle.shape\[0\] \(nstacks\) = 3"):
        mmm.butterfly_multiply(x, random_twiddle(3, 1, 4))
    with pytest.raises(RuntimeError, match=r"x's last dimension must be >= 1"):
        mmm.butterfly_multiply(torch.randn(3, 2, 0), tw)
    with pytest.raises(RuntimeError, match=r"twiddle must have x's dtype \(Float\), got Double"):
        mmm.butterfly_multiply(x, tw.double())
    with pytest.raises(RuntimeError, match=r"twiddle must have x's dtype \(Half\) or float32, got BFloat16"):
        mmm.butterfly_multiply(x.half(), tw.bfloat16())
    with pytest.raises(RuntimeError, match=r"twiddle must have x's dtype \(ComplexFloat\), got Float"):
        mmm.butterfly_multiply(x.to(C64), tw)
    with pytest.raises(RuntimeError, match=r"x must be"):
        mmm.butterfly_multiply(x.int(), tw.int())
    with pytest.raises(RuntimeError, match=r"grad must have the output's shape"):
        torch.ops.mmm.butterfly_multiply_backward(torch.randn(3, 2, 8), x, tw, True)


def test_bad_inputs_fake():
    # The fake kernel (what torch.compile traces) raises the glue's messages.
    with torch._subclasses.fake_tensor.FakeTensorMode():
        with pytest.raises(RuntimeError, match=r"x.shape\[-2\] must equal twiddle.shape\[0\]"):
            torch.ops.mmm.butterfly_multiply(torch.randn(3, 2, 16), torch.randn(3, 1, 4, 8, 2, 2))
        y = torch.ops.mmm.butterfly_multiply(torch.randn(3, 2, 10), torch.randn(2, 1, 4, 8, 2, 2))
        assert y.shape == (3, 2, 16)


# ---- CUDA-only size classes and checks ---------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [F32, BF16, C64], ids=NAMES.get)
@pytest.mark.parametrize("log_n,batch", [(13, 5), (14, 3), (15, 3), (16, 2), (17, 2)])
def test_large_cuda(dtype, log_n, batch):
    # 2^14 real / 2^13 complex: one pass; above: the multi-pass forward and/or backward.
    torch.manual_seed(log_n)
    for inc in (True, False):
        check(torch.randn(batch, 1, 1 << log_n, dtype=dtype, device="cuda"), random_twiddle(1, 1, log_n, dtype, "cuda"), inc)


@pytest.mark.cuda
def test_large_stacks_blocks_cuda():
    torch.manual_seed(0)
    check(torch.randn(3, 2, 70000, device="cuda"), random_twiddle(2, 2, 16, F32, "cuda"), False)  # trimmed, multi-pass
    check(torch.randn(3, 2, 40000, dtype=C64, device="cuda"), random_twiddle(2, 2, 16, C64, "cuda"), True)  # padded


@pytest.mark.cuda
@pytest.mark.parametrize("batch,log_n", [(1000, 8), (70001, 3), (33, 10), (4097, 1)])
def test_many_rows_cuda(batch, log_n):
    torch.manual_seed(batch)
    check(torch.randn(batch, 1, 1 << log_n, device="cuda"), random_twiddle(1, 1, log_n, F32, "cuda"))


@pytest.mark.cuda
def test_cpu_equals_cuda():
    torch.manual_seed(0)
    x, tw = torch.randn(37, 3, 1000), random_twiddle(3, 2, 10)
    for inc in (True, False):
        torch.testing.assert_close(mmm.butterfly_multiply(x.cuda(), tw.cuda(), inc).cpu(),
                                   mmm.butterfly_multiply(x, tw, inc), rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
def test_bad_inputs_cuda():
    x, tw = torch.randn(3, 2, 16, device="cuda"), random_twiddle(2, 1, 4, F32, "cuda")
    with pytest.raises(RuntimeError, match=r"twiddle is on cpu but x is on cuda:0"):
        mmm.butterfly_multiply(x, tw.cpu())
    with pytest.raises(RuntimeError, match=r"float64 and complex128 only on the CPU"):
        mmm.butterfly_multiply(x.double(), tw.double())


@pytest.mark.cuda
@pytest.mark.parametrize("log_n", [1, 5, 12, 16])
def test_sanitizer_subset(log_n):
    # Small shapes for compute-sanitizer memcheck / racecheck (bench/gpu_check.sh).
    check(torch.randn(3, 2, (1 << log_n) - 1, device="cuda"), random_twiddle(2, 2, log_n, F32, "cuda"), log_n % 2 == 0)


# The CUDA launcher and kernels run on the host (tests/emulate/butterfly.cpp via tests/emulate/run.sh:
# one fiber per CUDA thread, with small shared-memory limits that force the multi-pass paths)
# against the CPU twin, under ASan/UBSan, under TSan (races between threads and between CTAs) and
# with the memory counts (both on the "quick" subset): opt-in (see run_emulation), ~1-2 min each.
@pytest.mark.parametrize("sanitizer", emulation_sanitizers())
def test_cuda_kernels_on_cpu_threads(tmp_path, sanitizer):
    run_emulation("butterfly", [] if sanitizer == "address" else ["quick"], tmp_path, sanitizer)


# ---- ButterflyLinear ---------------------------------------------------------------------------

@pytest.mark.parametrize("in_f,out_f", [(256, 256), (100, 300), (300, 100)])
def test_layer_variance_matches_linear(in_f, out_f):
    torch.manual_seed(0)
    x = torch.randn(4096, in_f)
    lin = torch.nn.Linear(in_f, out_f, bias=False)
    bf = mmm.nn.ButterflyLinear(in_f, out_f, bias=False)
    v_lin, v_bf = lin(x).var().item(), bf(x).var().item()
    assert 0.75 < v_bf / v_lin < 1.33, (v_bf, v_lin)
    assert abs(v_bf - 1 / 3) < 0.1


def test_layer_shapes_and_reference(device):
    torch.manual_seed(0)
    for in_f, out_f, bias in ((20, 50, True), (64, 64, False), (33, 7, True)):
        layer = mmm.nn.ButterflyLinear(in_f, out_f, bias=bias, nblocks=2, device=device)
        x = torch.randn(2, 5, in_f, device=device)
        y = layer(x)
        assert y.shape == (2, 5, out_f)
        xs = x.reshape(-1, 1, in_f).expand(-1, layer.nstacks, in_f).double()
        ref = reference(xs, layer.twiddle.detach().double()).reshape(10, -1)[:, :out_f]
        if bias:
            ref = ref + layer.bias.detach().double()
        torch.testing.assert_close(y.reshape(10, out_f).double(), ref, rtol=1e-4, atol=1e-5)


def test_layer_trains():
    torch.manual_seed(0)
    target = torch.nn.Linear(32, 24)
    layer = mmm.nn.ButterflyLinear(32, 24)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    x = torch.randn(256, 32)
    with torch.no_grad():
        y = target(x)
    losses = []
    for _ in range(30):
        loss = F.mse_loss(layer(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses
