"""torch's FLOP counter with the CPU's attention kernel counted, and optionally without the arithmetic.

``torch.utils.flop_counter.FlopCounterMode`` has formulas for the CUDA attention kernels only: on the
CPU, ``scaled_dot_product_attention`` runs ``_scaled_dot_product_flash_attention_for_cpu``, which it
counts as 0 FLOPs. :func:`flop_counter` adds that kernel and its backward with torch's own attention
formulas: the forward's two matrix products (Q K^T and A V, the count of the same attention written
as matrix products), the backward's five (the scores recomputed, as the kernel does); a causal or
padding mask is counted in full, as torch counts attention on CUDA. Training costs
(:mod:`latentlm.cost`) and sampling FLOPs (:mod:`latentlm.eval.speed`) are counted with it.

``shapes_only=True`` counts without computing what it counts: every counted operation (matrix
products, attention) returns zeros of the shape, dtype and strides its meta kernel gives, and the rest
runs as usual. The count is the same wherever shapes and control flow do not depend on those values,
as in a training step (``tests/test_cost.py`` checks every trainable kind); a ``gpu-base`` step is
counted 6-8x faster on a CPU. Sampling, which stops on what it draws, is counted computing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count


def _attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _attention_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


_CPU_ATTENTION = {getattr(torch.ops.aten, name): formula for name, formula in (
    ("_scaled_dot_product_flash_attention_for_cpu", _attention),
    ("_scaled_dot_product_flash_attention_for_cpu_backward", _attention_backward),
) if hasattr(torch.ops.aten, name)}


class _ShapesOnly(TorchDispatchMode):
    """Runs the operations ``ops`` (overload packets) on the meta device and returns zeros like their outputs."""

    def __init__(self, ops: frozenset) -> None:
        super().__init__()
        self.ops = ops

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func._overloadpacket not in self.ops:
            return func(*args, **kwargs)
        device = next(t.device for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor))
        on_meta = tree_map_only(torch.Tensor, lambda t: t.to("meta"), (args, kwargs))
        out = func(*on_meta[0], **on_meta[1])
        return tree_map_only(torch.Tensor, lambda m: torch.empty_strided(
            m.shape, m.stride(), dtype=m.dtype, device=device).zero_(), out)


@contextlib.contextmanager
def flop_counter(*, shapes_only: bool = False) -> Iterator[FlopCounterMode]:
    """A ``FlopCounterMode`` (no printed table) that also counts attention on the CPU; with
    ``shapes_only``, the counted operations are not computed (see the module's docstring)."""
    counter = FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION)
    skip = _ShapesOnly(frozenset(counter.flop_registry)) if shapes_only else contextlib.nullcontext()
    with skip, counter:  # the counter sees each operation first, then the shapes-only mode runs it
        yield counter
