"""fftconv: causal long convolution through the FFT, with Hyena's optional gates and skip.

Registers the fake kernels and autograd of ``torch.ops.mmm.fftconv`` (and its backward op) and
defines the public function :func:`fftconv`. Kernels: ``csrc/fftconv/``; glue:
``csrc/torch/fftconv.cpp``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from mmm.ops._autograd import call_op, no_double_backward

_MAX_LENGTH = 1 << 20
_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _dev(t: Tensor) -> str:
    return "cpu" if t.device.type == "cpu" else f"{t.device.type}:{t.device.index or 0}"


def _check(op, u, k, bias, pregate, postgate, grad_y=None):
    """The checks of the C++ glue, for the fake kernels (torch.compile traces them), with the
    same messages."""
    if u.dim() != 3:
        raise RuntimeError(f"{op}: u must have shape (B, H, N), got {tuple(u.shape)}")
    _, h, n = u.shape
    if n < 1:
        raise RuntimeError(
            f"{op}: the sequence length N (u's last dimension) must be >= 1, got u of shape {tuple(u.shape)}"
        )
    if n > _MAX_LENGTH:
        raise RuntimeError(f"{op}: the sequence length N may be at most {_MAX_LENGTH}, got {n}")
    if u.device.type == "cuda":
        if u.dtype not in _CUDA_DTYPES:
            raise RuntimeError(f"{op}: u must be float32, float16 or bfloat16 on CUDA (float64 only on the CPU)")
    elif u.dtype not in _CUDA_DTYPES + (torch.float64,):
        raise RuntimeError(f"{op}: u must be a CPU or CUDA float32, float16, bfloat16 or float64 tensor")
    if grad_y is not None:
        _check_like_u(op, "grad_y", grad_y, u)
    if k.dim() != 2 or tuple(k.shape) != (h, n):
        raise RuntimeError(
            f"{op}: k must have shape (H, N) = ({h}, {n}) to match u of shape {tuple(u.shape)}, got {tuple(k.shape)}"
        )
    if k.dtype not in (u.dtype, torch.float32):
        raise RuntimeError(f"{op}: k must have u's dtype ({u.dtype}) or float32, got {k.dtype}")
    if k.device != u.device:
        raise RuntimeError(f"{op}: k is on {_dev(k)} but u is on {_dev(u)}")
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != h:
            raise RuntimeError(
                f"{op}: bias must have shape (H,) = ({h},) to match u of shape {tuple(u.shape)}, got {tuple(bias.shape)}"
            )
        if bias.dtype not in (u.dtype, torch.float32):
            raise RuntimeError(f"{op}: bias must have u's dtype ({u.dtype}) or float32, got {bias.dtype}")
        if bias.device != u.device:
            raise RuntimeError(f"{op}: bias is on {_dev(bias)} but u is on {_dev(u)}")
    for name, gate in (("pregate", pregate), ("postgate", postgate)):
        if gate is not None:
            _check_like_u(op, name, gate, u)


def _check_like_u(op, name, t, u):
    if tuple(t.shape) != tuple(u.shape):
        raise RuntimeError(f"{op}: {name} must have u's shape {tuple(u.shape)}, got {tuple(t.shape)}")
    if t.dtype != u.dtype:
        raise RuntimeError(f"{op}: {name} must have u's dtype ({u.dtype}), got {t.dtype}")
    if t.device != u.device:
        raise RuntimeError(f"{op}: {name} is on {_dev(t)} but u is on {_dev(u)}")


@torch.library.register_fake("mmm::fftconv")
def _fftconv_fake(u, k, bias=None, pregate=None, postgate=None):
    _check("fftconv", u, k, bias, pregate, postgate)
    return u.new_empty(u.shape)


@torch.library.register_fake("mmm::fftconv_backward")
def _fftconv_backward_fake(grad_y, u, k, bias, pregate, postgate, *, need_u, need_k, need_bias, need_pregate,
                           need_postgate):
    _check("fftconv_backward", u, k, bias, pregate, postgate, grad_y)
    none = (0,)
    return (
        u.new_empty(u.shape if need_u else none),
        u.new_empty(k.shape if need_k else none, dtype=k.dtype),
        u.new_empty(bias.shape if need_bias and bias is not None else none,
                    dtype=bias.dtype if bias is not None else u.dtype),
        u.new_empty(u.shape if need_pregate and pregate is not None else none),
        u.new_empty(u.shape if need_postgate and postgate is not None else none),
    )


def _setup_context(ctx, inputs, output):
    # Trailing defaults may be missing from `inputs` (a direct torch.ops call).
    u, k, bias, pregate, postgate = tuple(inputs) + (None,) * (5 - len(inputs))
    ctx.n_inputs = len(inputs)
    ctx.save_for_backward(u, k, bias, pregate, postgate)


def _needs(ctx):
    """needs_input_grad per input (u, k, bias, pregate, postgate): torch.library drops trailing
    arguments equal to their defaults (None), so the tuple may be shorter than five."""
    got = tuple(bool(x) for x in ctx.needs_input_grad)
    return got[:5] + (False,) * (5 - len(got))


def _backward(ctx, grad_y):
    u, k, bias, pregate, postgate = ctx.saved_tensors
    need = _needs(ctx)
    if grad_y is None or not any(need):
        return (None,) * ctx.n_inputs
    du, dk, dbias, dpre, dpost = call_op(
        torch.ops.mmm.fftconv_backward,
        grad_y, u, k, bias, pregate, postgate, need_u=need[0], need_k=need[1],
        need_bias=need[2] and bias is not None, need_pregate=need[3] and pregate is not None,
        need_postgate=need[4] and postgate is not None,
    )
    return (
        du if need[0] else None,
        dk if need[1] else None,
        dbias if need[2] and bias is not None else None,
        dpre if need[3] and pregate is not None else None,
        dpost if need[4] and postgate is not None else None,
    )[: ctx.n_inputs]


torch.library.register_autograd("mmm::fftconv", _backward, setup_context=_setup_context)
no_double_backward("mmm::fftconv_backward", "fftconv")


def fftconv(
    u: Tensor,
    k: Tensor,
    bias: Optional[Tensor] = None,
    pregate: Optional[Tensor] = None,
    postgate: Optional[Tensor] = None,
) -> Tensor:
    """Causal long convolution of each channel of ``u`` with its own length-N kernel, by FFT::

        y = postgate * (irfft(rfft(pregate * u, L) * rfft(k, L))[..., :N] + bias[:, None] * u)

    i.e. ``y[b, h, t] = postgate[b, h, t] * (sum_{s <= t} k[h, t - s] * pregate[b, h, s] *
    u[b, h, s] + bias[h] * u[b, h, t])``: Hyena's gated long convolution. ``bias`` is the
    per-channel skip (Hyena's ``D``) and multiplies the *raw* ``u``, not ``pregate * u``. A
    missing gate means 1, a missing bias 0.

    ``L`` is the next power of two >= 2N; padding to it makes the circular convolution the exact
    linear one, so every ``N >= 1`` works, powers of two or not. Nothing padded is stored in
    global memory: on CUDA one kernel transforms, multiplies and transforms back a whole row in
    shared memory (as long as 4L bytes fit one block's shared memory, which the launcher reads
    from the device: N <= 16384 with 128 KB or more per block (A100, H100), N <= 8192 with 99 KB
    (RTX 30/40)); longer rows take a multi-kernel path through global scratch. ``rfft(k, L)`` is
    computed once per call into an ``(H, L/2 + 1)`` buffer.

    Args:
        u: ``(B, H, N)``, float32 / float16 / bfloat16 (float64 on the CPU), ``1 <= N <= 2**20``.
        k: ``(H, N)``, u's dtype or float32 (a longer filter must be sliced to ``k[:, :N]``; only
            its first N taps can reach a causal output of length N).
        bias: ``(H,)`` or None, u's dtype or float32.
        pregate, postgate: u's shape and dtype, or None.

    Arithmetic is fp32 whatever the storage type (fp64 for fp64); FlashFFTConv accumulates fp16
    inputs in half precision, this does not. Returns ``y`` in u's shape and dtype.
    Differentiable in u, k, bias and both gates; the gradients of k and bias are sums over the
    batch, taken in a fixed order (run-to-run deterministic).
    """
    return call_op(torch.ops.mmm.fftconv, u, k, bias, pregate, postgate)


def fftconv_reference(u, k, bias=None, pregate=None, postgate=None):
    """The plain torch.fft expression of :func:`fftconv` (pad, rfft, multiply, irfft, slice), in
    the inputs' dtype promoted to at least float32."""
    n = u.shape[-1]
    fft_len = 1 << (2 * n - 1).bit_length()
    dt = torch.promote_types(u.dtype, torch.float32)
    uf = u.to(dt)
    v = uf * pregate.to(dt) if pregate is not None else uf
    y = torch.fft.irfft(torch.fft.rfft(v, n=fft_len) * torch.fft.rfft(k.to(dt), n=fft_len), n=fft_len)[..., :n]
    if bias is not None:
        y = y + bias.to(dt)[:, None] * uf
    if postgate is not None:
        y = y * postgate.to(dt)
    return y


def selftest(device: str) -> float:
    """Forward and every gradient against :func:`fftconv_reference` in float64 at a
    power-of-two and a ragged length; returns the worst relative error."""
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for n in (1024, 1000):
        b, h = 2, 3
        args = [torch.randn(*s, generator=g, dtype=torch.float64) for s in ((b, h, n), (h, n), (h,), (b, h, n), (b, h, n))]
        args[1] = args[1] / n ** 0.5
        dy = torch.randn(b, h, n, generator=g, dtype=torch.float64)
        leaves = [a.to(device, torch.float32).requires_grad_() for a in args]
        y = fftconv(*leaves)
        grads = torch.autograd.grad(y, leaves, dy.to(device, torch.float32))
        ref_leaves = [a.requires_grad_() for a in args]
        ref = fftconv_reference(*ref_leaves)
        ref_grads = torch.autograd.grad(ref, ref_leaves, dy)
        for got, want in zip((y, *grads), (ref, *ref_grads)):
            err = ((got.detach().double().cpu() - want).norm() / want.norm()).item()
            worst = max(worst, err)
            assert err < 1e-5, f"fftconv selftest on {device} (N={n}): relative error {err:.2e}"
    return worst
