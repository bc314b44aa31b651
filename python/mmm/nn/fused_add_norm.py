"""FusedAddNorm: a drop-in for nn.LayerNorm / nn.RMSNorm with a fused residual add, dropout and
activation."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from mmm.ops.fused_add_norm import fused_add_norm


class FusedAddNorm(nn.Module):
    """``act(norm(dropout(x) + residual) * weight + bias)`` over the trailing ``normalized_shape``.

    Parameters are named and shaped as in ``nn.LayerNorm`` (``rms=False``) and ``nn.RMSNorm``
    (``rms=True``), so their state dicts load unchanged. ``bias=None`` means "as the module it
    replaces": a bias for LayerNorm, none for RMSNorm. ``eps=None`` means 1e-5 for LayerNorm and
    ``torch.finfo(torch.float32).eps`` (float64 for float64 input) for RMSNorm, the defaults of
    those modules. Dropout applies in
    training mode only. ``forward(x, residual=None)`` returns ``out``, or ``(out, residual_out)``
    when ``prenorm``.
    """

    def __init__(
        self,
        normalized_shape: Union[int, Sequence[int]],
        eps: Optional[float] = None,
        elementwise_affine: bool = True,
        bias: Optional[bool] = None,
        *,
        rms: bool = False,
        activation: str = "none",
        dropout_p: float = 0.0,
        prenorm: bool = False,
        residual_in_fp32: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.rms = rms
        self.activation = activation
        self.dropout_p = dropout_p
        self.prenorm = prenorm
        self.residual_in_fp32 = residual_in_fp32
        has_bias = (not rms) if bias is None else bias
        factory = dict(device=device, dtype=dtype)
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(self.normalized_shape, **factory))
            self.bias = nn.Parameter(torch.zeros(self.normalized_shape, **factory)) if has_bias else None
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Tensor, residual: Optional[Tensor] = None):
        k = len(self.normalized_shape)
        if tuple(x.shape[x.dim() - k:]) != self.normalized_shape:
            raise RuntimeError(
                f"FusedAddNorm: expected input with trailing shape {self.normalized_shape}, got {tuple(x.shape)}"
            )
        n = math.prod(self.normalized_shape)
        lead = x.shape[: x.dim() - k]
        flat = lambda t: t if t is None or k == 1 else t.reshape(*lead, n)  # noqa: E731
        eps = self.eps
        if eps is None:
            # nn.RMSNorm's default: the machine epsilon of its compute type (fp32, or fp64).
            compute = torch.float64 if x.dtype == torch.float64 else torch.float32
            eps = torch.finfo(compute).eps if self.rms else 1e-5
        result = fused_add_norm(
            flat(x),
            None if self.weight is None else self.weight.reshape(n),
            None if self.bias is None else self.bias.reshape(n),
            flat(residual),
            eps=eps,
            rms=self.rms,
            activation=self.activation,
            dropout_p=self.dropout_p if self.training else 0.0,
            prenorm=self.prenorm,
            residual_in_fp32=self.residual_in_fp32,
        )
        if k == 1:
            return result
        if self.prenorm:
            return result[0].reshape(x.shape), result[1].reshape(x.shape)
        return result.reshape(x.shape)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
            f"rms={self.rms}, activation={self.activation!r}, dropout_p={self.dropout_p}, prenorm={self.prenorm}"
        )
