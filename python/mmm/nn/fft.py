"""FNet token mixing (Lee-Thorp et al., 2021) on mmm's FFTs."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from mmm.ops.fft import MAX_LENGTH, fft


def _fft_along(x: Tensor, dim: int) -> Tensor:
    """A complex FFT along `dim`: mmm.fft when that length is a power of two it supports, else
    torch.fft.fft (mmm.fft supports powers of two only)."""
    n = x.shape[dim]
    if n >= 1 and n & (n - 1) == 0 and n <= MAX_LENGTH and x.dtype in (torch.complex64, torch.complex128):
        return fft(x.movedim(dim, -1)).movedim(-1, dim)
    return torch.fft.fft(x, dim=dim)


class FNetMixing(nn.Module):
    """FNet's parameter-free token mixing: ``y = Re(FFT_seq(FFT_hidden(x)))``, the real part of a
    2-D DFT over the sequence and hidden dimensions (``torch.fft.fft2(x).real``).

    x: ``(B, S, D)`` (any leading dims; the last two are sequence and hidden), float32 (float64
    on the CPU). Along each of the two dims it uses :func:`mmm.fft` when the length is a power of
    two (<= 131072) and ``torch.fft.fft`` otherwise, since mmm.fft supports powers of two only.
    Returns x's shape and dtype; differentiable.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2:
            raise RuntimeError(f"FNetMixing: x must be (..., S, D), got shape {tuple(x.shape)}")
        cdtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
        h = _fft_along(x.to(cdtype), -1)
        return _fft_along(h, -2).real.to(x.dtype)
