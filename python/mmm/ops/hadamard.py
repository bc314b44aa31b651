"""hadamard_transform: the fast Walsh-Hadamard transform along the last dimension.

Registers the fake kernel and autograd of ``torch.ops.mmm.hadamard_transform`` and defines the
public function. Kernels: ``csrc/hadamard/``; glue: ``csrc/torch/hadamard.cpp``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mmm.ops._autograd import call_op

_MAX_LENGTH = 1 << 19


@torch.library.register_fake("mmm::hadamard_transform")
def _hadamard_fake(x, scale=1.0):
    if x.dim() < 1:
        raise RuntimeError("hadamard_transform: x must have at least one dimension, got a 0-dim tensor")
    if x.shape[-1] < 1:
        raise RuntimeError(f"hadamard_transform: the last dimension of x must be >= 1, got x of shape {tuple(x.shape)}")
    if x.shape[-1] > _MAX_LENGTH:
        raise RuntimeError(f"hadamard_transform: the last dimension of x may be at most {_MAX_LENGTH}, got {x.shape[-1]}")
    return x.new_empty(x.shape)


def _setup(ctx, inputs, output):
    ctx.scale = inputs[1]


def _backward(ctx, grad):
    # y = scale * S H P x with H symmetric: dx = scale * S H P dy, the same transform.
    return call_op(torch.ops.mmm.hadamard_transform, grad, ctx.scale), None


torch.library.register_autograd("mmm::hadamard_transform", _backward, setup_context=_setup)


def hadamard_transform(x: Tensor, scale: float = 1.0) -> Tensor:
    """``scale * H · x`` along the last dimension: the fast Walsh-Hadamard transform.

    ``H`` is the Sylvester-ordered Hadamard matrix (``H_1 = [1]``, ``H_2k = [[H_k, H_k],
    [H_k, -H_k]]``, the order of ``scipy.linalg.hadamard``). A length ``n`` that is not a power
    of two is zero-padded to the next power of two ``m`` and the result truncated back to ``n``:
    ``y = scale * (H_m @ pad(x, m))[..., :n]`` (as Dao's fast-hadamard-transform); nothing
    padded is stored. ``scale=1/sqrt(m)`` makes it orthonormal (then it is its own inverse for
    powers of two).

    x: ``(..., n)`` in float32, float16 or bfloat16 (float64 on the CPU), ``1 <= n <= 524288``;
    arithmetic in fp32 (fp64). Differentiable: the gradient is the same transform.
    """
    return call_op(torch.ops.mmm.hadamard_transform, x, scale)


def selftest(device: str) -> float:
    """Against a dense Sylvester matrix, forward and backward, a power of two and a padded
    length; returns the worst relative error."""
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for n in (1024, 1000):
        m = 1 << (n - 1).bit_length()
        h = torch.ones(1, 1, dtype=torch.float64)
        while h.shape[0] < m:
            h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
        x = torch.randn(7, n, generator=g, dtype=torch.float64).to(device, torch.float32).requires_grad_()
        y = hadamard_transform(x, 0.5)
        dy = torch.randn(7, n, generator=g).to(device)
        (dx,) = torch.autograd.grad(y, x, dy)
        hn = h[:n, :n].to(device)  # (H_m pad(x))[:n] only sees H's top-left n x n block
        ref = 0.5 * x.detach().double() @ hn.T
        ref_dx = 0.5 * dy.double() @ hn
        for got, want in ((y, ref), (dx, ref_dx)):
            err = ((got.double() - want).norm() / want.norm()).item()
            worst = max(worst, err)
            assert err < 1e-5, f"hadamard_transform selftest on {device} (n={n}): relative error {err:.2e}"
    return worst
