"""Shared pytest configuration for the mmm test suite.

CUDA handling
-------------
Tests that need a GPU carry ``@pytest.mark.cuda`` (the marker is declared in pyproject.toml).
They are always *collected*, so a CPU-only run shows them as skipped, with the reason, instead
of silently running fewer tests. They are skipped when

* ``torch.cuda.is_available()`` is False, or
* the installed mmm was built without its CUDA kernels (``mmm.build_info()["cuda_kernels"]``).

The terminal summary then prints one loud line saying how many CUDA tests were skipped and why,
so a green CPU run is never mistaken for a GPU-validated one.

Device parametrization
----------------------
``devices()`` returns ``["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]``. Any test that
takes an argument named ``device`` (and does not parametrize it itself) is parametrized over
``devices()`` by ``pytest_generate_tests`` below, so every numeric test has a CUDA twin.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

NO_GPU_REASON = "no CUDA GPU: torch.cuda.is_available() is False"
NO_KERNELS_REASON = "mmm was built without CUDA kernels: mmm.build_info()['cuda_kernels'] is False"

_CUDA_NODEIDS = pytest.StashKey[set]()
_CUDA_REASON = pytest.StashKey[str]()


def devices():
    """The devices numeric tests run on; the CUDA entry carries the ``cuda`` marker."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.cuda, id="cuda")]


def cuda_skip_reason():
    """Why CUDA tests cannot run here, or None when they can."""
    if not torch.cuda.is_available():
        return NO_GPU_REASON
    try:
        import mmm

        info = mmm.build_info()
    except Exception as exc:  # the import error itself surfaces in the non-CUDA tests
        return f"mmm is not importable ({type(exc).__name__}: {exc})"
    if not info.get("cuda_kernels", False):
        return NO_KERNELS_REASON
    return None


def pytest_generate_tests(metafunc):
    if "device" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",")]
        if "device" in names:
            return  # the test chose its own devices
    metafunc.parametrize("device", devices())


def pytest_collection_modifyitems(config, items):
    cuda_items = [item for item in items if item.get_closest_marker("cuda") is not None]
    config.stash[_CUDA_NODEIDS] = {item.nodeid for item in cuda_items}
    reason = cuda_skip_reason() if cuda_items else None
    config.stash[_CUDA_REASON] = reason or ""
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in cuda_items:
        item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    cuda_ids = config.stash.get(_CUDA_NODEIDS, set())
    if not cuda_ids:
        return
    reason = config.stash.get(_CUDA_REASON, "")
    if reason:
        skipped = [r for r in terminalreporter.stats.get("skipped", []) if r.nodeid in cuda_ids]
        terminalreporter.write_sep(
            "!",
            f"{len(skipped)} CUDA TESTS SKIPPED ({reason}); THE CUDA KERNELS WERE NOT TESTED",
            red=True,
            bold=True,
        )
    else:
        ran = {
            r.nodeid
            for key in ("passed", "failed", "error")
            for r in terminalreporter.stats.get(key, [])
            if r.nodeid in cuda_ids
        }
        terminalreporter.write_sep("=", f"{len(ran)} CUDA tests ran", green=True, bold=True)


# ---------------------------------------------------------------------------------------------
# tests/cuda/*.cu: primitive tests compiled wherever nvcc is (so CI proves they build) and run
# where there is a GPU.
# ---------------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]


def build_cuda_test(name: str, out_dir: Path, arch: str = "") -> Path:
    """Compiles tests/cuda/<name>.cu for `arch`, by default this GPU's architecture (sm_80
    without a GPU); skips when there is no nvcc, fails with nvcc's message when it does not
    compile."""
    nvcc = next((c for c in (shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc") if c and os.path.exists(c)), None)
    if nvcc is None:
        pytest.skip(f"nvcc not found: cannot build tests/cuda/{name}.cu")
    if not arch:
        arch = "sm_{}{}".format(*torch.cuda.get_device_capability()) if torch.cuda.is_available() else "sm_80"
    out = Path(out_dir) / f"{name}_{arch}"
    cmd = [nvcc, "-std=c++20", "-O2", f"-arch={arch}", "--expt-relaxed-constexpr", f"-I{ROOT / 'csrc'}",
           str(ROOT / "tests" / "cuda" / f"{name}.cu"), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return out


def run_cuda_test(binary: Path) -> None:
    """Runs a tests/cuda binary (tests/cuda/harness.cuh prints "N passed, M failed")."""
    res = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120)
    print(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr
    assert " 0 failed" in res.stdout, res.stdout


# ---------------------------------------------------------------------------------------------
# tests/emulate: an op's CUDA launcher and kernels compiled by g++ and run on CPU threads against
# its CPU twin (tests/emulate/cuda_on_cpu.h says what that can and cannot catch). Slow to build,
# so opt-in: MMM_EMULATE=1 runs every driver under ASan/UBSan ("address"), under
# ThreadSanitizer ("thread": accesses of two threads of a block that no barrier orders) and with
# every memory access counted ("counts": shared-memory bank conflicts and global-memory
# coalescing of plain loads and stores, tests/emulate/memory_counts.h); MMM_EMULATE=address,
# =thread or =counts runs only one
# (MMM_FFT_EMULATE=1, the older switch of the fft, fftconv and butterfly drivers, means "address").
# ---------------------------------------------------------------------------------------------
def emulation_skip_reason(sanitizer: str):
    """Why the emulation under `sanitizer` does not run here (None: it runs)."""
    asked = os.environ.get("MMM_EMULATE", "")
    on = asked in ("1", sanitizer) or (sanitizer == "address" and os.environ.get("MMM_FFT_EMULATE") == "1")
    if not on:
        return f"set MMM_EMULATE=1 (or ={sanitizer}) to run the CUDA kernels on CPU threads"
    return "g++ not found: cannot build tests/emulate" if shutil.which("g++") is None else None


def emulation_sanitizers() -> list:
    """The sanitizer parameters of a test_*_on_cpu_threads test, each skipped unless asked for:
    AddressSanitizer/UBSan, ThreadSanitizer (races inside a block and between blocks), and the
    memory counts (bank conflicts, coalescing)."""
    params = []
    for sanitizer in ("address", "thread", "counts"):
        reason = emulation_skip_reason(sanitizer)
        params.append(pytest.param(sanitizer, marks=[pytest.mark.skip(reason=reason)] if reason else []))
    return params


_EMULATE_TWIN_DIR = []


def run_emulation(op: str, args: list, build_dir: Path, sanitizer: str) -> str:
    """tests/emulate/run.sh OP ARGS under `sanitizer`; fails with the tail of its output unless
    it exits with 0 (a wrong result, an emulation error, a sanitizer report or, under "counts", a
    kernel line with systematic bank conflicts or uncoalesced accesses all exit non-zero). The CPU
    twins' objects, the same under every sanitizer, are built once per session."""
    if not _EMULATE_TWIN_DIR:
        _EMULATE_TWIN_DIR.append(tempfile.mkdtemp(prefix="mmm-emulate-twins-"))
    res = subprocess.run(["bash", str(ROOT / "tests" / "emulate" / "run.sh"), op, *args], capture_output=True,
                         text=True, env={**os.environ, "MMM_EMULATE_BUILD_DIR": str(build_dir),
                                         "MMM_EMULATE_TWIN_DIR": _EMULATE_TWIN_DIR[0],
                                         "MMM_EMULATE_SANITIZE": sanitizer})
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    if sanitizer == "counts":  # the count ran (and said so)
        assert "memory counts (plain loads and stores):" in res.stdout, res.stdout[-4000:]
    return res.stdout
