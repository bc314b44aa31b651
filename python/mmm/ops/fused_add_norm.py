"""fused_add_norm: residual add + LayerNorm/RMSNorm + GeLU in one pass over memory.

Registers the fake (meta) kernel and autograd of ``torch.ops.mmm.fused_add_norm`` and defines the
public function :func:`fused_add_norm`. Kernels: ``csrc/fused_add_norm/``; glue:
``csrc/torch/fused_add_norm.cpp``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from mmm.ops._autograd import call_op, no_double_backward

_ACTIVATIONS = ("none", "gelu", "gelu_tanh")


def _h_dtype(x: Tensor, residual: Optional[Tensor], residual_in_fp32: bool) -> torch.dtype:
    """dtype of h (residual_out): fp32 when residual_in_fp32, else the residual's, else x's.
    Mirrors h_dtype_for() in the C++ glue."""
    if residual_in_fp32:
        return torch.float32
    return residual.dtype if residual is not None else x.dtype


def _stores_h(x, residual, dropout_p, prenorm, residual_in_fp32, inference) -> bool:
    """Whether the op writes h (residual_out): always with prenorm; otherwise only for backward,
    where h differs from x. Mirrors store_h in the C++ glue."""
    return prenorm or (not inference and (
        residual is not None
        or dropout_p > 0.0
        or _h_dtype(x, residual, residual_in_fp32) != x.dtype
    ))


def _check(x, weight, bias, residual, eps, activation, dropout_p):
    """The shape and value checks of the C++ glue, for the fake kernel (torch.compile traces it,
    not the C++), with the same messages."""
    if x.dim() < 1:
        raise RuntimeError("fused_add_norm: x must have at least one dimension, got a 0-dim tensor")
    n = x.shape[-1]
    if n < 1:
        raise RuntimeError(
            f"fused_add_norm: the normalized (last) dimension N of x must be >= 1, got x of shape {tuple(x.shape)}"
        )
    for name, w in (("weight", weight), ("bias", bias)):
        if w is None:
            continue
        if w.dim() != 1 or w.shape[0] != n:
            raise RuntimeError(
                f"fused_add_norm: {name} must have shape (N,) = ({n},) to match x's last dimension, got {tuple(w.shape)}"
            )
        if w.dtype not in (x.dtype, torch.float32):
            raise RuntimeError(f"fused_add_norm: {name} must have x's dtype ({x.dtype}) or float32, got {w.dtype}")
    if residual is not None:
        if residual.shape != x.shape:
            raise RuntimeError(f"fused_add_norm: residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
        if residual.dtype not in (x.dtype, torch.float32):
            raise RuntimeError(f"fused_add_norm: residual must have x's dtype ({x.dtype}) or float32, got {residual.dtype}")
    if eps < 0:
        raise RuntimeError(f"fused_add_norm: eps must be >= 0, got {eps}")
    if not 0.0 <= dropout_p < 1.0:
        raise RuntimeError(f"fused_add_norm: dropout_p must be in [0, 1), got {dropout_p}")
    if activation not in _ACTIVATIONS:
        raise RuntimeError(f"fused_add_norm: activation must be 'none', 'gelu' or 'gelu_tanh', got '{activation}'")


@torch.library.register_fake("mmm::fused_add_norm")
def _fused_add_norm_fake(x, weight, bias, residual=None, dropout_seed=None, *, eps=1e-5, rms=False,
                         activation="none", dropout_p=0.0, prenorm=False, residual_in_fp32=False,
                         inference=False):
    _check(x, weight, bias, residual, eps, activation, dropout_p)
    rows = x.numel() // x.shape[-1]
    stat = torch.float64 if x.dtype == torch.float64 else torch.float32
    h_dtype = _h_dtype(x, residual, residual_in_fp32)
    h_shape = x.shape if _stores_h(x, residual, dropout_p, prenorm, residual_in_fp32, inference) else (0,)
    return (
        x.new_empty(x.shape),
        x.new_empty(h_shape, dtype=h_dtype),
        x.new_empty((0 if rms else rows,), dtype=stat),
        x.new_empty((rows,), dtype=stat),
    )


@torch.library.register_fake("mmm::fused_add_norm_backward")
def _fused_add_norm_backward_fake(grad_out, grad_residual_out, h, weight, bias, mean, rstd, dropout_seed, *,
                                  has_residual, rms, activation, dropout_p):
    n = grad_out.shape[-1]
    return (
        grad_out.new_empty(grad_out.shape),
        grad_out.new_empty(grad_out.shape if has_residual else (0,), dtype=h.dtype),
        grad_out.new_empty((n if weight is not None else 0,), dtype=weight.dtype if weight is not None else h.dtype),
        grad_out.new_empty((n if bias is not None else 0,), dtype=bias.dtype if bias is not None else h.dtype),
    )


def _setup_context(ctx, inputs, keyword_only_inputs, output):
    x, weight, bias, residual, dropout_seed = inputs
    kw = keyword_only_inputs
    _, h_out, mean, rstd = output
    if kw["inference"]:
        raise RuntimeError(
            "fused_add_norm: inference=True keeps nothing for backward, but an input requires grad; "
            "call it under torch.no_grad() (mmm.fused_add_norm chooses for you) or without inference=True"
        )
    # xhat is recomputed from h; when h was not stored it is x itself.
    ctx.stored_h = _stores_h(x, residual, kw["dropout_p"], kw["prenorm"], kw["residual_in_fp32"], False)
    ctx.save_for_backward(h_out if ctx.stored_h else x, weight, bias, mean, rstd, dropout_seed)
    ctx.set_materialize_grads(False)  # an unused out or residual_out gets None, not a tensor of zeros
    ctx.residual_dtype = residual.dtype if residual is not None else None
    ctx.x_dtype = x.dtype
    ctx.opts = dict(rms=kw["rms"], activation=kw["activation"], dropout_p=kw["dropout_p"])


def _backward(ctx, grad_out, grad_h_out, grad_mean, grad_rstd):
    h, weight, bias, mean, rstd, seed = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros(h.shape, dtype=ctx.x_dtype, device=h.device)
    gro = grad_h_out if ctx.stored_h and grad_h_out is not None else None
    dx, dres, dw, db = call_op(
        torch.ops.mmm.fused_add_norm_backward,
        grad_out, gro, h, weight, bias, mean, rstd, seed,
        has_residual=ctx.residual_dtype is not None, **ctx.opts,
    )
    if ctx.residual_dtype is not None and dres.dtype != ctx.residual_dtype:
        dres = dres.to(ctx.residual_dtype)
    return (
        dx,
        dw if weight is not None else None,
        db if bias is not None else None,
        dres if ctx.residual_dtype is not None else None,
        None,
    )


torch.library.register_autograd("mmm::fused_add_norm", _backward, setup_context=_setup_context)
no_double_backward("mmm::fused_add_norm_backward", "fused_add_norm")


def _new_dropout_seed() -> Tensor:
    # From torch's default (CPU) generator, so torch.manual_seed reproduces the mask.
    return torch.randint(0, 2**62, (), dtype=torch.int64)


def fused_add_norm(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    residual: Optional[Tensor] = None,
    *,
    eps: float = 1e-5,
    rms: bool = False,
    activation: str = "none",
    dropout_p: float = 0.0,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
):
    """Residual add + LayerNorm/RMSNorm + activation, fused.

    For ``x`` of shape ``(..., N)``::

        h   = dropout(x, dropout_p) + residual        # residual optional
        y   = normalize(h) * weight + bias            # LayerNorm, or RMSNorm if rms=True
        out = activation(y)                           # "none" | "gelu" (erf) | "gelu_tanh"

    LayerNorm uses the biased variance with ``eps`` inside the square root, as ``nn.LayerNorm``;
    RMSNorm is ``h * rsqrt(mean(h**2) + eps)``, as ``nn.RMSNorm``.

    Args:
        x: ``(..., N)``, float32 / float16 / bfloat16 (float64 on the CPU). N >= 1; any number
            of rows (zero rows gives empty outputs and zero weight/bias gradients).
        weight, bias: ``(N,)`` or None, in x's dtype or float32.
        residual: x's shape, in x's dtype or float32, or None.
        dropout_p: in [0, 1). The mask is a pure function of a seed drawn from torch's default
            generator and each element's row-major index (Philox), so ``torch.manual_seed``
            reproduces it, CPU and CUDA draw the same mask, and backward regenerates it.
        prenorm: also return ``h`` (as ``residual_out``) for the next block's residual.
        residual_in_fp32: store ``residual_out`` in float32 (else in the residual's dtype, or
            x's when there is no residual). Feeding an fp32 residual stream back in keeps it fp32.

    Statistics are computed in float32 (float64 for float64 input). Inputs may be
    non-contiguous: a tensor whose last dimension has unit stride and whose leading dimensions
    collapse to a single row stride (e.g. a slice of rows, or a column slice ``x[..., :N]`` of a
    wider buffer) is read in place; anything else is copied once to contiguous memory.

    Under ``torch.no_grad()``, or when no input requires grad, h is not written to memory unless
    it is returned (``prenorm``): backward is the only other reader.

    Returns:
        ``out`` (x's shape and dtype), or ``(out, residual_out)`` when ``prenorm``.
    """
    seed = _new_dropout_seed() if dropout_p > 0.0 else None
    # Without autograd nothing reads h back, so it is written only when it is an output.
    inference = not (torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias, residual)))
    out, residual_out, _, _ = call_op(
        torch.ops.mmm.fused_add_norm,
        x, weight, bias, residual, seed, eps=eps, rms=rms, activation=activation, dropout_p=dropout_p,
        prenorm=prenorm, residual_in_fp32=residual_in_fp32, inference=inference,
    )
    return (out, residual_out) if prenorm else out


def selftest(device: str) -> float:
    """Forward and backward against the plain PyTorch expression (fp32); returns the worst
    relative error and raises AssertionError above tolerance. Used by ``python -m mmm``."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for n, dtype in ((1024, torch.float32), (4097, torch.bfloat16)):
        x, r, dy = (torch.randn(37, n, generator=g).to(device, dtype) for _ in range(3))
        w, b = (torch.randn(n, generator=g).to(device, dtype) for _ in range(2))
        leaves = [t.requires_grad_() for t in (x, w, b, r)]
        out = fused_add_norm(x, w, b, r, activation="gelu")
        grads = torch.autograd.grad(out, leaves, dy)
        ref_leaves = [t.detach().float().requires_grad_() for t in leaves]
        rx, rw, rb, rr = ref_leaves
        ref = F.gelu(F.layer_norm(rx + rr, (n,), rw, rb))
        ref_grads = torch.autograd.grad(ref, ref_leaves, dy.float())
        tol = 1e-4 if dtype == torch.float32 else 5e-2
        for got, want in zip((out, *grads), (ref, *ref_grads)):
            err = ((got.float() - want).norm() / want.norm().clamp_min(1e-12)).item()
            worst = max(worst, err)
            assert err < tol, f"fused_add_norm selftest on {device} ({dtype}, N={n}): relative error {err:.2e}"
    return worst
