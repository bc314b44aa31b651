"""FusedAttention: a module around mmm.fused_attention (FlashAttention-style exact attention)."""
from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor, nn

from mmm.ops.attention import fused_attention


class FusedAttention(nn.Module):
    """``softmax(q·kᵀ·scale + mask) · v`` with the masks fixed at construction.

    ``forward(q, k, v)`` takes ``q`` (B, Hq, Sq, D) and ``k``, ``v`` (B, Hkv, Sk, D) with ``Hq`` a
    multiple of ``Hkv`` (the layout of ``scaled_dot_product_attention``) and returns ``out`` like
    ``q``. ``causal`` (bottom-right aligned when Sq != Sk), ``window=(left, right)`` (-1:
    unbounded), ``scale`` (None: 1/sqrt(D)) and ``deterministic`` (the backward's mode; None:
    torch's deterministic-algorithms setting) are those of :func:`mmm.fused_attention`. No
    parameters: it replaces the attention call inside an attention layer, not the projections.
    """

    def __init__(self, causal: bool = False, window: Tuple[int, int] = (-1, -1), scale: Optional[float] = None,
                 deterministic: Optional[bool] = None):
        super().__init__()
        self.deterministic = deterministic
        self.causal = bool(causal)
        left, right = window
        self.window = (int(left), int(right))
        self.scale = scale

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return fused_attention(q, k, v, causal=self.causal, scale=self.scale, window=self.window,
                               deterministic=self.deterministic)

    def extra_repr(self) -> str:
        return f"causal={self.causal}, window={self.window}, scale={self.scale}, deterministic={self.deterministic}"
