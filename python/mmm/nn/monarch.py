"""Structured stand-ins for ``nn.Linear``: block-diagonal, Monarch and low-rank + block-diagonal
layers, the projection of a dense weight onto a Monarch matrix, and :func:`replace_linear`, which
swaps a model's ``nn.Linear`` layers for them in place.

All three layers compute their structured product with mmm ops (``mmm.block_diag_matmul``,
``mmm.monarch_matmul``); their parameters use ``nn.Linear``'s (out, in) convention per block and
the default initialisation of BlockDiagLinear and MonarchLinear gives activations of
``nn.Linear``'s variance, and LowRankBlockDiagLinear starts as the identity (derived in each
class's docstring). Under ``torch.autocast`` they cast input and parameters to the autocast dtype,
as autocast does for ``nn.Linear``.

Parameter counts at a glance (features 4096 -> 4096, with bias; dense ``nn.Linear``: 16,781,312):

=====================================================  ============  ==============
layer                                                  parameters    vs dense
=====================================================  ============  ==============
``MonarchLinear(4096, 4096)`` (nblocks 64)             528,384       96.9 % fewer
``BlockDiagLinear(4096, 4096, nblocks=16)``            1,052,672     93.7 % fewer
``LowRankBlockDiagLinear(4096, rank=64, nblocks=16)``  1,576,960     90.6 % fewer
=====================================================  ============  ==============
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mmm  # the ops are looked up at call time (mmm.block_diag_matmul, mmm.monarch_matmul)

__all__ = [
    "BlockDiagLinear",
    "MonarchLinear",
    "LowRankBlockDiagLinear",
    "monarch_from_dense",
    "replace_linear",
    "default_monarch_nblocks",
]


def _uniform_(t: Tensor, var: float) -> Tensor:
    """Fill ``t`` from U(-a, a) with variance ``var`` (a = sqrt(3 var))."""
    bound = math.sqrt(3.0 * var)
    with torch.no_grad():
        return t.uniform_(-bound, bound)


def _init_linear_bias_(bias: Optional[Tensor], fan_in: int) -> None:
    """nn.Linear's bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    if bias is not None:
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        with torch.no_grad():
            bias.uniform_(-bound, bound)


def _autocast(x: Tensor, *params: Optional[Tensor]):
    """Under torch.autocast, cast the input and parameters to the autocast dtype, as autocast does
    for nn.Linear (the mmm ops take one dtype for x and the weights and have no autocast rule)."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        if x.is_floating_point() and dt != x.dtype or any(p is not None and p.dtype != dt for p in params):
            return (x.to(dt),) + tuple(None if p is None else p.to(dt) for p in params)
    return (x,) + params


def _divisors(n: int) -> List[int]:
    small, large = [], []
    d = 1
    while d * d <= n:
        if n % d == 0:
            small.append(d)
            if d * d != n:
                large.append(n // d)
        d += 1
    return small + large[::-1]


def default_monarch_nblocks(in_features: int, out_features: int) -> int:
    """The number of blocks :class:`MonarchLinear` uses when none is given.

    The target is ``sqrt(max(in, out))`` (the square-root block count of the Monarch paper, where
    both factors have ``sqrt(n)`` blocks of ``sqrt(n) x sqrt(n)``). Among the divisors of
    ``gcd(in, out)`` within a factor of 2 of the target, the one closest to it on a log scale is
    taken (ties go to the smaller, cheaper one: a Monarch layer has ``nblocks * (in + out)``
    weights), so no padding is needed. When there is none, ``round(target)`` clamped to
    ``[1, min(in, out)]`` is taken and the layer pads (see :class:`MonarchLinear`).

    Examples: 1024 x 1024 -> 32; 768 x 768 -> 24; 768 x 3072 -> 48; 4096 x 11008 -> 128;
    64 x 128 -> 8; 97 x 97 -> 10 (padded to 100).
    """
    if in_features < 1 or out_features < 1:
        raise ValueError(f"MonarchLinear: in_features and out_features must be >= 1, got {in_features}, {out_features}")
    target = math.sqrt(max(in_features, out_features))
    g = math.gcd(in_features, out_features)
    cands = [d for d in _divisors(g) if target / 2 <= d <= 2 * target]
    if cands:
        return min(cands, key=lambda d: (round(abs(math.log(d / target)), 9), d))
    return max(1, min(round(target), in_features, out_features))


# ---------------------------------------------------------------------------------------------
# BlockDiagLinear
# ---------------------------------------------------------------------------------------------
class BlockDiagLinear(nn.Module):
    """``y = block_diag(W_0, ..., W_{nb-1}) x + bias``: ``nblocks`` independent ``nn.Linear`` maps,
    block ``b`` taking input features ``[b*k, (b+1)*k)`` to output features ``[b*n, (b+1)*n)``
    (``k = in_features / nblocks``, ``n = out_features / nblocks``).

    Parameters: ``weight`` of shape ``(nblocks, n, k)`` (block ``b`` is ``weight[b]``, in
    ``nn.Linear``'s (out, in) convention) and ``bias`` of shape ``(out_features,)``. Both feature
    counts must be divisible by ``nblocks``.

    Initialisation: every block as an ``nn.Linear(k, n)`` would be (U(+-1/sqrt(k)), variance
    1/(3k)), so each output, a sum over k inputs, has variance ``k * 1/(3k) = 1/3`` for
    unit-variance input: the same as ``nn.Linear(in, out)``'s ``in * 1/(3 in)``. The bias is
    ``nn.Linear(in, out)``'s: U(+-1/sqrt(in_features)).

    Example::

        >>> layer = BlockDiagLinear(4096, 4096, nblocks=16)
        >>> sum(p.numel() for p in layer.parameters())  # dense: 16,781,312
        1052672
    """

    def __init__(self, in_features: int, out_features: int, nblocks: int, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        if nblocks < 1:
            raise ValueError(f"BlockDiagLinear: nblocks must be >= 1, got {nblocks}")
        if in_features % nblocks or out_features % nblocks:
            raise ValueError(
                f"BlockDiagLinear: in_features ({in_features}) and out_features ({out_features}) must both be "
                f"divisible by nblocks ({nblocks})"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.nblocks = nblocks
        factory = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(
            torch.empty(nblocks, out_features // nblocks, in_features // nblocks, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        k = self.in_features // self.nblocks
        _uniform_(self.weight, 1.0 / (3.0 * k))
        _init_linear_bias_(self.bias, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        x, weight, bias = _autocast(x, self.weight, self.bias)
        y = mmm.block_diag_matmul(x, weight)
        return y if bias is None else y + bias

    def to_dense(self) -> Tensor:
        """The (out_features, in_features) dense weight (block diagonal), without the bias."""
        return torch.block_diag(*self.weight.unbind(0))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, nblocks={self.nblocks}, "
                f"bias={self.bias is not None}")


# ---------------------------------------------------------------------------------------------
# MonarchLinear
# ---------------------------------------------------------------------------------------------
class MonarchLinear(nn.Module):
    """A Monarch matrix ``M = P_2 R P_1 L`` (two block-diagonal factors with a transpose between and
    after them) in place of a dense ``nn.Linear`` weight: ``y = M x + bias``, computed with
    ``mmm.monarch_matmul`` (HazyResearch/fly's ``blockdiag_butterfly_multiply``).

    With ``nb = nblocks``, ``in_ext``/``out_ext`` the feature counts rounded up to multiples of
    ``nb``, ``p = in_ext / nb`` and ``s = out_ext / nb``, the parameters are

    * ``w1`` of shape ``(nb, nb, p)``: ``nb`` blocks mapping ``p`` inputs to ``nb`` outputs,
    * ``w2`` of shape ``(nb, s, nb)``: ``nb`` blocks mapping ``nb`` inputs to ``s`` outputs,
    * ``bias`` of shape ``(out_features,)``,

    ``nb * (in_ext + out_ext)`` weights in all, and the dense weight they stand for is

        ``M[t*nb + j, i*p + c] = w2[j, t, i] * w1[i, j, c]``

    (output ``t*nb + j``, input ``i*p + c``), which :meth:`to_dense` materialises.

    Sizes that ``nb`` does not divide are handled as in fly: ``x`` is padded with zeros to
    ``in_ext`` features and the output is truncated to its first ``out_features``, so the layer is
    the top-left ``(out, in)`` corner of an ``(out_ext, in_ext)`` Monarch matrix. ``nblocks=None``
    picks :func:`default_monarch_nblocks` (about ``sqrt(max(in, out))``, preferring a divisor of
    both sizes so there is no padding).

    Initialisation: an output is ``y_{tj} = sum_i w2[j,t,i] h_{ij}`` with
    ``h_{ij} = sum_c w1[i,j,c] x_{ic}``; for independent zero-mean weights and unit-variance
    inputs ``Var(y) = Var(w2) * Var(w1) * in_features`` (every real input contributes once; padded
    ones contribute nothing). ``w1`` is drawn with variance ``1/p`` (the intermediate ``h`` keeps the
    input's variance) and ``w2`` with variance ``p / (3 in_features)`` (``= 1/(3 nb)`` when there is
    no padding: each ``w2`` block initialised as an ``nn.Linear(nb, s)``), so ``Var(y) = 1/3``,
    ``nn.Linear(in, out)``'s output variance. Both are uniform. The bias is ``nn.Linear``'s,
    U(+-1/sqrt(in_features)).

    Example::

        >>> layer = MonarchLinear(4096, 4096)  # nblocks 64: w1 (64, 64, 64), w2 (64, 64, 64)
        >>> sum(p.numel() for p in layer.parameters())  # dense: 16,781,312
        528384
    """

    def __init__(self, in_features: int, out_features: int, nblocks: Optional[int] = None, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        if nblocks is None:
            nblocks = default_monarch_nblocks(in_features, out_features)
        if in_features < 1 or out_features < 1:
            raise ValueError(f"MonarchLinear: in_features and out_features must be >= 1, got {in_features}, {out_features}")
        if nblocks < 1:
            raise ValueError(f"MonarchLinear: nblocks must be >= 1, got {nblocks}")
        self.in_features = in_features
        self.out_features = out_features
        self.nblocks = nb = nblocks
        p = -(-in_features // nb)
        s = -(-out_features // nb)
        self.in_ext, self.out_ext = p * nb, s * nb
        factory = dict(device=device, dtype=dtype)
        self.w1 = nn.Parameter(torch.empty(nb, nb, p, **factory))
        self.w2 = nn.Parameter(torch.empty(nb, s, nb, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        p = self.w1.shape[-1]
        _uniform_(self.w1, 1.0 / p)
        _uniform_(self.w2, p / (3.0 * self.in_features))
        _init_linear_bias_(self.bias, self.in_features)

    def _monarch(self, x: Tensor, w1: Tensor, w2: Tensor) -> Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise RuntimeError(
                f"MonarchLinear: expected input with last dimension {self.in_features}, got shape {tuple(x.shape)}")
        if self.in_ext != self.in_features:
            x = F.pad(x, (0, self.in_ext - self.in_features))
        y = mmm.monarch_matmul(x, w1, w2)
        if self.out_ext != self.out_features:
            y = y[..., : self.out_features]
        return y

    def forward(self, x: Tensor) -> Tensor:
        x, w1, w2, bias = _autocast(x, self.w1, self.w2, self.bias)
        y = self._monarch(x, w1, w2)
        return y if bias is None else y + bias

    def to_dense(self) -> Tensor:
        """The (out_features, in_features) dense weight ``M`` (without the bias): the layer applied
        to the identity. Differentiable in ``w1``, ``w2``."""
        eye = torch.eye(self.in_features, device=self.w1.device, dtype=self.w1.dtype)
        return self._monarch(eye, self.w1, self.w2).transpose(0, 1)

    def extra_repr(self) -> str:
        pad = "" if (self.in_ext, self.out_ext) == (self.in_features, self.out_features) else \
            f", padded to ({self.in_ext}, {self.out_ext})"
        return (f"in_features={self.in_features}, out_features={self.out_features}, nblocks={self.nblocks}, "
                f"bias={self.bias is not None}{pad}")


# ---------------------------------------------------------------------------------------------
# LowRankBlockDiagLinear
# ---------------------------------------------------------------------------------------------
class LowRankBlockDiagLinear(nn.Module):
    """``y = x @ V @ U.T + block_diag(B) x + x + bias``: a square (``features -> features``) layer
    that is the identity plus a rank-``rank`` correction (``U V^T``, for "broadcast" mixing across
    all features) plus a block-diagonal one (``nblocks`` blocks of ``f/nb x f/nb``, for "local"
    mixing), the structure practitioners report working in place of dense projections.

    Parameters: ``U`` and ``V`` of shape ``(features, rank)``, ``B`` of shape
    ``(nblocks, features/nblocks, features/nblocks)`` (``nn.Linear``'s (out, in) convention per
    block, as in :class:`BlockDiagLinear`), ``bias`` of shape ``(features,)``. The dense weight it
    stands for is ``I + U V^T + block_diag(B)`` (see :meth:`to_dense`).

    Initialisation: the layer starts as the identity plus ``nn.Linear``'s bias. ``U`` and ``B`` are
    zero, ``V`` is drawn as ``nn.Linear(features, rank).weight.T`` (U(+-1/sqrt(features))); this is
    the LoRA convention (the correction starts at zero and the zero factor is the one applied last),
    and the residual keeps the input's variance, so the output variance for unit-variance input is
    ``1 + 1/(3 features)`` (the identity plus the bias), not ``nn.Linear``'s 1/3: the layer is meant
    as a residual-style replacement (use ``replace_linear(..., kind="lowrank", project=True)`` to
    start from a trained dense weight). ``B`` and ``U`` get gradients from the first step; ``V``'s
    gradient is ``U``-weighted, so it is zero on the very first step and nonzero afterwards.

    Example (``features=4096, rank=64, nblocks=16``)::

        >>> layer = LowRankBlockDiagLinear(4096, rank=64, nblocks=16)
        >>> sum(p.numel() for p in layer.parameters())
        1576960

    that is ``2*4096*64 + 4096*4096/16 + 4096 = 524,288 + 1,048,576 + 4,096``, against
    16,781,312 for ``nn.Linear(4096, 4096)``: 90.6 % fewer.
    """

    def __init__(self, features: int, rank: int, nblocks: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        if features < 1:
            raise ValueError(f"LowRankBlockDiagLinear: features must be >= 1, got {features}")
        if not 0 <= rank <= features:
            raise ValueError(f"LowRankBlockDiagLinear: rank must be in [0, features={features}], got {rank}")
        if nblocks < 1 or features % nblocks:
            raise ValueError(
                f"LowRankBlockDiagLinear: features ({features}) must be divisible by nblocks ({nblocks}), and nblocks >= 1")
        self.features = self.in_features = self.out_features = features
        self.rank = rank
        self.nblocks = nblocks
        factory = dict(device=device, dtype=dtype)
        n = features // nblocks
        self.U = nn.Parameter(torch.empty(features, rank, **factory))
        self.V = nn.Parameter(torch.empty(features, rank, **factory))
        self.B = nn.Parameter(torch.empty(nblocks, n, n, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(features, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.U.zero_()
            self.B.zero_()
        _uniform_(self.V, 1.0 / (3.0 * self.features))
        _init_linear_bias_(self.bias, self.features)

    def forward(self, x: Tensor) -> Tensor:
        x, b, u, v, bias = _autocast(x, self.B, self.U, self.V, self.bias)
        y = mmm.block_diag_matmul(x, b) + x
        if self.rank > 0:
            y = y + (x @ v) @ u.transpose(0, 1)
        return y if bias is None else y + bias

    def to_dense(self) -> Tensor:
        """The (features, features) dense weight ``I + U V^T + block_diag(B)``, without the bias."""
        eye = torch.eye(self.features, device=self.B.device, dtype=self.B.dtype)
        return eye + self.U @ self.V.transpose(0, 1) + torch.block_diag(*self.B.unbind(0))

    def extra_repr(self) -> str:
        return f"features={self.features}, rank={self.rank}, nblocks={self.nblocks}, bias={self.bias is not None}"


# ---------------------------------------------------------------------------------------------
# Projections of a dense weight
# ---------------------------------------------------------------------------------------------
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # torch.linalg.svd takes fp32/fp64 only; half-precision weights are projected in fp32.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _monarch_factors(weight: Tensor, nblocks: int):
    """(w1, w2) of the Monarch matrix closest in Frobenius norm to ``weight`` (out, in).

    With ``l = k = nb``, ``M[t*nb + j, i*p + c] = w2[j,t,i] * w1[i,j,c]``: the entries of ``M`` split
    into ``nb * nb`` disjoint (s x p) submatrices ``A_ji = M[j::nb, i*p:(i+1)*p]``, each the outer
    product ``w2[j,:,i] w1[i,j,:]^T`` of parameters no other submatrix uses. So the closest Monarch
    matrix is, independently for every (j, i), the best rank-one approximation of ``W``'s submatrix
    (Eckart-Young: the top singular triple), split evenly as ``sqrt(sigma) u`` and
    ``sqrt(sigma) v``. ``W`` is zero-padded to (out_ext, in_ext); the padding forms whole rows and
    columns of each submatrix, and appending zero rows/columns does not change a matrix's best
    rank-one approximation, so the result is also optimal for the (out, in) corner the layer uses.
    """
    out_f, in_f = weight.shape
    nb = nblocks
    p, s = -(-in_f // nb), -(-out_f // nb)
    w = weight.detach().to(_compute_dtype(weight.dtype))
    if (s * nb, p * nb) != (out_f, in_f):
        w = F.pad(w, (0, p * nb - in_f, 0, s * nb - out_f))
    # rows t*nb + j, columns i*p + c  ->  A[j, i, t, c]
    a = w.reshape(s, nb, nb, p).permute(1, 2, 0, 3)
    u, sig, vh = torch.linalg.svd(a, full_matrices=False)  # batched over the (nb, nb) blocks
    root = sig[..., 0].clamp_min(0).sqrt().unsqueeze(-1)  # (nb, nb, 1)
    left = u[..., :, 0] * root  # (j, i, t)
    right = vh[..., 0, :] * root  # (j, i, c)
    w2 = left.permute(0, 2, 1)  # (j, t, i) = (nb, s, nb)
    w1 = right.permute(1, 0, 2)  # (i, j, c) = (nb, nb, p)
    return w1, w2


def monarch_from_dense(linear: nn.Linear, nblocks: Optional[int] = None) -> MonarchLinear:
    """The :class:`MonarchLinear` whose weight is the Monarch matrix closest (Frobenius norm) to
    ``linear.weight``, with ``linear``'s bias copied, on its device and dtype.

    Works for rectangular weights and any ``nblocks`` (default :func:`default_monarch_nblocks`);
    sizes ``nblocks`` does not divide are zero-padded as in :class:`MonarchLinear`. The projection
    is exact: each of the ``nblocks**2`` rank-one submatrices of a Monarch matrix (see
    :class:`MonarchLinear`) is fitted by the top singular triple of the matching submatrix of the
    weight, all in one batched ``torch.linalg.svd`` (in fp32, or fp64 for fp64 weights). A weight
    that already is Monarch with the same ``nblocks`` is recovered to round-off.
    """
    weight = linear.weight
    out_f, in_f = weight.shape
    m = MonarchLinear(in_f, out_f, nblocks, bias=linear.bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        w1, w2 = _monarch_factors(weight, m.nblocks)
        m.w1.copy_(w1)
        m.w2.copy_(w2)
        if linear.bias is not None:
            m.bias.copy_(linear.bias)
    m.train(linear.training)
    return m


def _diag_blocks(weight: Tensor, nblocks: int) -> Tensor:
    """The (nblocks, out/nb, in/nb) diagonal blocks of ``weight`` (out, in): the block-diagonal
    matrix closest to it in Frobenius norm."""
    out_f, in_f = weight.shape
    n, k = out_f // nblocks, in_f // nblocks
    return torch.diagonal(weight.reshape(nblocks, n, nblocks, k), dim1=0, dim2=2).permute(2, 0, 1)


def _blockdiag_from_dense(linear: nn.Linear, nblocks: int) -> BlockDiagLinear:
    weight = linear.weight
    out_f, in_f = weight.shape
    m = BlockDiagLinear(in_f, out_f, nblocks, bias=linear.bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        m.weight.copy_(_diag_blocks(weight.detach(), nblocks))
        if linear.bias is not None:
            m.bias.copy_(linear.bias)
    return m


def _lowrank_from_dense(linear: nn.Linear, rank: int, nblocks: int) -> LowRankBlockDiagLinear:
    """Fit ``W ~ I + U V^T + block_diag(B)`` by one round of alternating exact minimisation of the
    Frobenius error: ``B`` = diagonal blocks of ``W - I``; ``U V^T`` = best rank-``rank``
    approximation (truncated SVD, split as ``sqrt(S)`` on each side) of ``W - I - block_diag(B)``;
    then ``B`` refitted to the diagonal blocks of ``W - I - U V^T``. Each step minimises the error
    given the other term, so the result is never worse than the block-diagonal projection alone."""
    weight = linear.weight
    f = weight.shape[0]
    m = LowRankBlockDiagLinear(f, rank, nblocks, bias=linear.bias is not None, device=weight.device,
                               dtype=weight.dtype)
    with torch.no_grad():
        r = weight.detach().to(_compute_dtype(weight.dtype))
        r = r - torch.eye(f, device=r.device, dtype=r.dtype)
        b = _diag_blocks(r, nblocks)
        if rank > 0:
            pu, sig, qh = torch.linalg.svd(r - torch.block_diag(*b.unbind(0)), full_matrices=False)
            root = sig[:rank].sqrt()
            u = pu[:, :rank] * root
            v = qh[:rank].transpose(0, 1) * root
            b = _diag_blocks(r - u @ v.transpose(0, 1), nblocks)
            m.U.copy_(u)
            m.V.copy_(v)
        m.B.copy_(b)
        if linear.bias is not None:
            m.bias.copy_(linear.bias)
    return m


# ---------------------------------------------------------------------------------------------
# replace_linear
# ---------------------------------------------------------------------------------------------
_KINDS = ("monarch", "blockdiag", "lowrank")


def _incompatible(kind: str, in_f: int, out_f: int, kw: dict) -> Optional[str]:
    """Why a (out_f, in_f) nn.Linear cannot become ``kind`` with ``kw``, or None."""
    nb = kw.get("nblocks")
    if kind == "monarch":
        return None  # any shape: MonarchLinear pads
    if kind == "blockdiag":
        if in_f % nb or out_f % nb:
            return f"in_features={in_f} and out_features={out_f} must both be divisible by nblocks={nb}"
        return None
    if in_f != out_f:
        return f"lowrank needs a square layer (it adds the input back), got in_features={in_f}, out_features={out_f}"
    if in_f % nb:
        return f"features={in_f} is not divisible by nblocks={nb}"
    if kw["rank"] > in_f:
        return f"rank={kw['rank']} exceeds features={in_f}"
    return None


def replace_linear(
    model: nn.Module,
    predicate: Callable[[str, nn.Module], bool] = lambda name, module: True,
    kind: str = "monarch",
    project: bool = True,
    **kw,
) -> Dict[str, object]:
    """Swap ``model``'s ``nn.Linear`` layers (those for which ``predicate(name, module)`` is true) for
    structured layers, in place.

    ``kind``:

    * ``"monarch"`` -> :class:`MonarchLinear` (``nblocks`` optional, default per layer from
      :func:`default_monarch_nblocks`; any shape, padded when needed);
    * ``"blockdiag"`` -> :class:`BlockDiagLinear` (``nblocks`` required; both sizes divisible by it);
    * ``"lowrank"`` -> :class:`LowRankBlockDiagLinear` (``rank`` and ``nblocks`` required; square
      layers only, size divisible by ``nblocks``).

    ``project=True`` starts each new layer from the dense one: monarch via :func:`monarch_from_dense`
    (the closest Monarch matrix); blockdiag takes ``W``'s diagonal blocks (the closest
    block-diagonal matrix); lowrank fits ``W ~ I + U V^T + block_diag(B)`` by one round of
    alternating exact minimisation (``B`` from the diagonal blocks of ``W - I``, ``U V^T`` the
    truncated SVD of the rest, ``B`` refitted). The bias is copied. ``project=False`` gives freshly
    initialised layers (bias included; whether there is a bias is kept). Either way the new layer
    has the old one's device, dtype and train/eval mode.

    Skipped, with the reason: layers whose shape the kind cannot take, the ``out_proj`` of an
    ``nn.MultiheadAttention`` (which reads ``out_proj.weight`` directly instead of calling it), and
    ``model`` itself when it is an ``nn.Linear`` (it cannot be replaced in place). Subclasses of
    ``nn.Linear`` are replaced like ``nn.Linear``. A layer registered under several names is
    replaced by one shared new layer everywhere.

    Returns ``{"replaced": [names], "skipped": {name: reason}, "params_before": int,
    "params_after": int}``, the counts being ``model``'s parameters (shared ones once) before and
    after.
    """
    if kind not in _KINDS:
        raise ValueError(f"replace_linear: kind must be one of {_KINDS}, got {kind!r}")
    unknown = set(kw) - {"nblocks", "rank"}
    if unknown:
        raise TypeError(f"replace_linear: unexpected keyword arguments {sorted(unknown)} (takes nblocks, rank)")
    if kind in ("blockdiag", "lowrank") and kw.get("nblocks") is None:
        raise ValueError(f"replace_linear: kind={kind!r} needs nblocks=")
    if kind == "lowrank" and kw.get("rank") is None:
        raise ValueError("replace_linear: kind='lowrank' needs rank=")

    params_before = sum(p.numel() for p in model.parameters())
    replaced: List[str] = []
    skipped: Dict[str, str] = {}
    new_for: Dict[int, nn.Module] = {}  # id(old) -> its replacement
    targets = []  # (parent, attribute, full name, old module)
    for parent_name, parent in list(model.named_modules(remove_duplicate=False)):
        for child_name, child in list(parent._modules.items()):
            if not isinstance(child, nn.Linear):
                continue
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if not predicate(name, child):
                continue
            if isinstance(parent, nn.MultiheadAttention) and child_name == "out_proj":
                skipped[name] = "nn.MultiheadAttention reads out_proj.weight directly; it cannot take a structured layer"
                continue
            targets.append((parent, child_name, name, child))
    if isinstance(model, nn.Linear) and predicate("", model):
        skipped[""] = "the root module cannot be replaced in place"

    for parent, child_name, name, old in targets:
        new = new_for.get(id(old))
        if new is None:
            out_f, in_f = old.weight.shape
            reason = _incompatible(kind, in_f, out_f, kw)
            if reason is not None:
                skipped[name] = reason
                continue
            factory = dict(device=old.weight.device, dtype=old.weight.dtype)
            has_bias = old.bias is not None
            if kind == "monarch":
                new = monarch_from_dense(old, kw.get("nblocks")) if project else \
                    MonarchLinear(in_f, out_f, kw.get("nblocks"), bias=has_bias, **factory)
            elif kind == "blockdiag":
                new = _blockdiag_from_dense(old, kw["nblocks"]) if project else \
                    BlockDiagLinear(in_f, out_f, kw["nblocks"], bias=has_bias, **factory)
            else:
                new = _lowrank_from_dense(old, kw["rank"], kw["nblocks"]) if project else \
                    LowRankBlockDiagLinear(in_f, kw["rank"], kw["nblocks"], bias=has_bias, **factory)
            new.train(old.training)
            new_for[id(old)] = new
        setattr(parent, child_name, new)
        replaced.append(name)

    params_after = sum(p.numel() for p in model.parameters())
    return {"replaced": replaced, "skipped": skipped, "params_before": params_before, "params_after": params_after}
