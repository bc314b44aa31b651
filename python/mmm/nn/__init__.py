"""Drop-in modules built only from mmm ops."""
from mmm.nn.attention import FusedAttention
from mmm.nn.butterfly import ButterflyLinear
from mmm.nn.fused_add_norm import FusedAddNorm
from mmm.nn.monarch import (
    BlockDiagLinear,
    LowRankBlockDiagLinear,
    MonarchLinear,
    default_monarch_nblocks,
    monarch_from_dense,
    replace_linear,
)

__all__ = ["FusedAddNorm", "FusedAttention"]
__all__ += ["ButterflyLinear"]
__all__ += [
    "BlockDiagLinear",
    "LowRankBlockDiagLinear",
    "MonarchLinear",
    "default_monarch_nblocks",
    "monarch_from_dense",
    "replace_linear",
]
