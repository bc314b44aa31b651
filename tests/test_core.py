"""Tests of the shared primitives in csrc/core.

- The dropout mask of every op is Philox4x32-10 keyed by the seed and counted by element index:
  checked against an independent NumPy Philox that itself reproduces Random123's known answers.
- tests/cuda/test_core_primitives.cu checks each device primitive (Philox, fp16/bf16
  conversions, 128-bit chunk loads/stores, row reductions, ldmatrix/mma/cp.async, and on sm_90
  the thread-block-cluster primitives) against its CPU twin. It is compiled
  wherever nvcc is (CI proves it builds) and run where there is a GPU.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mmm  # noqa: F401  (loads the ops)

from conftest import build_cuda_test, devices, run_cuda_test

M32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(ctr: np.ndarray, k0: int, k1: int) -> np.ndarray:
    """Random123's Philox4x32-10 on rows of a (n, 4) uint32 counter array."""
    c = [ctr[:, i].astype(np.uint64) for i in range(4)]
    k0, k1 = np.uint64(k0), np.uint64(k1)
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c[0]
        p1 = np.uint64(0xCD9E8D57) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & M32, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & M32]
        k0 = (k0 + np.uint64(0x9E3779B9)) & M32
        k1 = (k1 + np.uint64(0xBB67AE85)) & M32
    return np.stack(c, axis=1).astype(np.uint32)


def test_numpy_philox_matches_random123_known_answers():
    kat = [
        ([0, 0, 0, 0], (0, 0), [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        ([0xFFFFFFFF] * 4, (0xFFFFFFFF, 0xFFFFFFFF), [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], (0xA4093822, 0x299F31D0),
         [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
    ]
    for ctr, key, want in kat:
        got = philox4x32_10(np.array([ctr], dtype=np.uint32), *key)[0]
        assert [int(v) for v in got] == want


def expected_keep(seed: int, rows: int, n: int, p: float) -> np.ndarray:
    idx = np.arange(rows * n, dtype=np.uint64)
    blocks = idx >> np.uint64(2)
    ctr = np.zeros((idx.size, 4), dtype=np.uint32)
    ctr[:, 0] = (blocks & M32).astype(np.uint32)
    ctr[:, 1] = (blocks >> np.uint64(32)).astype(np.uint32)
    words = philox4x32_10(ctr, seed & 0xFFFFFFFF, seed >> 32)
    bits = words[np.arange(idx.size), (idx & np.uint64(3)).astype(np.int64)]
    threshold = int(p * 2.0**32)
    return (bits.astype(np.uint64) >= np.uint64(threshold)).reshape(rows, n)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("seed", [0, 1, 0x0123456789ABCDEF, 2**63 - 1])
@pytest.mark.parametrize("rows,n,p", [(3, 7, 0.3), (13, 77, 0.2), (5, 1000, 0.1), (2, 4097, 0.5)])
def test_dropout_mask_is_philox_of_seed_and_index(device, seed, rows, n, p):
    x = torch.ones(rows, n, device=device)
    _, h, _, _ = torch.ops.mmm.fused_add_norm(
        x, None, None, None, torch.tensor(seed, dtype=torch.int64), dropout_p=p, prenorm=True
    )
    got = (h != 0).cpu().numpy()
    np.testing.assert_array_equal(got, expected_keep(seed, rows, n, p))


@pytest.fixture(scope="module")
def core_test_binary(tmp_path_factory):
    return build_cuda_test("test_core_primitives", tmp_path_factory.mktemp("core"))


def test_core_primitives_compile(core_test_binary):
    assert core_test_binary.exists()


def test_cluster_primitives_compile_for_sm_90(tmp_path):
    # The thread-block-cluster primitives' inline PTX (core/cluster.cuh) is only in sm_90 code,
    # which CI's sm_80 build of the kernels never assembles; the primitive test uses every one.
    assert build_cuda_test("test_core_primitives", tmp_path, arch="sm_90").exists()


@pytest.mark.cuda
def test_core_primitives_cuda(core_test_binary):
    run_cuda_test(core_test_binary)
