"""torch's FLOP counter with the CPU's attention kernel counted.

``torch.utils.flop_counter.FlopCounterMode`` has formulas for the CUDA attention kernels only: on the
CPU, ``scaled_dot_product_attention`` runs ``_scaled_dot_product_flash_attention_for_cpu``, which it
counts as 0 FLOPs. :func:`flop_counter` adds that kernel and its backward with torch's own attention
formulas: the forward's two matrix products (Q K^T and A V, the count of the same attention written
as matrix products), the backward's five (the scores recomputed, as the kernel does); a causal or
padding mask is counted in full, as torch counts attention on CUDA. Training costs (:mod:`latentlm.cost`) and
sampling FLOPs (:mod:`latentlm.eval.speed`) are counted with it.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count


def _attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _attention_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


_CPU_ATTENTION = {getattr(torch.ops.aten, name): formula for name, formula in (
    ("_scaled_dot_product_flash_attention_for_cpu", _attention),
    ("_scaled_dot_product_flash_attention_for_cpu_backward", _attention_backward),
) if hasattr(torch.ops.aten, name)}


def flop_counter() -> FlopCounterMode:
    """A ``FlopCounterMode`` (no printed table) that also counts attention on the CPU."""
    return FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION)
