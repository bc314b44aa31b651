"""Packaging-level checks: build_info, `python -m mmm`, and the registered ops."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import torch

import mmm


def test_build_info_keys_and_types():
    info = mmm.build_info()
    assert isinstance(info, dict)
    assert {"version", "torch", "cuda", "cuda_archs", "cuda_kernels"} <= set(info)
    assert isinstance(info["version"], str) and info["version"]
    assert isinstance(info["torch"], str) and info["torch"]
    assert isinstance(info["cuda_kernels"], bool)
    assert info["cuda"] is None or isinstance(info["cuda"], str)
    assert isinstance(info["cuda_archs"], (str, list, tuple))
    if info["cuda_kernels"]:
        assert info["cuda"], "CUDA kernels built but no CUDA version recorded"
        assert len(info["cuda_archs"]) > 0, "CUDA kernels built but no architectures recorded"


def test_build_info_version_matches_package_metadata():
    assert mmm.build_info()["version"] == importlib.metadata.version("mmm")


def test_python_dash_m_mmm_self_test():
    proc = subprocess.run([sys.executable, "-m", "mmm"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert mmm.build_info()["version"] in proc.stdout


def test_ops_registered():
    assert hasattr(torch.ops.mmm, "fused_add_norm")
    assert hasattr(torch.ops.mmm, "fused_add_norm_backward")
    schema = str(torch.ops.mmm.fused_add_norm.default._schema)
    for arg in ("x", "weight", "bias", "residual", "eps", "rms", "activation", "dropout_p",
                "prenorm", "residual_in_fp32", "dropout_seed"):
        assert arg in schema, f"{arg} missing from schema {schema}"


def test_public_api():
    assert callable(mmm.fused_add_norm)
    assert issubclass(mmm.nn.FusedAddNorm, torch.nn.Module)
