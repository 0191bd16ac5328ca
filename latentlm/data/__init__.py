"""Data: corpus readers, packing into batches, tokenizer training, synthetic stories."""

from latentlm.data.packing import PackedBatches, split_documents, tokenize_documents
from latentlm.data.readers import load_hf_dataset, read_documents
from latentlm.data.tokenizer import load_tokenizer, train_tokenizer

__all__ = [
    "PackedBatches",
    "load_hf_dataset",
    "load_tokenizer",
    "read_documents",
    "split_documents",
    "tokenize_documents",
    "train_tokenizer",
]
