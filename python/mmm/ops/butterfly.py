"""butterfly_multiply: torch_butterfly's learnable butterfly product.

Registers the fake kernels and autograd of ``torch.ops.mmm.butterfly_multiply`` and defines the
public function. Kernels: ``csrc/butterfly/``; glue: ``csrc/torch/butterfly.cpp``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mmm.ops._autograd import call_op, no_double_backward

_MAX_LOG_N = 20
_LOW = (torch.float32, torch.float16, torch.bfloat16)


def _check(x, twiddle, op):
    """The C++ glue's checks, for the fake kernels (torch.compile traces them), same messages."""
    if x.dim() < 2:
        raise RuntimeError(f"{op}: x must have at least 2 dimensions (..., nstacks, n), got shape {tuple(x.shape)}")
    if twiddle.dim() != 6:
        raise RuntimeError(f"{op}: twiddle must be 6-D (nstacks, nblocks, log_n, n/2, 2, 2), got shape "
                           f"{tuple(twiddle.shape)}")
    nstacks, nblocks, log_n = twiddle.shape[:3]
    if nstacks < 1 or nblocks < 1:
        raise RuntimeError(f"{op}: twiddle must have nstacks >= 1 and nblocks >= 1, got shape {tuple(twiddle.shape)}")
    if not 1 <= log_n <= _MAX_LOG_N:
        raise RuntimeError(f"{op}: twiddle.shape[2] (log_n) must be in [1, {_MAX_LOG_N}], got shape "
                           f"{tuple(twiddle.shape)}")
    n = 1 << log_n
    if tuple(twiddle.shape[3:]) != (n // 2, 2, 2):
        raise RuntimeError(f"{op}: twiddle of shape {tuple(twiddle.shape)} must be (nstacks, nblocks, log_n, n/2, 2, 2) "
                           f"with n = 2^log_n = {n}, i.e. twiddle.shape[3] = {n // 2} (the butterfly size n must be a "
                           "power of two)")
    if x.shape[-2] != nstacks:
        raise RuntimeError(f"{op}: x.shape[-2] must equal twiddle.shape[0] (nstacks) = {nstacks}, got x of shape "
                           f"{tuple(x.shape)}")
    if x.shape[-1] < 1:
        raise RuntimeError(f"{op}: x's last dimension must be >= 1, got x of shape {tuple(x.shape)}")
    ok = twiddle.dtype == x.dtype or (twiddle.dtype == torch.float32 and x.dtype in (torch.float16, torch.bfloat16))
    if not ok:
        extra = " or float32" if x.dtype in (torch.float16, torch.bfloat16) else ""
        raise RuntimeError(f"{op}: twiddle must have x's dtype ({x.dtype}){extra}, got {twiddle.dtype}")
    if twiddle.device != x.device:
        raise RuntimeError(f"{op}: twiddle is on {twiddle.device} but x is on {x.device}")
    return n


@torch.library.register_fake("mmm::butterfly_multiply")
def _butterfly_fake(x, twiddle, increasing_stride=True):
    n = _check(x, twiddle, "butterfly_multiply")
    return x.new_empty((*x.shape[:-1], n))


@torch.library.register_fake("mmm::butterfly_multiply_backward")
def _butterfly_backward_fake(grad, x, twiddle, increasing_stride):
    _check(x, twiddle, "butterfly_multiply_backward")
    return x.new_empty(x.shape), twiddle.new_empty(twiddle.shape)


def _setup(ctx, inputs, output):
    x, twiddle, increasing_stride = inputs
    ctx.save_for_backward(x, twiddle)
    ctx.increasing_stride = increasing_stride


def _backward(ctx, grad):
    x, twiddle = ctx.saved_tensors
    dx, dtw = call_op(torch.ops.mmm.butterfly_multiply_backward, grad, x, twiddle, ctx.increasing_stride)
    return dx, dtw, None


torch.library.register_autograd("mmm::butterfly_multiply", _backward, setup_context=_setup)
no_double_backward("mmm::butterfly_multiply_backward", "butterfly_multiply")


def butterfly_multiply(x: Tensor, twiddle: Tensor, increasing_stride: bool = True) -> Tensor:
    """The butterfly product of torch_butterfly (HazyResearch/butterfly), same semantics and
    twiddle layout as its ``butterfly_multiply_torch(twiddle, input, increasing_stride)`` (note the
    argument order here: x first).

    Shapes: ``x (..., nstacks, n_in)`` (any number of leading dims, including none);
    ``twiddle (nstacks, nblocks, log_n, n/2, 2, 2)`` with ``n = 2**log_n``, ``1 <= log_n <= 20``;
    returns ``(..., nstacks, n)``. Like torch_butterfly, x is zero padded to n when
    ``n_in < n`` and trimmed to its first n columns when ``n_in > n`` (the padding is implicit,
    never stored; the trimmed columns get a zero gradient).

    Each of the ``nblocks`` blocks applies log_n factors, at strides 1, 2, 4, ..., n/2 when that
    block runs increasing (else n/2, ..., 1); the order flips after every block. Factor ``idx`` of
    block ``b`` of stride S maps the pair ``lo = k*2S + q, hi = lo + S`` (``q < S``), pair index
    ``p = k*S + q``, through ``t = twiddle[s, b, idx, p]``: ``y[lo] = t[0,0] x[lo] + t[0,1] x[hi]``,
    ``y[hi] = t[1,0] x[lo] + t[1,1] x[hi]``.

    dtypes: x float32, float16, bfloat16 or complex64 (float64 and complex128 on the CPU, for
    gradcheck); twiddle has x's dtype, or float32 when x is float16/bfloat16. Arithmetic in
    float32 (float64); the twiddle gradient is summed over the batch in float32 (float64) in a
    fixed order (deterministic, no atomics) and returned in twiddle's dtype. Differentiable in x
    and twiddle (complex: PyTorch's conjugate convention). The backward recomputes the
    intermediate vectors instead of saving them.
    """
    return call_op(torch.ops.mmm.butterfly_multiply, x, twiddle, increasing_stride)


def fft_twiddle(log_n: int, dtype=torch.complex64, device=None) -> Tensor:
    """Twiddles (1, 1, log_n, n/2, 2, 2) with which ``butterfly_multiply(bit_reverse(x), tw)``
    (increasing stride) is the unnormalised DFT ``torch.fft.fft(x)`` (radix-2 decimation in time)."""
    n = 1 << log_n
    tw = torch.zeros(log_n, n // 2, 2, 2, dtype=torch.complex128)
    for idx in range(log_n):
        s = 1 << idx
        q = torch.arange(n // 2) % s
        w = torch.exp(-2j * torch.pi * q.double() / (2 * s))
        tw[idx, :, 0, 0] = 1
        tw[idx, :, 0, 1] = w
        tw[idx, :, 1, 0] = 1
        tw[idx, :, 1, 1] = -w
    return tw.reshape(1, 1, log_n, n // 2, 2, 2).to(device=device, dtype=dtype)


def bit_reversal_permutation(n: int) -> Tensor:
    """The indices ``perm`` with ``x[..., perm]`` in bit-reversed order (n a power of two)."""
    log_n = n.bit_length() - 1
    i = torch.arange(n)
    r = torch.zeros_like(i)
    for b in range(log_n):
        r |= ((i >> b) & 1) << (log_n - 1 - b)
    return r


def selftest(device: str) -> float:
    """The DFT through FFT twiddles and a bit reversal against torch.fft.fft, and a random
    butterfly's gradients against autograd through the plain loop; returns the worst relative error."""
    worst = 0.0
    n = 256
    x = torch.randn(5, 1, n, dtype=torch.complex64, device=device)
    y = butterfly_multiply(x[..., bit_reversal_permutation(n).to(device)], fft_twiddle(8, device=device))
    ref = torch.fft.fft(x)
    err = ((y - ref).norm() / ref.norm()).item()
    worst = max(worst, err)
    assert err < 1e-5, f"butterfly_multiply selftest on {device} (DFT): relative error {err:.2e}"
    g = torch.Generator().manual_seed(0)
    tw = (torch.randn(2, 2, 6, 32, 2, 2, generator=g) / 2**0.5).to(device).requires_grad_()
    x = torch.randn(3, 2, 64, generator=g).to(device).requires_grad_()
    y = butterfly_multiply(x, tw, False)
    dy = torch.randn(y.shape, generator=g).to(device)
    grads = torch.autograd.grad(y, (x, tw), dy)
    rx, rtw = x.detach().double().requires_grad_(), tw.detach().double().requires_grad_()
    ref = _loop_reference(rx, rtw, False)
    ref_grads = torch.autograd.grad(ref, (rx, rtw), dy.double())
    for got, want in zip((y, *grads), (ref, *ref_grads)):
        err = ((got.double() - want).norm() / want.norm()).item()
        worst = max(worst, err)
        assert err < 1e-5, f"butterfly_multiply selftest on {device}: relative error {err:.2e}"
    return worst


def _loop_reference(x, twiddle, increasing_stride):
    """The plain per-factor loop (torch_butterfly's semantics), for the selftest and benchmarks."""
    nstacks, nblocks, log_n = twiddle.shape[:3]
    n = 1 << log_n
    lead = x.shape[:-2]
    x = x.reshape(-1, nstacks, x.shape[-1])
    x = torch.nn.functional.pad(x, (0, n - x.shape[-1])) if x.shape[-1] < n else x[..., :n]
    b = x.shape[0]
    inc = increasing_stride
    for block in range(nblocks):
        for idx in range(log_n):
            s = 1 << (idx if inc else log_n - 1 - idx)
            t = twiddle[:, block, idx].reshape(nstacks, n // (2 * s), s, 2, 2)  # (S, k, q, i, j)
            v = x.reshape(b, nstacks, n // (2 * s), 2, s)  # (B, S, k, j, q)
            x = torch.einsum("skqij,bskjq->bskiq", t, v).reshape(b, nstacks, n)
        inc = not inc
    return x.reshape(*lead, nstacks, n)
