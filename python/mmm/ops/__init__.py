"""One module per op family: fake (meta) kernel, autograd, the public function and a selftest.

Every op module in MODULES defines ``selftest(device) -> float`` (the worst error against its
reference, raising on failure); ``python -m mmm`` runs them all.
"""
from mmm.ops import attention, block_diag_matmul, butterfly, fused_add_norm, hadamard

MODULES = {
    "fused_add_norm": fused_add_norm,
    "block_diag_matmul": block_diag_matmul,
    "hadamard_transform": hadamard,
    "fused_attention": attention,
    "butterfly_multiply": butterfly,
}
