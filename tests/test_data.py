import json

import numpy as np
import pytest

from latentlm.data import PackedBatches, read_documents, split_documents, tokenize_documents
from latentlm.errors import DataError, InputError


def test_txt_blank_line_and_line_documents(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("first doc\nstill first\n\nsecond doc\n")
    b = tmp_path / "b.txt"
    b.write_text("one\ntwo\nthree\n")
    assert read_documents(a) == ["first doc\nstill first", "second doc"]
    assert read_documents(b) == ["one", "two", "three"]


def test_jsonl_and_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.jsonl").write_text(json.dumps({"text": "hello"}) + "\n\n" + json.dumps({"text": "world"}))
    (tmp_path / "y.txt").write_text("plain")
    (tmp_path / "ignored.csv").write_text("a,b")
    assert read_documents(tmp_path) == ["hello", "world", "plain"]


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p / "missing.txt", "does not exist"),
        (lambda p: (p / "e.txt").write_text("") and p / "e.txt" or p / "e.txt", "no text found"),
        (lambda p: (p / "bad.txt").write_bytes(b"ok \xff\xfe bad") and p / "bad.txt", "not valid UTF-8"),
        (lambda p: (p / "empty_dir").mkdir() or p / "empty_dir", "contains no .txt or .jsonl"),
        (lambda p: (p / "b.jsonl").write_text("{not json}\n") and p / "b.jsonl", "invalid JSON"),
        (lambda p: (p / "c.jsonl").write_text('{"body": "x"}\n') and p / "c.jsonl", "string 'text' field"),
        (lambda p: (p / "d.csv").write_text("x") and p / "d.csv", "unsupported file type"),
    ],
)
def test_bad_data_is_a_clear_error(tmp_path, setup, message):
    with pytest.raises(DataError, match=message):
        read_documents(setup(tmp_path))


def test_no_paths():
    with pytest.raises(DataError, match="no data path"):
        read_documents([])


def test_hf_loader_reads_local_files(tmp_path):
    pytest.importorskip("datasets")
    from latentlm.data import load_hf_dataset

    f = tmp_path / "d.json"
    f.write_text("\n".join(json.dumps({"text": t}) for t in ["a b", "c d"]))
    docs = load_hf_dataset(str(tmp_path), "train")
    assert docs == ["a b", "c d"]


def _docs(tokenizer, texts):
    return tokenize_documents(texts, tokenizer)


def test_stream_packing_is_deterministic_and_inserts_eot(tiny_tokenizer, synthetic_texts):
    docs = _docs(tiny_tokenizer, synthetic_texts[:50])
    eot = tiny_tokenizer.eos_token_id
    a = PackedBatches(docs, seq_len=32, batch_size=4, eot_id=eot, seed=1)
    b = PackedBatches(docs, seq_len=32, batch_size=4, eot_id=eot, seed=1)
    c = PackedBatches(docs, seq_len=32, batch_size=4, eot_id=eot, seed=2)
    assert a.batch(5)["input_ids"].equal(b.batch(5)["input_ids"])
    assert not a.batch(5)["input_ids"].equal(a.batch(6)["input_ids"])
    assert not a.batch(5)["input_ids"].equal(c.batch(5)["input_ids"])
    assert a.batch(0)["input_ids"].shape == (4, 32)
    assert int((a.stream == eot).sum()) == 50  # one end-of-text after every document
    windows = a.sequential_batches()
    assert sum(w["input_ids"].shape[0] for w in windows) == (len(a.stream) - 32) // 32 + 1


def test_document_layout_pads_and_masks(tiny_tokenizer, synthetic_texts):
    docs = _docs(tiny_tokenizer, synthetic_texts[:8])
    pb = PackedBatches(docs, seq_len=256, batch_size=8, eot_id=1, pad_id=0, layout="document")
    batch = pb.sequential_batches()[0]
    for row, mask, doc in zip(batch["input_ids"], batch["attention_mask"], docs):
        n = len(doc)
        assert row[:n].tolist() == doc.tolist() and row[n] == 1 and mask.sum() == n + 1
        assert (row[n + 1 :] == 0).all()


def test_document_layout_truncates_without_end_of_text():
    """A document longer than the row is cut, not ended: no end-of-text inside a truncated row."""
    docs = [np.arange(2, 30), np.arange(2, 17), np.arange(2, 18)]  # 28, 15 and 16 tokens
    pb = PackedBatches(docs, seq_len=16, batch_size=3, eot_id=1, pad_id=0, layout="document")
    ids, mask = (pb.sequential_batches()[0][k] for k in ("input_ids", "attention_mask"))
    assert ids[0].tolist() == list(range(2, 18)) and mask[0].all()  # cut at 16 tokens, no end-of-text
    assert ids[1].tolist() == [*range(2, 17), 1] and mask[1].all()  # 15 tokens fit with their end-of-text
    assert ids[2].tolist() == list(range(2, 18)) and mask[2].all()  # 16 tokens: a full row, not ended


def test_packing_bad_input(tiny_tokenizer):
    with pytest.raises(InputError, match="batch_size"):
        PackedBatches([np.arange(100)], seq_len=8, batch_size=0, eot_id=1)
    with pytest.raises(DataError, match="fewer than one window"):
        PackedBatches([np.arange(5)], seq_len=64, batch_size=2, eot_id=1)
    with pytest.raises(DataError, match="no non-empty"):
        PackedBatches([np.arange(0)], seq_len=8, batch_size=2, eot_id=1)


def test_split_documents():
    docs = [f"d{i}" for i in range(100)]
    train, valid = split_documents(docs, 0.1, seed=0)
    assert len(valid) == 10 and not set(train) & set(valid) and len(train) + len(valid) == 100
    assert split_documents(docs, 0.1, seed=0) == (train, valid)
