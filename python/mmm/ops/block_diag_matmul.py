"""block_diag_matmul and monarch_matmul: block-diagonal products and the Monarch matrix built on them.

Registers the fake kernels and autograd of ``torch.ops.mmm.block_diag_matmul`` and
``torch.ops.mmm.monarch_matmul`` and defines the public functions. Kernels:
``csrc/block_diag_matmul/``; glue: ``csrc/torch/block_diag_matmul.cpp``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mmm.ops._autograd import call_op, no_double_backward


def _check(x, weights, op):
    """The C++ glue's checks, for the fake kernels (torch.compile traces them), same messages."""
    if x.dim() < 1:
        raise RuntimeError(f"{op}: x must have at least one dimension, got a 0-dim tensor")
    for name, w in weights:
        if w.dim() != 3:
            raise RuntimeError(f"{op}: {name} must be 3-D (nblocks, block_out, block_in), got shape {tuple(w.shape)}")
        if w.dtype != x.dtype:
            raise RuntimeError(f"{op}: {name} must have x's dtype ({x.dtype}), got {w.dtype}")


@torch.library.register_fake("mmm::block_diag_matmul")
def _block_diag_matmul_fake(x, w):
    _check(x, [("w", w)], "block_diag_matmul")
    nb, n, k = w.shape
    if nb * k != x.shape[-1]:
        raise RuntimeError(f"block_diag_matmul: w of shape {tuple(w.shape)} needs x's last dimension = "
                           f"nblocks * block_in = {nb * k}, got x of shape {tuple(x.shape)}")
    return x.new_empty((*x.shape[:-1], nb * n))


@torch.library.register_fake("mmm::block_diag_matmul_backward")
def _block_diag_matmul_backward_fake(grad_y, x, w):
    return x.new_empty(x.shape), x.new_empty(w.shape)


@torch.library.register_fake("mmm::monarch_matmul")
def _monarch_matmul_fake(x, w1, w2):
    _check(x, [("w1", w1), ("w2", w2)], "monarch_matmul")
    k, q, p = w1.shape
    l, s, r = w2.shape
    if k * p != x.shape[-1]:
        raise RuntimeError(f"monarch_matmul: w1 of shape {tuple(w1.shape)} (k, q, p) needs x's last dimension = "
                           f"k * p = {k * p}, got x of shape {tuple(x.shape)}")
    if l * r != k * q:
        raise RuntimeError(f"monarch_matmul: w2 of shape {tuple(w2.shape)} (l, s, r) needs l * r = k * q = {k * q} "
                           f"(w1's output size), got {l * r}")
    return x.new_empty((*x.shape[:-1], l * s))


@torch.library.register_fake("mmm::monarch_matmul_backward")
def _monarch_matmul_backward_fake(grad_y, x, w1, w2):
    return x.new_empty(x.shape), x.new_empty(w1.shape), x.new_empty(w2.shape)


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _block_diag_backward(ctx, grad_y):
    x, w = ctx.saved_tensors
    dx, dw = call_op(torch.ops.mmm.block_diag_matmul_backward, grad_y, x, w)
    return dx, dw


def _monarch_backward(ctx, grad_y):
    x, w1, w2 = ctx.saved_tensors
    return call_op(torch.ops.mmm.monarch_matmul_backward, grad_y, x, w1, w2)


torch.library.register_autograd("mmm::block_diag_matmul", _block_diag_backward, setup_context=_save_inputs)
torch.library.register_autograd("mmm::monarch_matmul", _monarch_backward, setup_context=_save_inputs)
no_double_backward("mmm::block_diag_matmul_backward", "block_diag_matmul")
no_double_backward("mmm::monarch_matmul_backward", "monarch_matmul")


def block_diag_matmul(x: Tensor, w: Tensor) -> Tensor:
    """Block-diagonal matrix product, one ``nn.Linear``-style (out, in) weight per block.

    ``x``: ``(..., nblocks * k)``; ``w``: ``(nblocks, n, k)``; returns ``(..., nblocks * n)`` with
    ``y[..., b*n:(b+1)*n] = x[..., b*k:(b+1)*k] @ w[b].T``.

    x and w share one dtype: float32, float16 or bfloat16 (float64 on the CPU), accumulated in
    float32 (float64). Any leading dims and token count; non-contiguous x is read in place when
    its last dim has unit stride and its leading dims collapse to one stride. Differentiable in
    x and w; the weight gradient is deterministic.
    """
    return call_op(torch.ops.mmm.block_diag_matmul, x, w)


def monarch_matmul(x: Tensor, w1: Tensor, w2: Tensor) -> Tensor:
    """Monarch product: HazyResearch/fly's ``blockdiag_butterfly_multiply``.

    Shapes: ``x (..., N)``, ``w1 (k, q, p)`` with ``k * p == N``, ``w2 (l, s, r)`` with
    ``l * r == k * q``; returns ``(..., l * s)``. With ``u = block_diag_matmul(x, w1)``
    (``(..., k*q)``), block ``j`` of ``w2`` reads ``u[..., i*l + j]`` for ``i < r`` (the
    ``'(r l) -> (l r)'`` permutation) and its output ``t`` lands at ``y[..., t*l + j]``
    (``'(l s) -> (s l)'``)::

        u = block_diag_matmul(x, w1)
        z = u.reshape(*lead, r, l).transpose(-1, -2).reshape(*lead, l * r)
        y = block_diag_matmul(z, w2).reshape(*lead, l, s).transpose(-1, -2).reshape(*lead, s * l)

    The permutations are never copies. dtypes and differentiability as :func:`block_diag_matmul`;
    the intermediate ``u`` is rounded to x's dtype, as in the reference.

    Forward: when ``l`` divides ``q`` (``l % 16 == 0``) or ``q`` divides ``l`` (``q % 16 == 0``)
    and ``p``, ``r``, ``s`` are multiples of 16 up to 256, one fused kernel (fp16/bf16 on CUDA; on the CPU its twin, any dtype) reads x
    once and writes y once, keeping ``u`` in shared memory (on chip); otherwise, and for fp32 on
    CUDA, two block GEMMs with ``u`` in global memory. On sm_90 (H100, H200), a square Monarch of
    blocks of 32 or 64 (``k = l = p = q = r = s``: ``MonarchLinear(1024)`` and
    ``MonarchLinear(4096)`` by default) takes a kernel of thread-block clusters instead that keeps
    all the weights on chip too. :func:`monarch_forward_plan` says which.
    """
    return call_op(torch.ops.mmm.monarch_matmul, x, w1, w2)


def monarch_forward_plan(x: Tensor, w1: Tensor, w2: Tensor) -> dict:
    """Which forward :func:`monarch_matmul` takes for these inputs on their device.

    Returns ``{"fused": bool, "tokens_per_cta": int, "chunk": int, "smem_bytes": int,
    "units_per_step": int, "blocks_per_step": int, "cluster": int}``: ``cluster`` is the number
    of CTAs per thread-block cluster of the sm_90 kernel that holds the weights on chip (0: not
    that kernel; the streaming one, the CPU twin or two GEMMs); ``chunk`` is the number of stage-2 blocks
    whose inputs are kept on chip at once (x is read ``l / chunk`` times; once when it equals
    ``l``); ``units_per_step`` and ``blocks_per_step`` (CUDA; 1 on the CPU) how many of the first
    and the second stage's small GEMMs share a pipeline step. The
    environment variables the op reads are honoured: ``MMM_MONARCH_FUSED=0`` (always two GEMMs)
    or ``=1`` (fused wherever the shape fits, past the CUDA plan's rule that keeps the two GEMMs
    when the weights each CTA streams from L2 outweigh the activation traffic fusing saves),
    ``MMM_MONARCH_CHUNK=J`` (force the chunk), ``MMM_MONARCH_BT=16|32``,
    ``MMM_MONARCH_UNITS=1|2|4`` (cap the GEMMs per step), ``MMM_MONARCH_CLUSTER=0`` (not the
    cluster kernel; nor with any of the three before), ``MMM_DISABLE_TENSOR_CORES=1`` (CUDA: no
    fused kernel).
    """
    fused, bt, chunk, smem, units, blocks, cluster = torch.ops.mmm._monarch_forward_plan(x, w1, w2)
    return {"fused": bool(fused), "tokens_per_cta": bt, "chunk": chunk, "smem_bytes": smem,
            "units_per_step": units, "blocks_per_step": blocks, "cluster": cluster}


def _reference_inputs(device, dtype, g, w1_shape, w2_shape):
    k, q, p = w1_shape
    x = torch.randn(19, k * p, generator=g).to(device, dtype)
    w1 = torch.randn(*w1_shape, generator=g).to(device, dtype) / p**0.5
    w2 = torch.randn(*w2_shape, generator=g).to(device, dtype) / w2_shape[2] ** 0.5
    return x, w1, w2


def selftest(device: str) -> float:
    """monarch_matmul (and so block_diag_matmul) forward and backward against the plain PyTorch
    expression in fp32, on a rectangular shape (two block GEMMs) and on one the fused forward
    takes; returns the worst relative error."""
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for w1_shape, w2_shape in (((4, 6, 12), (6, 10, 4)), ((8, 32, 16), (16, 32, 16))):
        k, q, p = w1_shape
        l, s, r = w2_shape
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
            x, w1, w2 = (t.requires_grad_() for t in _reference_inputs(device, dtype, g, w1_shape, w2_shape))
            y = monarch_matmul(x, w1, w2)
            dy = torch.randn(y.shape, generator=g).to(device, dtype)
            grads = torch.autograd.grad(y, (x, w1, w2), dy)
            rx, rw1, rw2 = (t.detach().float().requires_grad_() for t in (x, w1, w2))
            u = torch.einsum("tkp,kqp->tkq", rx.reshape(19, k, p), rw1).reshape(19, k * q)
            z = u.reshape(19, r, l).transpose(1, 2).reshape(19, l, r)
            ref = torch.einsum("tlr,lsr->tls", z, rw2).transpose(1, 2).reshape(19, s * l)
            ref_grads = torch.autograd.grad(ref, (rx, rw1, rw2), dy.float())
            for got, want in zip((y, *grads), (ref, *ref_grads)):
                err = ((got.float() - want).norm() / want.norm()).item()
                worst = max(worst, err)
                assert err < tol, (f"monarch_matmul selftest on {device} ({dtype}, w1 {w1_shape}, "
                                   f"w2 {w2_shape}): relative error {err:.2e}")
    return worst
