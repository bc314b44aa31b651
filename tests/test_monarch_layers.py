"""Tests for the structured layers of mmm.nn.monarch: BlockDiagLinear, MonarchLinear,
LowRankBlockDiagLinear, monarch_from_dense and replace_linear.

The ops underneath (mmm.block_diag_matmul, mmm.monarch_matmul) have their own tests; here every
layer is checked against the plainest PyTorch statement of what it computes (the references
below, and the dense weights the layers stand for), in float32 and float64, plus what a user of
the layers relies on: initial activation variance, state dicts, padding, the projection of dense
weights, and that a model with its nn.Linear layers replaced still trains.

Tests taking a `device` argument also run on CUDA (marked `cuda`, see conftest.py); on a machine
without a GPU they are collected and skipped.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from mmm.nn import (
    BlockDiagLinear,
    LowRankBlockDiagLinear,
    MonarchLinear,
    default_monarch_nblocks,
    monarch_from_dense,
    replace_linear,
)

F32, F64 = torch.float32, torch.float64
DTYPES = [pytest.param(F32, id="fp32"), pytest.param(F64, id="fp64")]
TOL = {F32: dict(rtol=1e-4, atol=2e-5), F64: dict(rtol=1e-10, atol=1e-12)}


# ---------------------------------------------------------------------------------------------
# plain-PyTorch references
# ---------------------------------------------------------------------------------------------
def ref_block_diag_matmul(x, w):
    """y[..., b*n:(b+1)*n] = x[..., b*k:(b+1)*k] @ w[b].T"""
    nb, n, k = w.shape
    lead = x.shape[:-1]
    y = torch.einsum("...bk,bnk->...bn", x.reshape(*lead, nb, k), w)
    return y.reshape(*lead, nb * n)


def ref_monarch_matmul(x, w1, w2):
    """HazyResearch/fly's blockdiag_butterfly_multiply, written out."""
    lead = x.shape[:-1]
    l, s, r = w2.shape
    out1 = ref_block_diag_matmul(x, w1)
    z = out1.reshape(*lead, r, l).transpose(-1, -2).reshape(*lead, l * r)
    out2 = ref_block_diag_matmul(z, w2)
    return out2.reshape(*lead, l, s).transpose(-1, -2).reshape(*lead, s * l)


def ref_monarch_dense(w1, w2, in_features, out_features):
    """M[t*nb + j, i*p + c] = w2[j, t, i] * w1[i, j, c], cut to (out, in)."""
    nb, s, _ = w2.shape
    p = w1.shape[-1]
    m = torch.einsum("jti,ijc->tjic", w2, w1).reshape(s * nb, nb * p)
    return m[:out_features, :in_features]


def ref_lowrank(x, layer):
    y = x @ layer.V @ layer.U.T + ref_block_diag_matmul(x, layer.B) + x
    return y if layer.bias is None else y + layer.bias


def randomize_(module, scale=1.0):
    """Give every parameter nonzero random values (the default inits zero some)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * scale / math.sqrt(max(1, p.shape[-1])))
    return module


def n_params(module):
    return sum(p.numel() for p in module.parameters())


# layer constructors used across tests: (name, factory(dtype, device))
LAYERS = {
    "blockdiag": lambda **f: BlockDiagLinear(48, 32, nblocks=4, **f),
    "monarch": lambda **f: MonarchLinear(48, 32, nblocks=4, **f),
    "monarch_padded": lambda **f: MonarchLinear(50, 29, nblocks=6, **f),
    "lowrank": lambda **f: LowRankBlockDiagLinear(48, rank=5, nblocks=4, **f),
}


def layer_reference(layer, x):
    if isinstance(layer, BlockDiagLinear):
        return ref_block_diag_matmul(x, layer.weight) + layer.bias
    if isinstance(layer, MonarchLinear):
        xp = torch.nn.functional.pad(x, (0, layer.in_ext - layer.in_features))
        return ref_monarch_matmul(xp, layer.w1, layer.w2)[..., : layer.out_features] + layer.bias
    return ref_lowrank(x, layer)


# ---------------------------------------------------------------------------------------------
# forward and backward against the references
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_matches_reference_and_gradients_flow(device, dtype, name):
    torch.manual_seed(0)
    layer = randomize_(LAYERS[name](device=device, dtype=dtype))
    x = torch.randn(3, 5, layer.in_features, device=device, dtype=dtype, requires_grad=True)
    y = layer(x)
    assert y.shape == (3, 5, layer.out_features) and y.dtype == dtype
    grad_out = torch.randn_like(y)
    y.backward(grad_out)
    got = {n: p.grad.clone() for n, p in layer.named_parameters()}
    got["x"] = x.grad.clone()

    layer.zero_grad()
    x.grad = None
    y_ref = layer_reference(layer, x)
    torch.testing.assert_close(y, y_ref, **TOL[dtype])
    y_ref.backward(grad_out)
    want = {n: p.grad for n, p in layer.named_parameters()}
    want["x"] = x.grad
    for n in want:
        assert got[n].abs().max() > 0, f"no gradient reached {n}"
        torch.testing.assert_close(got[n], want[n], **TOL[dtype], msg=f"gradient of {n}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "in_f, out_f, nb",
    [(64, 64, 8), (48, 96, 4), (96, 48, 4), (64, 64, 2), (64, 64, 16), (10, 7, 4), (50, 29, 6), (5, 13, 8), (1, 3, 1),
     (512, 256, 16), (256, 512, 16)],
)
def test_monarch_equals_its_dense_weight(device, dtype, in_f, out_f, nb):
    """y == x @ to_dense().T + bias, and to_dense() is M[t*nb+j, i*p+c] = w2[j,t,i] * w1[i,j,c]
    (rectangular, nblocks not sqrt(n), and sizes nblocks does not divide: padded in, truncated out;
    the last two take monarch_matmul's fused forward)."""
    torch.manual_seed(1)
    layer = MonarchLinear(in_f, out_f, nb, device=device, dtype=dtype)
    p, s = -(-in_f // nb), -(-out_f // nb)
    assert layer.w1.shape == (nb, nb, p) and layer.w2.shape == (nb, s, nb) and layer.bias.shape == (out_f,)
    assert (layer.in_ext, layer.out_ext) == (nb * p, nb * s)
    dense = layer.to_dense()
    assert dense.shape == (out_f, in_f)
    torch.testing.assert_close(dense, ref_monarch_dense(layer.w1, layer.w2, in_f, out_f), **TOL[dtype])
    x = torch.randn(7, in_f, device=device, dtype=dtype)
    torch.testing.assert_close(layer(x), x @ dense.T + layer.bias, **TOL[dtype])
    torch.testing.assert_close(layer(x[0]), layer(x)[0], **TOL[dtype])  # 1-D input


def test_blockdiag_and_lowrank_to_dense(device):
    torch.manual_seed(2)
    for layer in (randomize_(BlockDiagLinear(12, 20, 4, device=device, dtype=F64)),
                  randomize_(LowRankBlockDiagLinear(12, 3, 4, device=device, dtype=F64))):
        x = torch.randn(6, 12, device=device, dtype=F64)
        torch.testing.assert_close(layer(x), x @ layer.to_dense().T + layer.bias, **TOL[F64])


def test_no_bias(device):
    torch.manual_seed(3)
    x = torch.randn(4, 24, device=device)
    for layer in (BlockDiagLinear(24, 12, 3, bias=False, device=device),
                  MonarchLinear(24, 12, bias=False, device=device),
                  LowRankBlockDiagLinear(24, 2, 3, bias=False, device=device)):
        assert layer.bias is None and "bias" not in dict(layer.named_parameters())
        torch.testing.assert_close(layer(x), x @ layer.to_dense().T, **TOL[F32])


# ---------------------------------------------------------------------------------------------
# construction: shapes, errors, defaults, parameter counts
# ---------------------------------------------------------------------------------------------
def test_bad_sizes_raise_clear_errors():
    with pytest.raises(ValueError, match=r"in_features \(10\) and out_features \(8\) must both be divisible by nblocks \(4\)"):
        BlockDiagLinear(10, 8, 4)
    with pytest.raises(ValueError, match="divisible"):
        BlockDiagLinear(8, 10, 4)
    with pytest.raises(ValueError, match="nblocks must be >= 1"):
        MonarchLinear(8, 8, 0)
    with pytest.raises(ValueError, match="divisible by nblocks"):
        LowRankBlockDiagLinear(10, 2, 4)
    with pytest.raises(ValueError, match="rank"):
        LowRankBlockDiagLinear(8, 9, 2)
    with pytest.raises(RuntimeError, match="last dimension 8"):
        MonarchLinear(8, 8)(torch.randn(2, 9))


def test_default_nblocks():
    cases = {(1024, 1024): 32, (768, 768): 24, (768, 3072): 48, (4096, 11008): 128, (4096, 4096): 64,
             (64, 128): 8, (97, 97): 10, (1, 10000): 1, (1, 1): 1}
    for (i, o), nb in cases.items():
        assert default_monarch_nblocks(i, o) == nb, (i, o)
        assert MonarchLinear(i, o, device="meta").nblocks == nb


def test_parameter_counts_in_docstrings():
    dense = 4096 * 4096 + 4096
    assert n_params(MonarchLinear(4096, 4096, device="meta")) == 528_384
    assert n_params(BlockDiagLinear(4096, 4096, 16, device="meta")) == 1_052_672
    low = n_params(LowRankBlockDiagLinear(4096, rank=64, nblocks=16, device="meta"))
    assert low == 2 * 4096 * 64 + 4096 * 4096 // 16 + 4096 == 1_576_960
    assert round(100 * (1 - low / dense), 1) == 90.6
    assert "1576960" in LowRankBlockDiagLinear.__doc__ and "90.6" in LowRankBlockDiagLinear.__doc__
    assert "528384" in MonarchLinear.__doc__ and "1052672" in BlockDiagLinear.__doc__


# ---------------------------------------------------------------------------------------------
# initialisation: activation variance
# ---------------------------------------------------------------------------------------------
def output_variance(layer, in_features, rows=8192, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, in_features, generator=g, dtype=F64)
    with torch.no_grad():
        return copy.deepcopy(layer).to(F64)(x).var().item()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda i, o: BlockDiagLinear(i, o, 8), id="blockdiag"),
        pytest.param(lambda i, o: MonarchLinear(i, o), id="monarch"),
        pytest.param(lambda i, o: MonarchLinear(i, o, 16), id="monarch_nb16"),
        pytest.param(lambda i, o: MonarchLinear(i - 3, o + 5, 16), id="monarch_padded"),
    ],
)
@pytest.mark.parametrize("in_f, out_f", [(512, 512), (256, 768)])
def test_output_variance_matches_nn_linear(make, in_f, out_f):
    """Unit-variance input: the layers' outputs have nn.Linear's variance (1/3 + the bias's
    1/(3 in)) within 10 %."""
    torch.manual_seed(4)
    layer = make(in_f, out_f)
    torch.manual_seed(4)
    linear = nn.Linear(layer.in_features, layer.out_features)
    v_layer = output_variance(layer, layer.in_features)
    v_linear = output_variance(linear, layer.in_features)
    theory = 1 / 3 + 1 / (3 * layer.in_features)
    assert abs(v_linear / theory - 1) < 0.1  # the yardstick itself
    assert abs(v_layer / v_linear - 1) < 0.1, (v_layer, v_linear)


def test_lowrank_starts_at_identity_plus_bias():
    """LowRankBlockDiagLinear starts as x + bias (U = B = 0): output variance 1 + 1/(3 f)."""
    torch.manual_seed(5)
    layer = LowRankBlockDiagLinear(256, rank=16, nblocks=8)
    assert torch.all(layer.U == 0) and torch.all(layer.B == 0) and layer.V.abs().max() > 0
    x = torch.randn(64, 256)
    torch.testing.assert_close(layer(x), x + layer.bias)
    v = output_variance(layer, 256)
    assert abs(v / (1 + 1 / (3 * 256)) - 1) < 0.1
    # U and B learn from the first step; V from the second (its gradient is U-weighted)
    layer(x).pow(2).sum().backward()
    assert layer.U.grad.abs().max() > 0 and layer.B.grad.abs().max() > 0 and layer.bias.grad.abs().max() > 0
    assert torch.all(layer.V.grad == 0)


# ---------------------------------------------------------------------------------------------
# state dict
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(LAYERS))
def test_state_dict_round_trip(device, dtype, name):
    torch.manual_seed(6)
    a = randomize_(LAYERS[name](device=device, dtype=dtype))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(7)
    b = LAYERS[name](device=device, dtype=dtype)  # different init
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert a.state_dict().keys() == b.state_dict().keys()
    x = torch.randn(4, a.in_features, device=device, dtype=dtype)
    assert torch.equal(a(x), b(x))


def test_state_dict_keys():
    assert set(BlockDiagLinear(8, 8, 2).state_dict()) == {"weight", "bias"}
    assert set(MonarchLinear(8, 8, 2).state_dict()) == {"w1", "w2", "bias"}
    assert set(LowRankBlockDiagLinear(8, 2, 2).state_dict()) == {"U", "V", "B", "bias"}


# ---------------------------------------------------------------------------------------------
# projection of dense weights
# ---------------------------------------------------------------------------------------------
def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_f, out_f, nb", [(64, 64, 8), (48, 96, 4), (96, 40, 8), (64, 64, 2), (50, 29, 6), (10, 7, 4)])
def test_projection_recovers_exact_monarch(device, dtype, in_f, out_f, nb):
    torch.manual_seed(8)
    src = MonarchLinear(in_f, out_f, nb, device=device, dtype=dtype)
    linear = nn.Linear(in_f, out_f, device=device, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(src.to_dense())
    proj = monarch_from_dense(linear, nb)
    assert isinstance(proj, MonarchLinear) and proj.nblocks == nb
    assert proj.w1.dtype == dtype and proj.w1.device.type == torch.device(device).type
    assert rel_err(proj.to_dense(), linear.weight) < 1e-5
    assert torch.equal(proj.bias, linear.bias)
    x = torch.randn(5, in_f, device=device, dtype=dtype)
    torch.testing.assert_close(proj(x), linear(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("in_f, out_f, nb", [(64, 64, 8), (48, 80, 4), (50, 29, 6)])
def test_projection_of_random_dense_is_optimal(device, in_f, out_f, nb):
    """For a random dense weight the projection beats a fresh init and the zero matrix, and is a
    local minimum of the Frobenius error (perturbing its factors only makes it worse)."""
    torch.manual_seed(9)
    linear = nn.Linear(in_f, out_f, device=device, dtype=F64)
    w = linear.weight.detach()
    proj = monarch_from_dense(linear, nb)
    err = (proj.to_dense() - w).norm().item()
    naive = MonarchLinear(in_f, out_f, nb, device=device, dtype=F64)
    assert err < (naive.to_dense() - w).norm().item()
    assert err < 0.99 * w.norm().item()
    with torch.no_grad():
        for _ in range(5):
            other = MonarchLinear(in_f, out_f, nb, device=device, dtype=F64)
            other.w1.copy_(proj.w1 + 1e-3 * torch.randn_like(proj.w1))
            other.w2.copy_(proj.w2 + 1e-3 * torch.randn_like(proj.w2))
            assert (other.to_dense() - w).norm().item() > err
    # a Monarch matrix's (j, i) submatrix is rank one: the residual is orthogonal to the fit,
    # so ||W||^2 = ||M||^2 + ||W - M||^2 (Pythagoras, per block)
    m = proj.to_dense()
    assert math.isclose(w.norm().item() ** 2, m.norm().item() ** 2 + err**2, rel_tol=1e-9)


def test_projection_default_nblocks_and_no_bias():
    torch.manual_seed(10)
    linear = nn.Linear(128, 64, bias=False)
    proj = monarch_from_dense(linear)
    assert proj.nblocks == default_monarch_nblocks(128, 64) and proj.bias is None
    assert proj.w1.requires_grad and proj.w2.requires_grad  # trainable parameters
    assert proj.w1.grad_fn is None


# ---------------------------------------------------------------------------------------------
# replace_linear
# ---------------------------------------------------------------------------------------------
def encoder_layer(dtype=F32, device="cpu"):
    return nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128, dropout=0.0, batch_first=True,
                                      device=device, dtype=dtype)


def expected_params(kind, in_f, out_f, **kw):
    if kind == "monarch":
        nb = kw.get("nblocks") or default_monarch_nblocks(in_f, out_f)
        return nb * (nb * -(-in_f // nb) + nb * -(-out_f // nb)) + out_f
    if kind == "blockdiag":
        return in_f * out_f // kw["nblocks"] + out_f
    return 2 * in_f * kw["rank"] + in_f * in_f // kw["nblocks"] + in_f


KINDS = [
    pytest.param("monarch", True, {}, id="monarch-project"),
    pytest.param("monarch", False, {"nblocks": 4}, id="monarch-fresh-nb4"),
    pytest.param("blockdiag", True, {"nblocks": 4}, id="blockdiag-project"),
    pytest.param("blockdiag", False, {"nblocks": 8}, id="blockdiag-fresh"),
    pytest.param("lowrank", True, {"rank": 8, "nblocks": 4}, id="lowrank-project"),
    pytest.param("lowrank", False, {"rank": 8, "nblocks": 4}, id="lowrank-fresh"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind, project, kw", KINDS)
def test_replace_linear_transformer_trains(device, dtype, kind, project, kw):
    torch.manual_seed(11)
    model = encoder_layer(dtype, device)
    before = n_params(model)
    report = replace_linear(model, kind=kind, project=project, **kw)
    assert report["params_before"] == before
    assert report["params_after"] == n_params(model)
    assert "self_attn.out_proj" in report["skipped"]
    if kind == "lowrank":  # linear1 (64 -> 128) and linear2 (128 -> 64) are not square
        assert report["replaced"] == [] and set(report["skipped"]) == {"self_attn.out_proj", "linear1", "linear2"}
        assert "square" in report["skipped"]["linear1"]
        return
    assert report["replaced"] == ["linear1", "linear2"]
    cls = {"monarch": MonarchLinear, "blockdiag": BlockDiagLinear}[kind]
    assert isinstance(model.linear1, cls) and isinstance(model.linear2, cls)
    dense_ff = (64 * 128 + 128) + (128 * 64 + 64)
    new_ff = expected_params(kind, 64, 128, **kw) + expected_params(kind, 128, 64, **kw)
    assert report["params_before"] - report["params_after"] == dense_ff - new_ff > 0
    for p in model.parameters():
        assert p.dtype == dtype and p.device.type == torch.device(device).type
    assert_trains(model, (8, 6, 64), device, dtype)


def test_replace_linear_lowrank_on_square_mlp(device):
    torch.manual_seed(12)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64), nn.Linear(64, 8))
    report = replace_linear(model, kind="lowrank", rank=4, nblocks=8)
    assert report["replaced"] == ["2", "4"]
    assert set(report["skipped"]) == {"0", "5"} and "square" in report["skipped"]["0"]
    saved = (64 * 64 + 64) - expected_params("lowrank", 64, 64, rank=4, nblocks=8)
    assert report["params_before"] - report["params_after"] == 2 * saved
    assert_trains(model, (32, 32), device, F32)


def assert_trains(model, in_shape, device, dtype, steps=20):
    """The loss of a fixed random regression task falls over `steps` Adam steps, and every
    parameter gets a gradient."""
    model.to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*in_shape, generator=g, dtype=dtype).to(device)
    with torch.no_grad():
        target = torch.randn(model(x).shape, generator=g, dtype=dtype).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(steps):
        opt.zero_grad()
        loss = (model(x) - target).pow(2).mean()
        loss.backward()
        if step == 1:  # step 0 leaves LoRA-style V without gradient (its U is zero)
            for name, p in model.named_parameters():
                assert p.grad is not None and p.grad.abs().max() > 0, f"no gradient reached {name}"
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.9 * losses[0], losses


def test_replace_linear_projection_preserves_function():
    """project=True starts from the dense layer: exact for a Monarch weight, the diagonal blocks
    for blockdiag, and for lowrank never worse than the block-diagonal projection alone."""
    torch.manual_seed(13)
    src = MonarchLinear(48, 40, 4, dtype=F64)
    lin = nn.Linear(48, 40, dtype=F64)
    with torch.no_grad():
        lin.weight.copy_(src.to_dense())
    model = nn.Sequential(lin)
    x = torch.randn(5, 48, dtype=F64)
    want = model(x)
    replace_linear(model, kind="monarch", nblocks=4)
    torch.testing.assert_close(model(x), want, **TOL[F64])

    lin = nn.Linear(24, 36, dtype=F64)
    model = nn.Sequential(lin)
    replace_linear(model, kind="blockdiag", nblocks=3)
    diag = [lin.weight[12 * b:12 * b + 12, 8 * b:8 * b + 8] for b in range(3)]
    torch.testing.assert_close(model[0].to_dense(), torch.block_diag(*diag))
    torch.testing.assert_close(model[0].bias, lin.bias)

    lin = nn.Linear(32, 32, dtype=F64)
    w = lin.weight.detach()
    eye = torch.eye(32, dtype=F64)
    model = nn.Sequential(lin)
    replace_linear(model, kind="lowrank", rank=4, nblocks=4)
    low_err = (model[0].to_dense() - w).norm()
    blocks = torch.block_diag(*[(w - eye)[8 * b:8 * b + 8, 8 * b:8 * b + 8] for b in range(4)])
    assert low_err <= (eye + blocks - w).norm() + 1e-12
    assert low_err < 0.95 * (eye + blocks - w).norm()  # the low-rank term helps
    # B is the exact minimiser given U V^T: the diagonal blocks of W - I - U V^T
    layer = model[0]
    rest = w - eye - layer.U @ layer.V.T
    torch.testing.assert_close(layer.B, torch.stack([rest[8 * b:8 * b + 8, 8 * b:8 * b + 8] for b in range(4)]))


def test_replace_linear_details():
    torch.manual_seed(14)
    shared = nn.Linear(16, 16)
    model = nn.Sequential(nn.Linear(16, 16, bias=False), nn.Linear(16, 10), shared, nn.Sequential(shared))
    model.eval()
    report = replace_linear(model, lambda name, m: name != "1", kind="blockdiag", nblocks=4)
    assert report["replaced"] == ["0", "2", "3.0"]
    assert report["skipped"] == {}
    assert isinstance(model[1], nn.Linear)  # predicate said no
    assert model[0].bias is None and not model[0].training
    assert model[2] is model[3][0]  # one shared replacement
    assert report["params_after"] == n_params(model)
    assert report["params_before"] == 16 * 16 + (16 * 10 + 10) + (16 * 16 + 16)

    report = replace_linear(nn.Sequential(nn.Linear(10, 8)), kind="blockdiag", nblocks=4)
    assert report["replaced"] == [] and "divisible" in report["skipped"]["0"]
    assert report["params_before"] == report["params_after"]

    report = replace_linear(nn.Linear(8, 8), kind="monarch")
    assert report["replaced"] == [] and "root" in report["skipped"][""]

    with pytest.raises(ValueError, match="kind"):
        replace_linear(nn.Sequential(), kind="dense")
    with pytest.raises(ValueError, match="nblocks"):
        replace_linear(nn.Sequential(), kind="blockdiag")
    with pytest.raises(ValueError, match="rank"):
        replace_linear(nn.Sequential(), kind="lowrank", nblocks=2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_replace_linear_half_precision(device, dtype):
    """Half-precision layers are projected in fp32 and keep their dtype."""
    torch.manual_seed(15)
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 32)).to(device=device, dtype=dtype)
    x = torch.randn(4, 64, device=device, dtype=dtype)
    report = replace_linear(model, kind="monarch")
    assert report["replaced"] == ["0", "1"]
    assert all(p.dtype == dtype for p in model.parameters())
    assert model(x).dtype == dtype


def test_autocast_like_nn_linear():
    """Under torch.autocast the layers compute in the autocast dtype, as nn.Linear does."""
    torch.manual_seed(16)
    x = torch.randn(4, 32)
    for layer in (BlockDiagLinear(32, 32, 4), MonarchLinear(32, 32), LowRankBlockDiagLinear(32, 4, 4)):
        model = nn.Sequential(nn.Linear(32, 32), layer)
        want = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x)
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05)
        got.float().sum().backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
