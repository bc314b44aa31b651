"""Autograd helpers shared by the op modules."""
from __future__ import annotations

import torch


def no_double_backward(backward_op: str, op: str) -> None:
    """Make differentiating through ``backward_op`` raise instead of silently returning no
    gradient (what an op without an autograd kernel does under ``create_graph=True``)."""

    def _raise(ctx, *grads):
        raise RuntimeError(f"mmm: double backward (a gradient of {op}'s gradient) is not supported")

    def _setup_context(ctx, inputs, output, keyword_only_inputs=None):
        pass

    torch.library.register_autograd(backward_op, _raise, setup_context=_setup_context)
