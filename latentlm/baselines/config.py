"""Model section shared by the two baselines (``[ar.model]``, ``[mdlm.model]``):
the same transformer backbone, so the families differ only in their objective."""

from dataclasses import dataclass


@dataclass
class LMConfig:
    dim: int = 256
    depth: int = 6
    n_heads: int = 4
    mlp_ratio: float = 4.0
    max_seq_len: int = 1024
