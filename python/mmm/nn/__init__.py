"""Drop-in modules built only from mmm ops."""
from mmm.nn.fused_add_norm import FusedAddNorm

__all__ = ["FusedAddNorm"]
