"""Loads libmmm.so (kernels + stable-ABI torch glue) and answers what it was built with."""
from __future__ import annotations

import glob
import importlib.metadata
import os

import torch

_loaded: str | None = None


def _candidates():
    here = os.path.dirname(os.path.abspath(__file__))
    yield os.path.join(here, "libmmm.so")
    # Editable installs keep the Python sources in the checkout and the built library in
    # site-packages; the distribution's file list knows where.
    try:
        for f in importlib.metadata.distribution("mmm").files or ():
            if f.name == "libmmm.so":
                yield str(f.locate())
    except importlib.metadata.PackageNotFoundError:
        pass
    yield from glob.glob(os.path.join(here, "..", "..", "build", "*", "libmmm.so"))


def load_library() -> str:
    """Loads the op library once; ops then appear as torch.ops.mmm.*."""
    global _loaded
    if _loaded is None:
        for path in _candidates():
            if os.path.exists(path):
                torch.ops.load_library(path)
                _loaded = path
                break
        else:
            raise ImportError(
                "mmm: libmmm.so not found; build it with `pip install --no-build-isolation .`"
            )
    return _loaded


def build_info() -> dict:
    """What the loaded libmmm.so was built with."""
    from mmm import _build_info as bi

    return {
        "version": bi.VERSION,
        "torch": bi.TORCH,
        "torch_runtime": torch.__version__,
        "cuda": bi.CUDA,
        "cuda_archs": [a for a in bi.CUDA_ARCHS.split(";") if a],
        "cuda_kernels": bool(bi.CUDA_KERNELS),
        # fused_attention's compiled CUDA head dims; a head dim D runs on the smallest one >= D
        "attention_head_dims": [int(d) for d in getattr(bi, "ATTENTION_HEAD_DIMS", "").split(";") if d],
        "library": load_library(),
        # the instruction-set copy of the CPU kernels in use (MMM_CPU_ISA=base|avx2|avx512 caps it)
        "cpu_kernels": ("baseline", "avx2", "avx512", "avx512_bf16")[torch.ops.mmm._cpu_variant(torch.empty(0))],
    }
