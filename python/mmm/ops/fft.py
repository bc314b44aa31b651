"""fft / ifft / rfft / irfft: power-of-two FFTs along the last dimension, as ``torch.fft``.

Registers the fake kernels and autograd of ``torch.ops.mmm.{fft,ifft,rfft,irfft}`` and defines the
public functions. Kernels: ``csrc/fft/`` on ``csrc/core/fft.cuh`` / ``csrc/core/fft_cpu.h``; glue:
``csrc/torch/fft.cpp``.

The ops take exactly what they transform: ``fft``/``ifft`` a complex tensor, ``rfft`` a real one,
``irfft`` the ``m = n/2 + 1`` bins of an output of length ``n = 2 (m - 1)``. The public functions
add torch.fft's conveniences (a real input to ``fft`` is promoted to complex, ``irfft``'s ``n``
trims or zero-pads the bins).
"""
from __future__ import annotations

import torch
from torch import Tensor

from mmm.ops._autograd import call_op

MAX_LENGTH = 1 << 17
_NORMS = (None, "backward", "ortho", "forward")
# The backward of a transform with norm c is the adjoint transform with the same factor c:
# "backward" (1 on the forward side) pairs with the inverse's "forward" (1), and so on.
_DUAL = {None: "forward", "backward": "forward", "forward": "backward", "ortho": "ortho"}


def _is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def _check_norm(norm, op: str) -> None:
    if norm not in _NORMS:
        raise RuntimeError(f'{op}: norm must be None, "backward", "ortho" or "forward", got "{norm}"')


def _check_length(length: int, min_len: int, what: str, op: str, x: Tensor) -> None:
    if not (_is_pow2(length) and min_len <= length <= MAX_LENGTH):
        raise RuntimeError(
            f"{op}: {what} must be a power of two between {min_len} and {MAX_LENGTH} (mmm's FFTs support powers "
            f"of two only; use torch.fft for other lengths), got {length} (x of shape {tuple(x.shape)})")


def _check_x(x: Tensor, complex_in: bool, op: str) -> None:
    ok = (torch.complex64, torch.complex128) if complex_in else (torch.float32, torch.float64)
    if x.dtype not in ok:
        names = "complex64 (complex128 on the CPU)" if complex_in else "float32 (float64 on the CPU)"
        raise RuntimeError(f"{op}: x must be {names}, got {x.dtype}")
    if x.dim() < 1:
        raise RuntimeError(f"{op}: x must have at least one dimension, got a 0-dim tensor")


def _register_c2c_fake(op: str) -> None:
    @torch.library.register_fake(f"mmm::{op}")
    def _fake(x, norm=None):
        _check_x(x, True, op)
        _check_length(x.shape[-1], 1, "the last dimension of x", op, x)
        _check_norm(norm, op)
        return x.new_empty(x.shape)


_register_c2c_fake("fft")
_register_c2c_fake("ifft")


@torch.library.register_fake("mmm::rfft")
def _rfft_fake(x, norm=None):
    _check_x(x, False, "rfft")
    _check_length(x.shape[-1], 2, "the last dimension of x", "rfft", x)
    _check_norm(norm, "rfft")
    dtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2 + 1), dtype=dtype)


@torch.library.register_fake("mmm::irfft")
def _irfft_fake(x, norm=None):
    _check_x(x, True, "irfft")
    _check_length(2 * (x.shape[-1] - 1), 2, "the output length 2 * (x.size(-1) - 1)", "irfft", x)
    _check_norm(norm, "irfft")
    dtype = torch.float64 if x.dtype == torch.complex128 else torch.float32
    return x.new_empty((*x.shape[:-1], 2 * (x.shape[-1] - 1)), dtype=dtype)


def _setup(ctx, inputs, output):
    ctx.norm = inputs[1] if len(inputs) > 1 else None


def _fft_backward(ctx, grad):
    # y = c F x  ->  dx = c F^H dy: the inverse transform with the dual norm (same factor c).
    return call_op(torch.ops.mmm.ifft, grad.contiguous(), _DUAL[ctx.norm]), None


def _ifft_backward(ctx, grad):
    return call_op(torch.ops.mmm.fft, grad.contiguous(), _DUAL[ctx.norm]), None


def _rfft_backward(ctx, grad):
    # torch's convention: dx = Re(c F^H [dy, 0, ...]) (the bins rfft drops get no gradient).
    # irfft's C2R counts bins 1..n/2-1 twice (Hermitian), so halve them to undo that.
    g = grad.clone()
    g[..., 1:-1] *= 0.5
    return call_op(torch.ops.mmm.irfft, g, _DUAL[ctx.norm]), None


def _irfft_backward(ctx, grad):
    # dX = c * rfft(dy) with bins 1..n/2-1 doubled (each stands for itself and its conjugate).
    g = call_op(torch.ops.mmm.rfft, grad.contiguous(), _DUAL[ctx.norm])
    return torch.cat([g[..., :1], 2 * g[..., 1:-1], g[..., -1:]], dim=-1), None


torch.library.register_autograd("mmm::fft", _fft_backward, setup_context=_setup)
torch.library.register_autograd("mmm::ifft", _ifft_backward, setup_context=_setup)
torch.library.register_autograd("mmm::rfft", _rfft_backward, setup_context=_setup)
torch.library.register_autograd("mmm::irfft", _irfft_backward, setup_context=_setup)


def _as_complex(x: Tensor) -> Tensor:
    if x.dtype == torch.float32:
        return x.to(torch.complex64)
    if x.dtype == torch.float64:
        return x.to(torch.complex128)
    return x


def fft(x: Tensor, norm: str | None = None) -> Tensor:
    """``torch.fft.fft(x, norm=norm)`` along the last dimension, for power-of-two lengths.

    x: ``(..., n)``, ``n`` a power of two in ``[1, 131072]``, complex64 (complex128 on the CPU); a
    float32/float64 input is promoted to complex first, as torch does. norm: ``None`` /
    ``"backward"`` (no scaling), ``"ortho"`` (``1/sqrt(n)``) or ``"forward"`` (``1/n``). Returns
    ``(..., n)`` of x's complex dtype. Differentiable (gradients as torch.fft's autograd).
    """
    return call_op(torch.ops.mmm.fft, _as_complex(x), norm)


def ifft(x: Tensor, norm: str | None = None) -> Tensor:
    """``torch.fft.ifft(x, norm=norm)``: the inverse of :func:`fft` (``norm="backward"`` scales
    by ``1/n``); same shapes and dtypes."""
    return call_op(torch.ops.mmm.ifft, _as_complex(x), norm)


def rfft(x: Tensor, norm: str | None = None) -> Tensor:
    """``torch.fft.rfft(x, norm=norm)``: the ``n/2 + 1`` non-negative-frequency bins of a real
    signal. x: ``(..., n)`` float32 (float64 on the CPU), ``n`` a power of two in ``[2, 131072]``;
    returns ``(..., n/2 + 1)`` complex64 (complex128)."""
    return call_op(torch.ops.mmm.rfft, x, norm)


def irfft(x: Tensor, n: int | None = None, norm: str | None = None) -> Tensor:
    """``torch.fft.irfft(x, n=n, norm=norm)``: the real signal of length ``n`` whose rfft is x.

    x: ``(..., m)`` complex64 (complex128 on the CPU). ``n`` defaults to ``2 (m - 1)`` and must be a
    power of two in ``[2, 131072]``; x is trimmed or zero-padded to ``n/2 + 1`` bins first, as torch
    does. The imaginary parts of the zero and Nyquist bins are ignored (a real signal has none).
    Returns ``(..., n)`` float32 (float64).
    """
    m = x.shape[-1]
    if n is None:
        n = 2 * (m - 1)
    _check_length(n, 2, "the output length n", "irfft", x)
    bins = n // 2 + 1
    if bins < m:
        x = x[..., :bins]
    elif bins > m:
        x = torch.nn.functional.pad(x, (0, bins - m))
    return call_op(torch.ops.mmm.irfft, x, norm)


def selftest(device: str) -> float:
    """fft, ifft, rfft and irfft against torch.fft in float64, forward and backward, one short and
    one long length; returns the worst relative error."""
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for n in (64, 4096):
        xr = torch.randn(3, n, generator=g, dtype=torch.float64)
        xc = torch.complex(xr, torch.randn(3, n, generator=g, dtype=torch.float64))
        cases = (
            (fft, torch.fft.fft, xc, "ortho"),
            (ifft, torch.fft.ifft, xc, None),
            (rfft, torch.fft.rfft, xr, "forward"),
            (irfft, torch.fft.irfft, torch.fft.rfft(xr), None),
        )
        for ours, theirs, x, norm in cases:
            low = x.to(device, torch.complex64 if x.is_complex() else torch.float32).requires_grad_()
            y = ours(low, norm=norm)
            want = theirs(x, norm=norm)
            dy = torch.randn(want.shape, generator=g, dtype=want.dtype)
            (dx,) = torch.autograd.grad(y, low, dy.to(device, y.dtype))
            xd = x.clone().requires_grad_()
            (want_dx,) = torch.autograd.grad(theirs(xd, norm=norm), xd, dy)
            for got, ref in ((y, want), (dx, want_dx)):
                err = ((got.cpu().to(ref.dtype) - ref).abs().norm() / ref.abs().norm()).item()
                worst = max(worst, err)
                assert err < 1e-5, f"{ours.__name__} selftest on {device} (n={n}): relative error {err:.2e}"
    return worst
