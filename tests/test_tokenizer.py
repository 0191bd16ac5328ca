import time

import pytest
from transformers import AutoTokenizer

from latentlm.data import load_tokenizer, read_documents, train_tokenizer
from latentlm.errors import CheckpointError, InputError

from .conftest import shared_file


def test_roundtrip_and_special_tokens(tiny_tokenizer, tmp_path):
    tiny_tokenizer.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert (tok.pad_token_id, tok.eos_token_id, tok.mask_token_id) == (0, 1, 2)
    for text in ["once upon a time", "  two  spaces\nand\ttabs ", "émoji 🐍 ü ß 中文", "<eot> literal"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    assert load_tokenizer(tmp_path).get_vocab() == tok.get_vocab()


def test_bad_tokenizer_folders(tmp_path):
    with pytest.raises(CheckpointError, match="not a tokenizer folder"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(InputError, match="vocab_size"):
        train_tokenizer(["abc"], vocab_size=10)


@pytest.mark.data
def test_tinystories_train_under_a_minute_and_valid_roundtrip():
    train = read_documents(shared_file("tinystories", "train.jsonl"))
    valid = read_documents(shared_file("tinystories", "valid.jsonl"))
    t0 = time.perf_counter()
    tok = train_tokenizer(train, 4096)
    elapsed = time.perf_counter() - t0
    print(f"tokenizer trained on {len(train)} stories in {elapsed:.1f} s")
    assert elapsed < 60
    assert len(tok) == 4096
    ids = tok(valid, add_special_tokens=False)["input_ids"]
    assert [tok.decode(x) for x in ids] == valid
