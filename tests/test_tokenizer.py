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


def test_any_autotokenizer_folder_serves_our_models(synthetic_texts, synthetic_files, tmp_path):
    """A WordPiece tokenizer made elsewhere, with an end-of-text token but no padding or mask: the special
    tokens are added after its vocabulary, an AR trains with it and saves the completed tokenizer."""
    import json

    import pytest
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from latentlm.data.tokenizer import load_tokenizer
    from latentlm.recipes import run_training

    raw = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(synthetic_texts, trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[UNK]", "</s>"]))
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", eos_token="</s>").save_pretrained(tmp_path / "wp")
    with pytest.warns(UserWarning, match="no pad, mask token"):
        tok = load_tokenizer(tmp_path / "wp")
    n = len(tok)
    assert tok.pad_token_id == n - 2 and tok.mask_token_id == n - 1 and tok.eos_token_id == raw.token_to_id("</s>")
    with pytest.warns(UserWarning):
        run = run_training("ar", [synthetic_files / "train.jsonl"], tmp_path / "ar", preset="cpu-tiny",
                           overrides=["train.steps=2", "model.dim=32", "model.depth=1", "train.batch_size=4",
                                      "data.seq_len=32"], tokenizer=tmp_path / "wp", progress=False)
    assert json.loads((run.out_dir / "config.json").read_text())["vocab_size"] == n
    saved = load_tokenizer(run.out_dir)  # complete now: no warning, the same ids
    assert saved.get_vocab() == tok.get_vocab()
