"""Every instruction-set copy of the CPU kernels, not only the one this machine picks.

The CPU kernels that vectorise (core/cpu_variants.h) are compiled three times (baseline SSE2,
AVX2, AVX-512) and the best copy the machine runs is called, so the rest of the suite tests only
that copy. Here the CPU tests of those ops run again in a subprocess with MMM_CPU_ISA capping the
choice: the baseline copy (16-byte vectors, no FMA: the most different) for every such op, the
AVX2 copy for the ops that put one row (or channel) per vector lane, where the vector width
changes how rows map to lanes, and for the Hadamard transform, whose strides below a vector's
width run inside a vector, and, on a CPU with AVX512_BF16, the AVX-512 copy without its bf16
dot products for the block GEMM and the attention forward (their bf16 operands then go through
fp32).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mmm

HERE = Path(__file__).resolve().parent
ORDER = ("baseline", "avx2", "avx512", "avx512_bf16")
FILES = {
    "baseline": ["test_fft.py", "test_fftconv.py", "test_butterfly.py", "test_block_diag_matmul.py",
                 "test_attention.py", "test_fused_add_norm.py", "test_hadamard.py"],
    "avx2": ["test_fft.py", "test_fftconv.py", "test_butterfly.py", "test_hadamard.py"],
    "avx512": ["test_block_diag_matmul.py", "test_attention.py"],
}
ENV_NAME = {"baseline": "base", "avx2": "avx2", "avx512": "avx512"}


def _run(isa, args):
    env = dict(os.environ, MMM_CPU_ISA=ENV_NAME[isa])
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=1200)


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_cpu_copy(isa):
    if os.environ.get("MMM_CPU_ISA"):
        pytest.skip("MMM_CPU_ISA is set for this whole run")
    best = mmm.build_info()["cpu_kernels"]
    if ORDER.index(best) <= ORDER.index(isa):
        pytest.skip(f"this machine's own copy is {best}: the rest of the suite tests it")
    got = _run(isa, ["-c", "import mmm; print(mmm.build_info()['cpu_kernels'])"])
    assert got.returncode == 0 and got.stdout.strip() == isa, got.stdout + got.stderr
    files = [str(HERE / f) for f in FILES[isa]]
    res = _run(isa, ["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "not cuda and not cpu_threads",
                     *files])
    assert res.returncode == 0, f"MMM_CPU_ISA={ENV_NAME[isa]}:\n" + (res.stdout + res.stderr)[-6000:]
