"""Token shards on disk: the batches of the documents in memory, resumable writing, corruption, ranks."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from latentlm.cli import main
from latentlm.data.packing import PackedBatches, tokenize_documents
from latentlm.data.readers import corpus_documents, read_documents
from latentlm.data.shards import TokenShards, write_shards
from latentlm.data.synthetic import generate_stories
from latentlm.errors import ConfigError, DataError

SCRIPTS = Path(__file__).parent / "scripts"


@pytest.fixture(scope="module")
def corpus(synthetic_files, tmp_path_factory):
    """Shards of the synthetic training stories, in several files of at most 20,000 tokens."""
    from latentlm.data.tokenizer import load_tokenizer

    out = tmp_path_factory.mktemp("shards") / "train"
    tok = load_tokenizer(synthetic_files / "tokenizer")
    write_shards(read_documents(synthetic_files / "train.jsonl"), tok, out, shard_tokens=20_000, progress=False)
    return out, tok


def _sha(folder: Path) -> list[str]:
    return [s["sha256"] for s in json.loads((folder / "manifest.json").read_text())["shards"]]


@pytest.mark.parametrize("layout", ["stream", "document"])
def test_shards_give_the_batches_of_the_documents_in_memory(corpus, synthetic_files, layout):
    out, tok = corpus
    shards = TokenShards(out)
    docs = tokenize_documents(read_documents(synthetic_files / "train.jsonl"), tok)
    assert len(shards.manifest["shards"]) > 3 and shards.manifest["dtype"] == "uint16"
    assert shards.num_documents == len(docs) and len(shards) == sum(len(d) + 1 for d in docs)
    for i in (0, 1, len(docs) // 2, len(docs) - 1):
        assert np.array_equal(shards.document(i), docs[i])
    kw = dict(seq_len=48, batch_size=16, eot_id=tok.eos_token_id, pad_id=tok.pad_token_id, seed=5, layout=layout)
    disk, memory = PackedBatches(shards, **kw), PackedBatches(docs, **kw)
    assert disk.num_tokens == memory.num_tokens
    for step in (0, 7, 123):
        a, b = disk.batch(step), memory.batch(step)
        assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in ("input_ids", "attention_mask"))
        halves = [disk.batch(step, rank=r, world=2)["input_ids"] for r in (0, 1)]
        assert np.array_equal(np.stack([halves[0], halves[1]], 1).reshape(16, 48), a["input_ids"].numpy())
    first = disk.sequential_batches(3)
    assert all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(first, memory.sequential_batches(3)))


def test_a_corrupt_or_missing_shard_is_refused_by_name(corpus, tmp_path):
    out, tok = corpus
    copy = tmp_path / "c"
    shutil.copytree(out, copy)
    with open(copy / "shard_00002.bin", "r+b") as f:
        f.seek(10)
        f.write(b"\xff\xff")
    with pytest.raises(DataError, match="shard_00002.bin is corrupt"):
        TokenShards(copy)
    (copy / "shard_00002.bin").unlink()
    with pytest.raises(DataError, match="shard_00002.bin is missing"):
        TokenShards(copy)
    with pytest.raises(DataError, match="another tokenizer"):
        from latentlm.data.tokenizer import train_tokenizer

        write_shards(["a b c"], train_tokenizer(["a b c d e f"] * 20, vocab_size=300), out, progress=False)


@pytest.mark.slow
def test_a_killed_tokenization_resumes_to_the_same_files(synthetic_files, tmp_path):
    """SIGKILL once the first shards are written, rerun: the files are those of an uninterrupted run."""
    texts = [s.text for s in generate_stories(8_000, seed=4)]
    (tmp_path / "big.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cmd = [sys.executable, "-m", "latentlm", "data", "tokenize", "--tokenizer", str(synthetic_files / "tokenizer"),
           "--data", str(tmp_path / "big.jsonl"), "--shard-tokens", "10000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    assert subprocess.run([*cmd, "--out", str(tmp_path / "whole")], env=env, capture_output=True).returncode == 0
    proc = subprocess.Popen([*cmd, "--out", str(tmp_path / "cut")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "cut" / "shard_00003.bin").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "manifest.json").exists(), "the run finished before the kill"
    (tmp_path / "cut" / "shard_00004.bin.tmp").write_bytes(b"\x00" * 100)  # as a kill mid-write leaves
    assert main(["data", "tokenize", "--tokenizer", str(synthetic_files / "tokenizer"), "--data",
                 str(tmp_path / "big.jsonl"), "--shard-tokens", "10000", "--out", str(tmp_path / "cut")]) == 0
    assert _sha(tmp_path / "cut") == _sha(tmp_path / "whole") and len(_sha(tmp_path / "whole")) > 5
    assert not list((tmp_path / "cut").glob("*.tmp")) and not (tmp_path / "cut" / "progress.json").exists()


def test_a_local_parquet_file_streams_through_datasets(synthetic_files, tmp_path):
    datasets = pytest.importorskip("datasets")
    docs = read_documents(synthetic_files / "valid.jsonl")
    datasets.Dataset.from_dict({"text": docs, "id": list(range(len(docs)))}).to_parquet(str(tmp_path / "v.parquet"))
    assert list(corpus_documents([tmp_path / "v.parquet"])) == docs
    with pytest.raises(DataError, match="no 'story' column"):
        list(corpus_documents([tmp_path / "v.parquet"], field="story"))
    with pytest.raises(DataError, match="does not exist"):
        list(corpus_documents([tmp_path / "nope.parquet"]))


def test_training_from_shards_gives_the_losses_of_training_from_text(corpus, synthetic_files, tmp_path):
    from latentlm.recipes import run_training

    out, _ = corpus
    common = dict(preset="cpu-tiny", overrides=["train.steps=3", "model.dim=32", "model.depth=1",
                                                "train.batch_size=4", "data.seq_len=32", "train.log_every=1"],
                  valid=[synthetic_files / "valid.jsonl"], tokenizer=synthetic_files / "tokenizer", progress=False)
    text = run_training("ar", [synthetic_files / "train.jsonl"], tmp_path / "text", **common)
    disk = run_training("ar", [out], tmp_path / "disk", **common)
    assert [h["loss"] for h in disk.history] == [h["loss"] for h in text.history]
    assert disk.valid_loss == text.valid_loss
    with pytest.raises(ConfigError, match="--valid"):
        run_training("ar", [out], tmp_path / "x", **{**common, "valid": None})
    with pytest.raises(ConfigError, match="one shard folder"):
        run_training("ar", [out, synthetic_files / "train.jsonl"], tmp_path / "x", **common)


@pytest.mark.slow
def test_two_torchrun_processes_read_disjoint_windows_whose_union_is_the_batch(corpus, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    out, _ = corpus
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = str(SCRIPTS / "shard_reads.py")
    assert subprocess.run([sys.executable, script, str(out), str(tmp_path / "one")], env=env,
                          capture_output=True).returncode == 0
    run = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29541", script, str(out),
                          str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    one = json.loads((tmp_path / "one" / "reads-rank0.json").read_text())
    ranks = [json.loads((tmp_path / "two" / f"reads-rank{r}.json").read_text()) for r in (0, 1)]
    for step, whole in enumerate(one):
        a, b = ranks[0][step], ranks[1][step]
        assert len(a["reads"]) == len(b["reads"]) == 4  # each reads its 4 rows of 8, no more
        assert sorted(a["reads"] + b["reads"]) == sorted(whole["reads"])
        assert [r for pair in zip(a["rows"], b["rows"]) for r in pair] == whole["rows"]  # rows 0::2 and 1::2


def test_a_document_layout_model_trains_from_shards(corpus, synthetic_files, tmp_path):
    """The autoencoder reads whole documents (document layout) from the shards."""
    from latentlm.recipes import run_training

    out, _ = corpus
    run = run_training("autoencoder", [out], tmp_path / "ae", preset="cpu-tiny",
                       overrides=["train.steps=2", "train.batch_size=4", "model.dim=32", "train.eval_batches=1"],
                       valid=[synthetic_files / "valid.jsonl"], progress=False)
    assert run.step == 2 and run.valid_loss is not None
