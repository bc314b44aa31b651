"""One module per op family: fake (meta) kernel, autograd, and the public function."""
from mmm.ops import fused_add_norm  # noqa: F401
