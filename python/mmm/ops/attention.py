"""fused_attention: exact attention, FlashAttention-style (tiled, online softmax, P never stored).

Registers the fake kernels and autograd of ``torch.ops.mmm.fused_attention_forward`` /
``fused_attention_backward`` (C++: ``csrc/torch/attention.cpp``; kernels: ``csrc/attention/``),
defines the public op ``torch.ops.mmm.fused_attention`` (a drop-in for
``scaled_dot_product_attention``: composite, so autograd and torch.compile see the forward op
underneath) and the public function :func:`fused_attention`.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from mmm.ops._autograd import call_op, no_double_backward

MAX_HEAD_DIM = 256


# ---------------------------------------------------------------------------------------------
# checks and shapes (mirror check_qkv / empty_in_layout_of in csrc/torch/attention.cpp)
# ---------------------------------------------------------------------------------------------
def _dev(t: Tensor) -> str:
    return f"cuda:{t.device.index}" if t.device.type == "cuda" else t.device.type  # glue::device_str


_SCALAR_TYPE_NAMES = {  # c10's names, as the C++ messages print them
    torch.float32: "Float", torch.float16: "Half", torch.bfloat16: "BFloat16", torch.float64: "Double",
    torch.int8: "Char", torch.uint8: "Byte", torch.int16: "Short", torch.int32: "Int", torch.int64: "Long",
    torch.bool: "Bool", torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble",
}


def _dtype(dt: torch.dtype) -> str:
    return _SCALAR_TYPE_NAMES.get(dt, str(dt).replace("torch.", ""))


def _check(q: Tensor, k: Tensor, v: Tensor, window_left: int, window_right: int) -> None:
    """The C++ glue's checks, for the fake kernel (torch.compile traces it, not the C++), with
    the same messages."""
    names = ("q", "k", "v")
    for name, t in zip(names, (q, k, v)):
        if t.dim() != 4:
            raise RuntimeError(f"fused_attention: {name} must be 4-D (batch, heads, seqlen, head_dim), "
                               f"got shape {tuple(t.shape)}")
    for name, t in zip(names[1:], (k, v)):
        if t.device != q.device:
            raise RuntimeError(f"fused_attention: {name} is on {_dev(t)} but q is on {_dev(q)}")
    if q.device.type == "cuda":
        if q.dtype not in (torch.float16, torch.bfloat16):
            raise RuntimeError(f"fused_attention: q must be float16 or bfloat16 on CUDA, got {_dtype(q.dtype)} "
                               "(cast q, k and v to torch.float16 or torch.bfloat16; float32 and float64 run "
                               "on the CPU only)")
    elif q.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise RuntimeError(f"fused_attention: q must be float32, float16, bfloat16 or float64, got {_dtype(q.dtype)}")
    for name, t in zip(names[1:], (k, v)):
        if t.dtype != q.dtype:
            raise RuntimeError(f"fused_attention: {name} must have q's dtype ({_dtype(q.dtype)}), "
                               f"got {_dtype(t.dtype)}")
    B, Hq, _, D = q.shape
    Hkv = k.shape[1]
    if k.shape[0] != B:
        raise RuntimeError(f"fused_attention: k must have q's batch size (dim 0) {B}, got k of shape {tuple(k.shape)}")
    if k.shape[3] != D:
        raise RuntimeError(f"fused_attention: k must have q's head_dim (last dim) {D}, got k of shape {tuple(k.shape)}")
    if v.shape != k.shape:
        raise RuntimeError(f"fused_attention: v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}")
    if not 1 <= D <= MAX_HEAD_DIM:
        raise RuntimeError(f"fused_attention: head_dim (q.size(3)) must be in [1, {MAX_HEAD_DIM}], got {D}")
    if q.device.type == "cuda" and D % 8 != 0:  # check_qkv's CUDA rule
        raise RuntimeError(f"fused_attention: head_dim (q.size(3)) must be a multiple of 8 on CUDA, got {D} "
                           "(pad q, k and v with zeros to a multiple of 8 and slice the output)")
    if (Hq % Hkv != 0) if Hkv >= 1 else Hq != 0:
        raise RuntimeError(f"fused_attention: the number of query heads (q.size(1) = {Hq}) must be a multiple of "
                           f"the number of key/value heads (k.size(1) = {Hkv})")
    for name, t in zip(names, (q, k, v)):
        if D != 1 and t.stride(3) != 1:
            raise RuntimeError(f"fused_attention: {name} must have unit stride in its last (head_dim) dimension, "
                               f"got last-dim stride {t.stride(3)} (shape {tuple(t.shape)}); any other strides are "
                               f"fine; call {name}.contiguous() first")
    if window_left < -1:
        raise RuntimeError(f"fused_attention: window_left must be >= -1 (-1: unbounded), got {window_left}")
    if window_right < -1:
        raise RuntimeError(f"fused_attention: window_right must be >= -1 (-1: unbounded), got {window_right}")
    dims = compiled_cuda_head_dims() if q.device.type == "cuda" else ()
    if dims and not any(D <= c for c in dims):  # check_cuda_head_dim
        raise RuntimeError(f"fused_attention: head_dim (q.size(3)) {D} has no CUDA kernel in this build of mmm, "
                           f"which compiled head dims {', '.join(map(str, dims))} only (rebuild with "
                           f"MMM_ATTENTION_HEAD_DIMS including one >= {D}, or run on the CPU)")


_compiled_dims: Optional[Tuple[int, ...]] = None


def compiled_cuda_head_dims() -> Tuple[int, ...]:
    """The head dims this build compiled CUDA kernels for (CMake ``MMM_ATTENTION_HEAD_DIMS``,
    by default 32, 64, 96, 128, 192, 256); a head dim D runs on the smallest one >= D."""
    global _compiled_dims
    if _compiled_dims is None:
        from mmm._library import build_info

        _compiled_dims = tuple(build_info().get("attention_head_dims", ()))
    return _compiled_dims


def _empty_in_layout_of(t: Tensor) -> Tensor:
    """An uninitialised tensor of t's shape and dtype in t's memory order: (B, S, H, D) memory
    when t is a (B, S, H, D) tensor viewed with .transpose(1, 2), contiguous otherwise."""
    B, H, S, D = t.shape
    if H > 1 and S > 1 and t.stride(1) < t.stride(2):
        return t.new_empty((B, S, H, D)).transpose(1, 2)
    return t.new_empty((B, H, S, D))


def _lse_dtype(q: Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------------------------
# fake kernels and autograd of the C++ ops
# ---------------------------------------------------------------------------------------------
@torch.library.register_fake("mmm::fused_attention_forward")
def _forward_fake(q, k, v, scale, window_left, window_right, deterministic=True):
    _check(q, k, v, window_left, window_right)
    return _empty_in_layout_of(q), q.new_empty(q.shape[:3], dtype=_lse_dtype(q))


@torch.library.register_fake("mmm::fused_attention_backward")
def _backward_fake(grad_out, grad_lse, q, k, v, out, lse, scale, window_left, window_right, deterministic=True):
    _check(q, k, v, window_left, window_right)
    return _empty_in_layout_of(q), _empty_in_layout_of(k), _empty_in_layout_of(v)


def _setup_context(ctx, inputs, output):
    q, k, v, scale, window_left, window_right, deterministic = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.set_materialize_grads(False)  # an unused out or lse gets None, not a tensor of zeros
    ctx.opts = (scale, window_left, window_right, deterministic)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    if grad_out is None:  # only lse was used
        grad_out = torch.zeros_like(out)
    dq, dk, dv = call_op(torch.ops.mmm.fused_attention_backward, grad_out, grad_lse, q, k, v, out, lse, *ctx.opts)
    return dq, dk, dv, None, None, None, None


torch.library.register_autograd("mmm::fused_attention_forward", _backward, setup_context=_setup_context)
no_double_backward("mmm::fused_attention_backward", "fused_attention")


# ---------------------------------------------------------------------------------------------
# the public op: torch.ops.mmm.fused_attention(q, k, v, causal=False, scale=None, *, ...)
# ---------------------------------------------------------------------------------------------
def _resolve(q: Tensor, causal: bool, scale: Optional[float], window_left: int, window_right: int,
             deterministic: Optional[bool]):
    """(scale, window_left, window_right, deterministic) as the forward op takes them: scale None
    is 1/sqrt(head_dim); causal is window_right = 0; deterministic None follows
    torch.are_deterministic_algorithms_enabled()."""
    if scale is None:
        d = q.shape[-1] if q.dim() >= 1 else 1
        scale = 1.0 / math.sqrt(d) if d > 0 else 1.0  # (d = 0 is rejected by the op)
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    elif not isinstance(deterministic, bool):
        raise RuntimeError(f"fused_attention: deterministic must be True, False or None, got {deterministic!r}")
    return float(scale), int(window_left), 0 if causal else int(window_right), deterministic


_lib = torch.library.Library("mmm", "FRAGMENT")
_lib.define(
    "fused_attention(Tensor q, Tensor k, Tensor v, bool causal=False, float? scale=None, *, "
    "int window_left=-1, int window_right=-1, bool? deterministic=None) -> Tensor"
)


def _fused_attention_composite(q, k, v, causal=False, scale=None, *, window_left=-1, window_right=-1,
                               deterministic=None):
    scale, wl, wr, det = _resolve(q, causal, scale, window_left, window_right, deterministic)
    return call_op(torch.ops.mmm.fused_attention_forward, q, k, v, scale, wl, wr, det)[0]


# CompositeImplicitAutograd: autograd, fake tensors and torch.compile all see
# fused_attention_forward (which has its own fake kernel and autograd) underneath.
_lib.impl("fused_attention", _fused_attention_composite, "CompositeImplicitAutograd")


def _window(window) -> Tuple[int, int]:
    try:
        left, right = window
        return int(left), int(right)
    except (TypeError, ValueError):
        raise RuntimeError(f"fused_attention: window must be a pair (left, right) of ints (-1: unbounded), "
                           f"got {window!r}") from None


def fused_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    scale: Optional[float] = None,
    window: Tuple[int, int] = (-1, -1),
    return_lse: bool = False,
    deterministic: Optional[bool] = None,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Exact attention ``softmax(q·kᵀ·scale + mask) · v``, FlashAttention-style.

    The layout of ``torch.nn.functional.scaled_dot_product_attention``: ``q`` is ``(B, Hq, Sq, D)``,
    ``k`` and ``v`` are ``(B, Hkv, Sk, D)``. ``Hq`` must be a multiple of ``Hkv`` (grouped-query
    attention; ``Hkv = 1`` is multi-query): query head ``h`` attends with key/value head
    ``h // (Hq // Hkv)``.

    Mask (FlashAttention >= 2.1): with ``shift = Sk - Sq``, query ``i`` sees key ``j`` iff
    ``i + shift - left <= j <= i + shift + right`` for ``window = (left, right)``, a bound of -1
    meaning unbounded. ``causal=True`` is ``right = 0`` (it replaces any ``right`` given): the
    causal mask aligned to the bottom-right corner when ``Sq != Sk``. A query row that sees no
    key (possible when ``Sq > Sk`` or with a window) gives zeros and its gradients are zero: never
    NaN.

    Args:
        q, k, v: one dtype, one device. CPU: float32, float16, bfloat16 or float64 (arithmetic
            in float32; float64 in float64). CUDA: float16 or bfloat16. ``1 <= D <= 256`` on the
            CPU (CUDA kernels: multiples of 8). Any sequence lengths (0 gives empty outputs).
            Any strides with unit stride along ``D``, read in place: a ``(B, S, H, D)`` tensor
            viewed with ``.transpose(1, 2)`` needs no copy.
        scale: the softmax scale, applied in float32; None is ``1 / sqrt(D)``.
        return_lse: also return the log-sum-exp of each row of scaled, masked scores,
            ``(B, Hq, Sq)`` in float32 (float64 for float64 inputs), ``+inf`` for rows that see
            no key. It is differentiable too.
        deterministic: the backward's mode on CUDA. True: bitwise reproducible dq, dk, dv (two
            kernels, the dq one recomputing the scores: no atomics). False: FlashAttention-2's
            single pass, dq summed in fp32 with atomics, so its last bits vary from run to run
            (head dims up to 128 on GPUs with the shared memory, e.g. A100 and H100; elsewhere
            the deterministic kernels run). None (default): ``torch.are_deterministic_algorithms_enabled()``,
            so ``torch.use_deterministic_algorithms(True)`` makes it True. The CPU backward is
            always deterministic.

    Returns:
        ``out`` of q's shape and dtype (in q's memory order: ``(B, S, H, D)`` memory when q is a
        transposed ``(B, S, H, D)`` view), or ``(out, lse)``.

    Backward: FlashAttention-2's, P recomputed from q, k and lse; deterministic as chosen above
    (and on the CPU whatever the thread count). Double backward raises.
    """
    left, right = _window(window)
    # The forward op directly: what the public op's composite kernel calls, one Python layer less.
    scale, left, right, det = _resolve(q, causal, scale, left, right, deterministic)
    out, lse = call_op(torch.ops.mmm.fused_attention_forward, q, k, v, scale, left, right, det)
    return (out, lse) if return_lse else out


def selftest(device: str) -> float:
    """Forward and backward against the plain PyTorch expression (float64), GQA with a causal
    mask in float32 and a sliding window in bfloat16; returns the worst relative error and
    raises AssertionError above tolerance. Used by ``python -m mmm``."""
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    cases = ((torch.float32, (2, 4, 2, 77, 93, 64), True, (-1, -1), 1e-4),
             (torch.bfloat16, (1, 2, 1, 130, 130, 128), False, (16, 0), 3e-2))
    for dtype, (B, Hq, Hkv, Sq, Sk, D), causal, window, tol in cases:
        if device == "cuda" and dtype == torch.float32:
            dtype = torch.float16
            tol = 5e-3
        q = torch.randn(B, Hq, Sq, D, generator=g).to(device, dtype).requires_grad_()
        k = torch.randn(B, Hkv, Sk, D, generator=g).to(device, dtype).requires_grad_()
        v = torch.randn(B, Hkv, Sk, D, generator=g).to(device, dtype).requires_grad_()
        dout = torch.randn(B, Hq, Sq, D, generator=g).to(device, dtype)
        out = fused_attention(q, k, v, causal=causal, window=window)
        grads = torch.autograd.grad(out, (q, k, v), dout)
        leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
        rq, rk, rv = leaves
        rk, rv = (t.repeat_interleave(Hq // Hkv, 1) for t in (rk, rv))
        i = torch.arange(Sq, device=device)[:, None] + (Sk - Sq)
        j = torch.arange(Sk, device=device)[None, :]
        right = 0 if causal else window[1]
        visible = torch.ones(Sq, Sk, dtype=torch.bool, device=device)
        if right >= 0:
            visible &= j <= i + right
        if window[0] >= 0:
            visible &= j >= i - window[0]
        scale = float(torch.tensor(1.0 / math.sqrt(D), dtype=torch.float32))
        s = (rq @ rk.transpose(-1, -2) * scale).masked_fill(~visible, float("-inf"))
        ref = torch.softmax(s, -1).nan_to_num(0.0) @ rv
        ref_grads = torch.autograd.grad(ref, leaves, dout.double())
        for got, want in zip((out, *grads), (ref, *ref_grads)):
            err = ((got.double() - want).norm() / want.norm().clamp_min(1e-12)).item()
            worst = max(worst, err)
            assert err < tol, f"fused_attention selftest on {device} ({dtype}): relative error {err:.2e}"
    return worst
