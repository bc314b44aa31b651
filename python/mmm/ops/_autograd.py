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


def call_op(op, *args, **kwargs):
    """``op(*args, **kwargs)``, entering below the Autograd dispatch key when autograd has
    nothing to record (grad mode off, or no argument requires grad).

    An op whose autograd is registered from Python (torch.library.register_autograd) otherwise
    runs that Python kernel on every call, and when it has nothing to record it only redispatches
    below autograd, at ~15 us of Python per call: three times an eager LayerNorm's whole cost on
    a small tensor, and the bulk of a decoding step's CPU time per op. This is the same
    redispatch (torch/_library/autograd.py: _AutoDispatchBelowAutograd), done once here. Under
    torch.compile the op is called as is: Dynamo traces the call, not the dispatch.
    """
    if (torch.compiler.is_compiling() or (torch.is_grad_enabled() and any(
            isinstance(a, torch.Tensor) and a.requires_grad for a in (*args, *kwargs.values())))):
        return op(*args, **kwargs)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args, **kwargs)
