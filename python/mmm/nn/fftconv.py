"""FFTConv: a Hyena-style long-convolution layer with a learnable kernel, on mmm.fftconv."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from mmm.ops.fftconv import fftconv


class FFTConv(nn.Module):
    """Per-channel causal convolution with a learnable kernel as long as the sequence, plus a
    per-channel skip, with Hyena's optional gates::

        y = postgate * (causal_conv(pregate * u, kernel[:, :N]) + bias[:, None] * u)

    Parameters:
        kernel: ``(channels, seqlen)``. Init: a decaying random kernel (an explicit version of
            Hyena's exponentially modulated filter): ``kernel[h, t] = w[h, t] * exp(-t * ln(100) /
            ell_h)``, with ``w ~ N(0, 1)`` and the decay lengths ``ell_h`` log-spaced from
            ``min(4, seqlen)`` to ``seqlen`` over the channels (so channel h has decayed to 1% at
            ``t = ell_h``: some channels look locally, some across the whole sequence); each row
            is then scaled to unit L2 norm, so for white noise input the convolution keeps the
            input's variance.
        bias: ``(channels,)``, Hyena's ``D`` (skip) term; multiplies the raw u. Init: zeros, so
            the layer starts as a pure convolution and learns how much of u to pass through.

    ``forward(u, pregate=None, postgate=None)``: u is ``(B, channels, N)`` with ``N <= seqlen``
    (shorter sequences use the first N taps, which is exactly what a causal convolution of length
    N can see); gates, if given, have u's shape and dtype. Returns u's shape and dtype. The
    kernel and bias may stay float32 under float16/bfloat16 activations (fp32 arithmetic inside).
    """

    def __init__(self, channels: int, seqlen: int, *, device=None, dtype=None):
        super().__init__()
        if channels < 1 or seqlen < 1:
            raise ValueError(f"FFTConv: channels and seqlen must be >= 1, got {channels} and {seqlen}")
        self.channels = channels
        self.seqlen = seqlen
        factory = dict(device=device, dtype=dtype)
        self.kernel = nn.Parameter(torch.empty(channels, seqlen, **factory))
        self.bias = nn.Parameter(torch.empty(channels, **factory))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        c, n = self.channels, self.seqlen
        lo = math.log(min(4.0, n))
        ell = torch.exp(torch.linspace(lo, math.log(n), c, dtype=torch.float64)) if c > 1 else torch.tensor(
            [float(n)], dtype=torch.float64)
        t = torch.arange(n, dtype=torch.float64)
        decay = torch.exp(-t[None, :] * math.log(100.0) / ell[:, None])
        w = torch.randn(c, n, dtype=torch.float64, device="cpu") * decay
        w /= w.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.kernel.copy_(w)
        self.bias.zero_()

    def forward(self, u: Tensor, pregate: Optional[Tensor] = None, postgate: Optional[Tensor] = None) -> Tensor:
        if u.dim() != 3 or u.shape[1] != self.channels:
            raise RuntimeError(f"FFTConv: expected u of shape (B, {self.channels}, N), got {tuple(u.shape)}")
        n = u.shape[2]
        if n > self.seqlen:
            raise RuntimeError(f"FFTConv: sequence length {n} exceeds the kernel length seqlen={self.seqlen}")
        return fftconv(u, self.kernel[:, :n], self.bias, pregate, postgate)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, seqlen={self.seqlen}"
