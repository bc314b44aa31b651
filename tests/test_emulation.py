"""Tests of the CUDA-on-CPU emulator itself (tests/emulate), which checks every kernel in CI.

Under ThreadSanitizer it must report exactly the races a GPU could show: tests/emulate/races.cpp
has one clean kernel and one for each kind of race the op emulations rely on it to catch. A
barrier that ordered too much (its own locks or atomics seen by TSan) would hide them, and every
op's "thread" emulation would pass whatever its kernels did. And threads that wait at different
barriers must be reported as a deadlock, not hang.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from conftest import emulation_skip_reason, run_emulation

pytestmark = pytest.mark.skipif(emulation_skip_reason("thread") is not None,
                                reason=str(emulation_skip_reason("thread")))


@pytest.fixture(scope="module")
def ordered_run(tmp_path_factory):
    """Builds the driver with ThreadSanitizer (run.sh) and runs its clean case, which must pass."""
    build_dir = tmp_path_factory.mktemp("races")
    return run_emulation("races", ["ordered"], build_dir, "thread"), build_dir / "races"


def test_ordered_accesses_are_not_reported(ordered_run):
    out, _ = ordered_run
    assert "ordered: no race reported" in out, out[-4000:]


@pytest.mark.parametrize("case,where", [("block", "block_race"), ("warp", "warp_race"), ("phase", "phase_race"),
                                        ("cta", "cta_race"), ("cluster", "cluster_exchange")])
def test_races_are_reported(ordered_run, case, where):
    _, binary = ordered_run
    res = subprocess.run([str(binary), case], capture_output=True, text=True,
                         env={**os.environ, "TSAN_OPTIONS": "halt_on_error=1"})
    assert res.returncode != 0, res.stdout + res.stderr[-4000:]
    assert "WARNING: ThreadSanitizer: data race" in res.stderr, res.stderr[-4000:]
    assert f"#0 {where} " in res.stderr, res.stderr[-4000:]  # the race the case has, not another


def test_deadlock_is_reported(ordered_run):
    _, binary = ordered_run
    res = subprocess.run([str(binary), "deadlock"], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0, res.stdout + res.stderr[-4000:]
    assert "EMULATION ERROR: a deadlock" in res.stderr, res.stderr[-4000:]
    assert "thread 0 waits at __syncthreads" in res.stderr, res.stderr[-4000:]
