"""Tests for mmm.fft / ifft / rfft / irfft (torch.ops.mmm.*) and mmm.nn.FNetMixing.

Reference: torch.fft in float64 / complex128, forward and autograd. Accuracy rule (FlashAttention's,
as in the other op tests): the kernel's max error against the float64 reference is at most 2x the
max error of torch.fft doing the same transform in complex64 / float32, plus a small atol relative
to the output's magnitude.

Size classes: n = 2; within a warp (<= 32); the warp kernel (<= 512); one CTA per row
(<= 8192 / 16384 on CUDA); beyond one CTA's shared memory (the four-step path: 32768 .. 131072,
CUDA only -- the CPU runs one algorithm for every length, so its cases stay short).
"""
from __future__ import annotations


import pytest
import torch

import mmm
from conftest import build_cuda_test, emulation_sanitizers, run_cuda_test, run_emulation

C64, C128, F32, F64 = torch.complex64, torch.complex128, torch.float32, torch.float64
NORMS = [None, "backward", "ortho", "forward"]
OPS = {
    "fft": (mmm.fft, torch.fft.fft, True),
    "ifft": (mmm.ifft, torch.fft.ifft, True),
    "rfft": (mmm.rfft, torch.fft.rfft, False),
    "irfft": (mmm.irfft, torch.fft.irfft, True),
}


def make_input(op: str, shape: tuple, device: str, dtype64: bool = False) -> torch.Tensor:
    """An input for `op` whose transform has signal length shape[-1] (irfft: its n/2 + 1 bins)."""
    *lead, n = shape
    if op == "irfft":
        # Bins of a real signal, plus junk in the imaginary parts of bins 0 and n/2 that irfft ignores.
        x = torch.fft.rfft(torch.randn(*lead, n, dtype=F64))
        x = x + 1j * torch.randn(x.shape, dtype=F64) * 0.1
    elif OPS[op][2]:
        x = torch.randn(*lead, n, dtype=C128)
    else:
        x = torch.randn(*lead, n, dtype=F64)
    if not dtype64:
        x = x.to(C64 if x.is_complex() else F32)
    return x.to(device)


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.to(b.dtype) - b).abs().max().item() if a.numel() else 0.0


def check(op: str, x: torch.Tensor, norm=None, n=None, grad: bool = True):
    """mmm's op against torch.fft: forward and (optionally) gradient, by the tolerance rule."""
    ours, theirs, _ = OPS[op]
    kw = {"norm": norm} if n is None else {"norm": norm, "n": n}
    x = x.detach().requires_grad_(grad)
    y = ours(x, **kw)
    x64 = x.detach().cpu().to(C128 if x.is_complex() else F64).requires_grad_(grad)
    ref = theirs(x64, **kw)
    low = theirs(x.detach().cpu(), **kw)  # torch in x's precision: the error budget
    assert y.shape == ref.shape and y.dtype == low.dtype and y.device == x.device
    scale = ref.abs().max().item() if ref.numel() else 1.0
    atol = 1e-6 * scale
    err, err_low = max_err(y.cpu(), ref), max_err(low, ref)
    assert err <= 2 * err_low + atol, f"{op} y: error {err:.3e} > 2 * {err_low:.3e} + {atol:.1e}"
    if not grad:
        return
    dy = torch.randn(ref.shape, dtype=ref.dtype)
    (dx,) = torch.autograd.grad(y, x, dy.to(y.device, y.dtype))
    (ref_dx,) = torch.autograd.grad(ref, x64, dy)
    x_low = x.detach().cpu().requires_grad_()
    (low_dx,) = torch.autograd.grad(theirs(x_low, **kw), x_low, dy.to(y.dtype))
    scale = ref_dx.abs().max().item() if ref_dx.numel() else 1.0
    err, err_low = max_err(dx.cpu(), ref_dx), max_err(low_dx, ref_dx)
    assert dx.shape == x.shape and dx.dtype == x.dtype
    assert err <= 2 * err_low + 1e-6 * scale, f"{op} dx: error {err:.3e} > 2 * {err_low:.3e} + {1e-6 * scale:.1e}"


# ------------------------------------------------------------------------------------------- #
# Forward and gradients against torch.fft


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("n", [1, 2, 4, 32, 64, 512, 1024, 4096])
def test_matches_torch(device, op, n):
    if n == 1 and op in ("rfft", "irfft"):
        pytest.skip("real transforms need n >= 2")
    torch.manual_seed(n)
    check(op, make_input(op, (5, n), device), norm="ortho")


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("norm", NORMS)
def test_norm_modes(device, op, norm):
    torch.manual_seed(0)
    for n in (2, 256, 2048):
        check(op, make_input(op, (3, n), device), norm=norm)


@pytest.mark.cuda
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("n", [8192, 16384, 32768, 65536, 131072])
def test_long_rows_cuda(op, n):
    # One CTA per row up to the shared-memory limit (fft / ifft / irfft rows that would fill an
    # SM's shared memory alone, 16384 on an H100 or A100, split over two CTAs), then the
    # four-step path (a = 2 .. 16).
    torch.manual_seed(1)
    check(op, make_input(op, (3, n), "cuda"), norm="backward")


@pytest.mark.cuda
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("n", [2, 8, 128, 512, 1024])
def test_many_rows_cuda(op, n):
    # Batches that are not multiples of any tile (512-point warp tiles, 4 warps per block).
    torch.manual_seed(2)
    check(op, make_input(op, (70001 if n <= 8 else 1031, n), "cuda"), grad=n <= 128)


def test_every_power_of_two_cpu():
    torch.manual_seed(3)
    for log2n in range(0, 15):
        n = 1 << log2n
        check("fft", make_input("fft", (2, n), "cpu"), grad=False)
        if n >= 2:
            check("rfft", make_input("rfft", (2, n), "cpu"), grad=False)
            check("irfft", make_input("irfft", (2, n), "cpu"), grad=False)


@pytest.mark.cuda
def test_every_power_of_two_cuda():
    torch.manual_seed(3)
    for log2n in range(0, 18):
        n = 1 << log2n
        for op in ("fft", "ifft", "rfft", "irfft"):
            if n >= 2 or op in ("fft", "ifft"):
                check(op, make_input(op, (3, n), "cuda"), grad=False)


@pytest.mark.parametrize("shape", [(16,), (7, 16), (2, 3, 5, 64), (1, 1, 1, 8)])
def test_leading_dims(device, shape):
    for op in OPS:
        check(op, make_input(op, shape, device))


def test_empty_batch(device):
    # torch.fft's MKL backend rejects empty batches, so only shapes and gradients here.
    for shape in ((0, 8), (3, 0, 8)):
        for op, want in (("fft", 8), ("ifft", 8), ("rfft", 5), ("irfft", 16)):
            last = 9 if op == "irfft" else 8
            x = torch.randn(*shape[:-1], last, device=device)
            x = (x if op == "rfft" else x.to(C64)).requires_grad_()
            y = OPS[op][0](x)
            assert y.shape == shape[:-1] + (want,)
            y.abs().sum().backward()
            assert x.grad.shape == x.shape


def test_noncontiguous(device):
    for op in OPS:
        base = make_input(op, (6, 4, 64), device)
        check(op, base.transpose(0, 1))  # leading dims permuted: copied once
        check(op, base[:, 1, :])         # strided rows: read in place
        check(op, base[..., ::2])        # strided last dim: copied once
        check(op, base[:1].expand(5, *base.shape[1:]))  # stride-0 rows
    # Lazily conjugated inputs (conj bit set): the dispatcher's fallback must resolve them.
    check("fft", make_input("fft", (3, 16), device).conj())
    check("irfft", make_input("irfft", (3, 16), device).conj())
    # A real row that does not start on a complex pair (odd offset): rfft must copy it.
    wide = torch.randn(3, 66, device=device)
    check("rfft", wide[:, 1:65])
    check("rfft", torch.randn(3 * 64 + 1, device=device)[1:].view(3, 64))


def test_irfft_n(device):
    # n trims or zero-pads the bins, as torch.fft.irfft does.
    x = make_input("irfft", (3, 64), device)  # 33 bins
    for n in (64, 32, 128, 2):
        check("irfft", x, n=n)
    assert mmm.irfft(x).shape == (3, 64)


def test_round_trips(device):
    x = torch.randn(4, 1024, device=device)
    torch.testing.assert_close(mmm.irfft(mmm.rfft(x)), x, rtol=1e-5, atol=1e-5)
    z = torch.randn(4, 512, dtype=C64, device=device)
    torch.testing.assert_close(mmm.ifft(mmm.fft(z)), z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mmm.fft(mmm.ifft(z, "ortho"), "ortho"), z, rtol=1e-5, atol=1e-5)


def test_real_input_promoted(device):
    x = torch.randn(3, 32, device=device)
    y = mmm.fft(x)
    assert y.dtype == C64
    torch.testing.assert_close(y, torch.fft.fft(x), rtol=1e-5, atol=1e-5)
    check("fft", x)  # gradient flows back to the real input (torch keeps its real part)


def test_known_values(device):
    # The DFT of a unit impulse at j0 is exp(-2 pi i j0 k / n); of a constant, n at bin 0.
    n = 16
    x = torch.zeros(n, dtype=C64, device=device)
    x[3] = 1
    k = torch.arange(n, dtype=F64)
    want = torch.exp(-2j * torch.pi * 3 * k / n)
    torch.testing.assert_close(mmm.fft(x).cpu().to(C128), want, rtol=0, atol=1e-6)
    y = mmm.rfft(torch.ones(2, n, device=device))
    assert torch.allclose(y.cpu(), torch.tensor([n] + [0] * (n // 2), dtype=C64).expand(2, -1), atol=1e-5)


def test_double_backward():
    x = torch.randn(2, 16, dtype=C128, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: mmm.fft(t, "ortho"), (x,))
    r = torch.randn(2, 16, dtype=F64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: mmm.rfft(t), (r,))


def test_gradcheck():
    torch.manual_seed(0)
    for norm in ("backward", "ortho", "forward"):
        for n in (2, 8):
            xc = torch.randn(3, n, dtype=C128, requires_grad=True)
            assert torch.autograd.gradcheck(lambda t: mmm.fft(t, norm), (xc,))
            assert torch.autograd.gradcheck(lambda t: mmm.ifft(t, norm), (xc,))
            xr = torch.randn(3, n, dtype=F64, requires_grad=True)
            assert torch.autograd.gradcheck(lambda t: mmm.rfft(t, norm), (xr,))
            xb = torch.randn(3, n // 2 + 1, dtype=C128, requires_grad=True)
            assert torch.autograd.gradcheck(lambda t: mmm.irfft(t, norm=norm), (xb,))


def test_opcheck(device):
    cases = [
        (torch.ops.mmm.fft, (make_input("fft", (3, 8), device), None)),
        (torch.ops.mmm.fft, (make_input("fft", (2, 5, 16), device), "ortho")),
        (torch.ops.mmm.ifft, (make_input("ifft", (3, 8), device), "forward")),
        (torch.ops.mmm.rfft, (make_input("rfft", (3, 16), device), None)),
        (torch.ops.mmm.irfft, (make_input("irfft", (3, 16), device), "ortho")),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_compile(device):
    torch._dynamo.reset()

    def g(t):
        z = mmm.ifft(mmm.fft(t.to(C64)), "forward")[..., :17]
        return mmm.irfft(z, norm="ortho").sin().sum() + mmm.rfft(t).abs().sum()

    x = torch.randn(4, 32, device=device, requires_grad=True)
    compiled = torch.compile(g, fullgraph=True, backend="aot_eager")
    compiled(x).backward()
    x2 = x.detach().clone().requires_grad_()
    g(x2).backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-4)


def test_bad_inputs():
    z = torch.randn(3, 12, dtype=C64)
    with pytest.raises(RuntimeError, match=r"fft: the last dimension of x must be a power of two .*got 12"):
        mmm.fft(z)
    with pytest.raises(RuntimeError, match=r"ifft: the last dimension of x must be a power of two"):
        mmm.ifft(z)
    with pytest.raises(RuntimeError, match=r"rfft: the last dimension of x must be a power of two between 2"):
        mmm.rfft(torch.randn(3, 1))
    with pytest.raises(RuntimeError, match=r"rfft: the last dimension of x must be a power of two"):
        mmm.rfft(torch.randn(3, 24))
    with pytest.raises(RuntimeError, match=r"irfft: the output length n must be a power of two .*got 10"):
        mmm.irfft(torch.randn(3, 6, dtype=C64))
    with pytest.raises(RuntimeError, match=r"irfft: the output length 2 \* \(x.size\(-1\) - 1\)"):
        torch.ops.mmm.irfft(torch.randn(3, 6, dtype=C64), None)
    with pytest.raises(RuntimeError, match=r"at most|between 1 and 131072"):
        mmm.fft(torch.empty(1, 1 << 18, dtype=C64))
    with pytest.raises(RuntimeError, match=r'fft: norm must be None, "backward", "ortho" or "forward", got "xyz"'):
        mmm.fft(torch.randn(3, 8, dtype=C64), "xyz")
    with pytest.raises(RuntimeError, match=r"rfft: norm must be"):
        mmm.rfft(torch.randn(3, 8), "Ortho")
    with pytest.raises(RuntimeError, match=r"fft: x must be a CPU or CUDA complex64"):
        mmm.fft(torch.randn(3, 8, dtype=torch.float16))
    with pytest.raises(RuntimeError, match=r"rfft: x must be a CPU or CUDA float32"):
        mmm.rfft(torch.randn(3, 8, dtype=C64))
    with pytest.raises(RuntimeError, match=r"irfft: x must be a CPU or CUDA complex64"):
        mmm.irfft(torch.randn(3, 5))
    with pytest.raises(RuntimeError, match=r"0-dim"):
        torch.ops.mmm.fft(torch.tensor(1 + 1j, dtype=C64), None)
    # The fake kernels say the same under torch.compile / meta tensors.
    with pytest.raises(RuntimeError, match=r"fft: the last dimension of x must be a power of two"):
        torch.ops.mmm.fft(torch.empty(3, 12, dtype=C64, device="meta"), None)
    with pytest.raises(RuntimeError, match=r"fft: norm must be"):
        torch.ops.mmm.fft(torch.empty(3, 8, dtype=C64, device="meta"), "xyz")


@pytest.mark.cuda
def test_bad_inputs_cuda():
    with pytest.raises(RuntimeError, match="complex128 only on the CPU"):
        mmm.fft(torch.randn(3, 8, dtype=C128, device="cuda"))
    with pytest.raises(RuntimeError, match="float64 only on the CPU"):
        mmm.rfft(torch.randn(3, 8, dtype=F64, device="cuda"))


@pytest.mark.cuda
def test_cpu_equals_cuda():
    for op in OPS:
        for n in (64, 2048, 65536):
            x = make_input(op, (3, n), "cpu")
            torch.testing.assert_close(OPS[op][0](x.cuda()).cpu(), OPS[op][0](x), rtol=1e-4, atol=1e-4 * n**0.5)


@pytest.mark.cuda
@pytest.mark.parametrize("n", [2, 64, 512, 4096, 16384, 65536])
def test_sanitizer_subset(n):
    for op in OPS:
        check(op, make_input(op, (3, n), "cuda"), grad=False)


# ------------------------------------------------------------------------------------------- #
# The CUDA code itself, run on CPU threads (tests/emulate/fft.cpp via tests/emulate/run.sh; opt-in,
# see run_emulation): core/fft.cuh up to 2^13 (two CTA passes before the warp pass), the op kernels
# up to 2^12 with the CTA limit at 2^10 (so the four-step path runs with a = 2 and 4), and rows of
# 2^11 and 2^12 split over two CTAs (fft_kernel.cuh's kSplit2). With the memory
# counts, the swizzled layout must be free of systematic bank conflicts and the natural one must
# show its bit-reversal conflicts (the count's own check).


@pytest.mark.parametrize("sanitizer", emulation_sanitizers())
def test_cuda_code_on_cpu_threads(tmp_path, sanitizer):
    run_emulation("fft", ["13", "0", "12", "10"], tmp_path, sanitizer)


@pytest.mark.cuda
def test_fft_blocks_cuda(tmp_path):
    # tests/cuda/test_fft_blocks.cu: each building block of core/fft.cuh against core/fft_cpu.h.
    run_cuda_test(build_cuda_test("test_fft_blocks", tmp_path))


# ------------------------------------------------------------------------------------------- #
# FNetMixing


@pytest.mark.parametrize("shape", [(2, 16, 32), (3, 12, 8), (2, 16, 24), (1, 7, 5)])
def test_fnet_mixing(device, shape):
    torch.manual_seed(0)
    layer = mmm.nn.FNetMixing()
    assert not list(layer.parameters())
    x = torch.randn(*shape, device=device, requires_grad=True)
    y = layer(x)
    x64 = x.detach().cpu().double().requires_grad_()
    ref = torch.fft.fft2(x64).real  # FNet: Re(FFT over hidden, then over sequence)
    assert y.shape == x.shape and y.dtype == x.dtype
    torch.testing.assert_close(y.cpu().double(), ref, rtol=1e-5, atol=1e-4)
    dy = torch.randn(shape, dtype=F64)
    (dx,) = torch.autograd.grad(y, x, dy.to(device, F32))
    (ref_dx,) = torch.autograd.grad(ref, x64, dy)
    torch.testing.assert_close(dx.cpu().double(), ref_dx, rtol=1e-5, atol=1e-4)


def test_fnet_mixing_compile(device):
    torch._dynamo.reset()
    layer = mmm.nn.FNetMixing()
    x = torch.randn(2, 8, 16, device=device)
    y = torch.compile(layer, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(y, layer(x))
