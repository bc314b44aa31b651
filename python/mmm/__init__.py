"""mmm: fused and structured CUDA kernels for the expensive multiplications inside transformers.

Ops live under ``torch.ops.mmm.*``; this package adds their fake kernels, autograd and the
user-facing functions (``mmm.fused_add_norm``) and modules (``mmm.nn``).
"""
from mmm._library import build_info, load_library

load_library()

from mmm import nn, ops  # noqa: E402  (ops need the library loaded)
from mmm.ops.attention import fused_attention  # noqa: E402
from mmm.ops.block_diag_matmul import block_diag_matmul, monarch_matmul  # noqa: E402
from mmm.ops.butterfly import butterfly_multiply  # noqa: E402
from mmm.ops.fused_add_norm import fused_add_norm  # noqa: E402
from mmm.ops.hadamard import hadamard_transform  # noqa: E402

__version__ = build_info()["version"]
__all__ = [
    "block_diag_matmul", "build_info", "butterfly_multiply", "fused_add_norm", "fused_attention", "hadamard_transform", "monarch_matmul",
    "nn", "ops",
]
