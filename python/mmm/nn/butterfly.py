"""ButterflyLinear: a learnable butterfly in place of a dense nn.Linear (torch_butterfly's Butterfly)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mmm.ops.butterfly import butterfly_multiply


class ButterflyLinear(nn.Module):
    """``y = B x + b`` with ``B`` a product of log2(n) butterfly factors (``nblocks`` times).

    Sizes follow torch_butterfly's ``Butterfly`` module: ``n = 2**ceil(log2(in_features))``, x is
    zero padded to n (implicitly, inside the kernel), and when ``out_features > n`` there are
    ``nstacks = ceil(out_features / n)`` independent butterflies, each fed the same padded input,
    whose outputs are concatenated; the first ``out_features`` outputs are kept. Weights:
    ``twiddle (nstacks, nblocks, log_n, n/2, 2, 2)`` (torch_butterfly's layout, so its weights load
    as they are) and ``bias (out_features,)``.

    Initialisation ("ortho", the default): every 2x2 block a random rotation times one common gain
    ``g**(1/(nblocks*log_n))``, so B is ``g`` times an orthogonal matrix and, for inputs with i.i.d.
    entries, ``Var(y) = g**2 * in/n * Var(x)``; ``g = sqrt(n / (3 in))`` makes that ``Var(x) / 3``,
    the output variance of ``nn.Linear``'s default (kaiming-uniform, a=sqrt(5)) weight. "randn":
    i.i.d. normal twiddles with the same expected gain. The bias is initialised as nn.Linear's.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, nblocks: int = 1,
                 increasing_stride: bool = True, init: str = "ortho", device=None, dtype=None):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"ButterflyLinear: in_features and out_features must be >= 1, got {in_features}, {out_features}")
        if init not in ("ortho", "randn"):
            raise ValueError(f"ButterflyLinear: init must be 'ortho' or 'randn', got {init!r}")
        self.in_features, self.out_features = in_features, out_features
        self.log_n = max(1, math.ceil(math.log2(in_features)))
        self.n = 1 << self.log_n
        self.nstacks = -(-out_features // self.n)
        self.nblocks = nblocks
        self.increasing_stride = increasing_stride
        self.init = init
        kw = {"device": device, "dtype": dtype}
        self.twiddle = nn.Parameter(torch.empty(self.nstacks, nblocks, self.log_n, self.n // 2, 2, 2, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        factors = self.nblocks * self.log_n
        gain = math.sqrt(self.n / (3.0 * self.in_features)) ** (1.0 / factors)
        shape = self.twiddle.shape[:-2]
        if self.init == "ortho":
            theta = torch.rand(shape, device=self.twiddle.device) * (2 * math.pi)
            c, s = torch.cos(theta), torch.sin(theta)
            rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
            self.twiddle.copy_(rot * gain)
        else:
            # Each output of a factor sums two products: E[y^2] = 2 * sigma^2 * E[x^2].
            self.twiddle.normal_(0.0, gain / math.sqrt(2.0))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            self.bias.uniform_(-bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise RuntimeError(f"ButterflyLinear: expected x's last dimension {self.in_features}, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, 1, self.in_features)
        if self.nstacks > 1:
            x2 = x2.expand(-1, self.nstacks, self.in_features)
        y = butterfly_multiply(x2, self.twiddle, self.increasing_stride)  # (rows, nstacks, n)
        y = y.reshape(-1, self.nstacks * self.n)
        if self.nstacks * self.n != self.out_features:
            y = y[:, : self.out_features]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"n={self.n}, nstacks={self.nstacks}, nblocks={self.nblocks}, increasing_stride={self.increasing_stride}")
