"""Turn tokenised documents into fixed-length training batches, deterministically.

A batch is a pure function of ``(seed, step)``: training can resume at any step
and produce the very batches an uninterrupted run would have seen, and every
data-parallel rank can take its slice of the same global batch.

Two layouts:

* ``"stream"``: documents are joined into one stream with an end-of-text token
  after each, and every row is a window of ``seq_len`` tokens at a random
  offset (language-model training).
* ``"document"``: every row is one document followed by end-of-text and
  padding; ``attention_mask`` marks the real tokens (autoencoder and denoiser
  training, variable-length text). A document longer than ``seq_len - 1``
  tokens fills the row with its first ``seq_len`` tokens and gets no
  end-of-text: the text does not end there, and a model taught that it does
  learns to stop stories mid-sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from latentlm.data.shards import TokenShards
from latentlm.errors import DataError, InputError

Layout = Literal["stream", "document"]


def tokenize_documents(docs: Sequence[str], tokenizer, *, chunk: int = 2048) -> list[np.ndarray]:
    """Token ids of each document (no special tokens), as int32 arrays."""
    out: list[np.ndarray] = []
    for i in range(0, len(docs), chunk):
        enc = tokenizer(list(docs[i : i + chunk]), add_special_tokens=False)["input_ids"]
        out.extend(np.asarray(ids, dtype=np.int32) for ids in enc)
    return out


def split_documents(
    docs: Sequence[str], valid_fraction: float, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Deterministic train/valid split of a document list (at least one of each)."""
    if not 0 < valid_fraction < 1:
        raise InputError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    if len(docs) < 2:
        raise DataError(f"need at least 2 documents to split into train and valid, got {len(docs)}")
    order = np.random.default_rng(seed).permutation(len(docs))
    n_valid = min(len(docs) - 1, max(1, round(len(docs) * valid_fraction)))
    valid_idx = set(order[:n_valid].tolist())
    train = [d for i, d in enumerate(docs) if i not in valid_idx]
    valid = [d for i, d in enumerate(docs) if i in valid_idx]
    return train, valid


class PackedBatches:
    """Deterministic batches of token windows or padded documents.

    Args:
        docs: token ids of each document, or a :class:`~latentlm.data.shards.TokenShards` folder read
            window by window (the same batches as its documents in memory, without holding them).
        seq_len: tokens per row.
        batch_size: rows per (global) batch.
        eot_id: end-of-text token id.
        pad_id: padding token id (``"document"`` layout).
        seed: base seed; ``batch(step)`` depends only on ``(seed, step)``.
        layout: ``"stream"`` or ``"document"`` (see module docstring).
    """

    def __init__(
        self,
        docs: Sequence[np.ndarray] | TokenShards,
        *,
        seq_len: int,
        batch_size: int,
        eot_id: int,
        pad_id: int = 0,
        seed: int = 0,
        layout: Layout = "stream",
    ) -> None:
        if seq_len < 2:
            raise InputError(f"seq_len must be at least 2, got {seq_len}")
        if batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size}")
        if layout not in ("stream", "document"):
            raise InputError(f"layout must be 'stream' or 'document', got {layout!r}")
        self.seq_len, self.batch_size = seq_len, batch_size
        self.eot_id, self.pad_id, self.seed, self.layout = eot_id, pad_id, seed, layout
        if isinstance(docs, TokenShards):
            if docs.eot_id != eot_id:
                raise DataError(f"the shards end documents with token {docs.eot_id}, this run with {eot_id}: "
                                "they were made with another tokenizer")
            self.shards, self.stream, self.docs = docs, None, None
            self._n_tokens, self._n_docs = len(docs), docs.num_documents
        else:
            docs = [d for d in docs if len(d) > 0]
            if not docs:
                raise DataError("no non-empty document to build batches from")
            self.shards, self.docs = None, docs
            eot = np.asarray([eot_id], dtype=np.int32)
            self.stream = np.concatenate([x for d in docs for x in (d, eot)])  # (total_tokens,)
            self._n_tokens, self._n_docs = len(self.stream), len(docs)
        if layout == "stream" and self._n_tokens < seq_len + 1:
            raise DataError(
                f"the data has {self._n_tokens} tokens, fewer than one window of {seq_len}; "
                "use more text or a smaller seq_len"
            )

    @property
    def num_tokens(self) -> int:
        return int(self._n_tokens)

    def _document(self, d: int) -> np.ndarray:
        return self.docs[d] if self.shards is None else self.shards.document(d)

    def tokens_per_batch(self) -> int:
        return self.seq_len * self.batch_size

    def _rows_stream(self, starts: np.ndarray) -> dict[str, torch.Tensor]:
        if self.shards is None:
            idx = starts[:, None] + np.arange(self.seq_len)[None, :]  # (batch, seq_len)
            ids = torch.from_numpy(self.stream[idx].astype(np.int64))
        else:
            ids = torch.from_numpy(np.stack([self.shards.window(int(a), self.seq_len) for a in starts])
                                   if len(starts) else np.zeros((0, self.seq_len), dtype=np.int64))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def _rows_document(self, doc_idx: np.ndarray) -> dict[str, torch.Tensor]:
        ids = np.full((len(doc_idx), self.seq_len), self.pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, d in enumerate(doc_idx):
            toks = self._document(int(d))[: self.seq_len]
            ids[row, : len(toks)] = toks
            if len(toks) < self.seq_len:  # the whole document fits: it ends here
                ids[row, len(toks)] = self.eot_id
            mask[row, : min(len(toks) + 1, self.seq_len)] = 1
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}

    def batch(self, step: int, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
        """The global batch of training step ``step``: ``input_ids`` and
        ``attention_mask``, each ``(batch_size, seq_len)``; with ``world`` > 1 only its
        rows ``rank::world``, the only ones read (each process of a data-parallel run reads its own)."""
        if not 0 <= rank < world:
            raise InputError(f"rank must be in [0, {world}), got {rank}")
        rng = np.random.default_rng([self.seed, step])
        if self.layout == "stream":
            starts = rng.integers(0, self._n_tokens - self.seq_len + 1, size=self.batch_size)
            return self._rows_stream(starts[rank::world])
        return self._rows_document(rng.integers(0, self._n_docs, size=self.batch_size)[rank::world])

    def sequential_batches(self, max_batches: int | None = None) -> list[dict[str, torch.Tensor]]:
        """Deterministic in-order batches covering the data once (for validation):
        non-overlapping windows (``stream``) or every document (``document``)."""
        if self.layout == "stream":
            starts = np.arange(0, self._n_tokens - self.seq_len + 1, self.seq_len)
        else:
            starts = np.arange(self._n_docs)
        batches = []
        for i in range(0, len(starts), self.batch_size):
            if max_batches is not None and len(batches) >= max_batches:
                break
            chunk = starts[i : i + self.batch_size]
            rows = self._rows_stream(chunk) if self.layout == "stream" else self._rows_document(chunk)
            batches.append(rows)
        return batches
