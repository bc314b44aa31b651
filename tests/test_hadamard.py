"""Tests for mmm.hadamard_transform and torch.ops.mmm.hadamard_transform.

Reference: the Sylvester-ordered Walsh-Hadamard transform in float64 (a dense matrix for short
rows, an O(m log m) reshape-based FWHT for long ones) applied to the zero-padded row and
truncated back. Accuracy rule (FlashAttention's, as in test_fused_add_norm.py): the kernel's
error against the float64 reference is at most 2x the error of PyTorch doing the same product
(x @ H) in x's dtype, plus a small atol.
"""
from __future__ import annotations

import math

import pytest
import torch

import mmm
from conftest import emulation_sanitizers, run_emulation

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
NAMES = {F32: "fp32", F16: "fp16", BF16: "bf16", F64: "fp64"}


def next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def sylvester(m: int, dtype=F64, device="cpu") -> torch.Tensor:
    h = torch.ones(1, 1, dtype=dtype, device=device)
    while h.shape[0] < m:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def fwht_reference(x: torch.Tensor, scale: float = 1.0, compute=F64) -> torch.Tensor:
    """FWHT of the zero-padded last dim, truncated back: O(m log m), any length, in `compute`."""
    n = x.shape[-1]
    m = next_pow2(n)
    v = torch.nn.functional.pad(x.to(compute), (0, m - n)).reshape(-1, m)
    h = 1
    while h < m:
        v = v.reshape(-1, m // (2 * h), 2, h)
        a, b = v[:, :, 0], v[:, :, 1]
        v = torch.stack([a + b, a - b], dim=2).reshape(-1, m)
        h *= 2
    return (v[:, :n] * torch.tensor(scale, dtype=compute)).reshape(x.shape)


def lowp_reference(x: torch.Tensor, scale: float) -> torch.Tensor:
    """PyTorch doing the same product in x's dtype (only for rows short enough for a dense H)."""
    n = x.shape[-1]
    h = sylvester(next_pow2(n), x.dtype, x.device)[:n, :n]
    return (x @ h) * scale


def check(x: torch.Tensor, scale: float = 1.0, atol: float | None = None):
    x = x.detach().requires_grad_()
    y = mmm.hadamard_transform(x, scale)
    assert y.shape == x.shape and y.dtype == x.dtype
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    ref, ref_dx = fwht_reference(x, scale), fwht_reference(dy, scale)
    n = x.shape[-1]
    # The error PyTorch itself makes in x's dtype; for long rows (no dense H) use the
    # dtype's rounding of the exact result, which is what a dense product could at best do.
    if n <= 2048:
        lowp, lowp_dx = lowp_reference(x.detach(), scale), lowp_reference(dy, scale)
    else:
        lowp, lowp_dx = ref.to(x.dtype), ref_dx.to(x.dtype)
    if atol is None:
        unit = {F32: 1e-5, F64: 1e-12, F16: 1e-3, BF16: 1e-2}[x.dtype]
        atol = unit * abs(scale) * math.sqrt(next_pow2(n))  # |y| grows like sqrt(m)
    for got, want, lp, name in ((y, ref, lowp, "y"), (dx, ref_dx, lowp_dx, "dx")):
        err = (got.double() - want).abs().max().item() if got.numel() else 0.0
        err_lp = (lp.double() - want).abs().max().item() if got.numel() else 0.0
        assert err <= 2 * err_lp + atol, f"{name}: error {err:.3e} > 2 * {err_lp:.3e} + {atol:.1e}"


@pytest.mark.parametrize("dtype", [F32, F16, BF16, F64], ids=NAMES.get)
@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 32, 100, 256, 257, 1000, 1024, 2048, 4096])
def test_matches_reference(device, dtype, n):
    if device == "cuda" and dtype == F64:
        pytest.skip("float64 is CPU-only")
    torch.manual_seed(n)
    check(torch.randn(3, 5, n, dtype=dtype, device=device), scale=1.0 / math.sqrt(next_pow2(n)))


@pytest.mark.parametrize("rows,n", [(3, 16384), (2, 32768), (2, 65536)])
def test_long_rows_cpu(rows, n):
    torch.manual_seed(0)
    check(torch.randn(rows, n), scale=0.5)


@pytest.mark.parametrize("dtype", [F32, F16, BF16, F64], ids=NAMES.get)
def test_cpu_adds_in_textbook_order(dtype):
    """Bitwise the textbook FWHT (strides 1, 2, 4, ... in fp32, fp64 for fp64, then the scale
    and one rounding) whatever the vector width does with the strides below it: every length up
    to past two AVX-512 vectors, and longer ones with an odd and an even number of strides past
    a vector. tests/test_cpu_copies.py reruns it in the other instruction-set copies."""
    compute = F64 if dtype == F64 else F32
    torch.manual_seed(1)
    for n in [*range(1, 40), 63, 64, 65, 127, 1000, 4097, 16384]:
        x = torch.randn(3, n, dtype=dtype)
        ref = fwht_reference(x, 0.37, compute).to(dtype)
        assert torch.equal(mmm.hadamard_transform(x, 0.37), ref), f"n={n}"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [F32, BF16], ids=NAMES.get)
@pytest.mark.parametrize("rows,n", [(3, 8192), (5, 16384), (3, 16385), (4, 32768), (2, 65536), (3, 100000),
                                    (2, 524288), (70001, 8), (66000, 3), (1000, 256)])
def test_long_rows_and_many_rows_cuda(dtype, rows, n):
    torch.manual_seed(0)
    check(torch.randn(rows, n, dtype=dtype, device="cuda"), scale=1.0 / math.sqrt(next_pow2(n)))


def test_known_matrix_and_involution(device):
    # Sylvester order, entry by entry, and H(H x) = m x for powers of two.
    m = 16
    y = mmm.hadamard_transform(torch.eye(m, device=device))
    torch.testing.assert_close(y.cpu(), sylvester(m, F32), rtol=0, atol=0)
    x = torch.randn(4, 1024, device=device)
    s = 1.0 / math.sqrt(1024)
    torch.testing.assert_close(mmm.hadamard_transform(mmm.hadamard_transform(x, s), s), x, rtol=1e-5, atol=1e-5)


def test_padding_is_implicit(device):
    # A non-power-of-two row equals the padded transform truncated, and never reads past n.
    x = torch.randn(3, 20, device=device)
    wide = torch.randn(3, 40, device=device)
    wide[:, :20] = x
    view = wide[:, :20]  # strided view; the next 20 columns hold garbage the op must not read
    torch.testing.assert_close(mmm.hadamard_transform(view), mmm.hadamard_transform(x))
    padded = torch.nn.functional.pad(x, (0, 12))
    torch.testing.assert_close(mmm.hadamard_transform(x), mmm.hadamard_transform(padded)[:, :20])


def test_noncontiguous(device):
    base = torch.randn(6, 4, 64, device=device)
    check(base.transpose(0, 1))            # leading dims permuted: copied once
    check(base[:, 1, :])                   # a strided row view: read in place
    check(torch.randn(64, 10, device=device).t())  # last dim strided: copied once


def test_empty_rows(device):
    x = torch.randn(0, 8, device=device, requires_grad=True)
    y = mmm.hadamard_transform(x)
    assert y.shape == (0, 8)
    y.sum().backward()
    assert x.grad.shape == (0, 8)


def test_gradcheck():
    for n in (5, 8):
        x = torch.randn(3, n, dtype=F64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: mmm.hadamard_transform(t, 0.3), (x,))


def test_opcheck(device):
    for args in ((torch.randn(3, 8, device=device), 1.0), (torch.randn(2, 5, 7, device=device), 0.25)):
        torch.library.opcheck(torch.ops.mmm.hadamard_transform, args)


def test_compile(device):
    torch._dynamo.reset()
    f = torch.compile(lambda t: mmm.hadamard_transform(t, 0.5).sin().sum(), fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 24, device=device, requires_grad=True)
    f(x).backward()
    x2 = x.detach().clone().requires_grad_()
    mmm.hadamard_transform(x2, 0.5).sin().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


def test_bad_inputs():
    with pytest.raises(RuntimeError, match="0-dim"):
        mmm.hadamard_transform(torch.tensor(1.0))
    with pytest.raises(RuntimeError, match="last dimension of x must be >= 1"):
        mmm.hadamard_transform(torch.randn(3, 0))
    with pytest.raises(RuntimeError, match="x must be"):
        mmm.hadamard_transform(torch.ones(3, 4, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="at most 524288"):
        mmm.hadamard_transform(torch.empty(1, 524289))


@pytest.mark.cuda
def test_bad_inputs_cuda():
    with pytest.raises(RuntimeError, match="float64 only on the CPU"):
        mmm.hadamard_transform(torch.randn(3, 4, dtype=F64, device="cuda"))


@pytest.mark.cuda
def test_cpu_equals_cuda():
    x = torch.randn(5, 3000)
    torch.testing.assert_close(mmm.hadamard_transform(x.cuda()).cpu(), mmm.hadamard_transform(x), rtol=1e-5, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.parametrize("n", [7, 300, 4096, 32768, 65536])
def test_sanitizer_subset(n):
    check(torch.randn(2, n, device="cuda"), scale=1.0 / math.sqrt(next_pow2(n)))


# ---------------------------------------------------------------------------------------------
# The CUDA launcher and kernels (one-CTA segments, rows on clusters of two CTAs and the two-pass
# workspace path, fp32 / fp16 / bf16) run on the host: tests/emulate/hadamard.cpp via tests/emulate/run.sh, one fiber per
# CUDA thread, bitwise against the CPU twin. Opt-in (see run_emulation), ~30 s build and run.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sanitizer", emulation_sanitizers())
def test_cuda_kernels_on_cpu_threads(tmp_path, sanitizer):
    out = run_emulation("hadamard", [], tmp_path, sanitizer)
    assert "all ok" in out, out[-4000:]
