"""Learning test: the cpu-tiny autoencoder reconstructs held-out synthetic stories."""

import json

import pytest

from latentlm.autoencoder.evaluation import evaluate_autoencoder
from latentlm.cli import main
from latentlm.data import load_tokenizer, read_documents
from latentlm.loading import load_model


@pytest.mark.slow
def test_cpu_tiny_reconstructs_synthetic_stories(tiny_autoencoder_dir, synthetic_files):
    model = load_model(tiny_autoencoder_dir)
    tok = load_tokenizer(tiny_autoencoder_dir)
    texts = read_documents(synthetic_files / "valid.jsonl")
    result = evaluate_autoencoder(model, tok, texts, max_texts=100, progress=False, alignment_pairs=200)
    acc = result["reconstruction"]["token_accuracy"]
    print(json.dumps({"token_accuracy": acc, "interpolation": result["interpolation"]}))
    assert acc[0] >= 0.99, acc  # clean
    assert acc == sorted(acc, reverse=True) or acc[0] >= acc[-1]  # noise hurts, never helps overall
    assert result["interpolation"] is not None  # synthetic stories: interpolation is measured
    assert 0 < result["latent_statistics"]["effective_rank"] <= model.config.latent_dim


def test_eval_cli_writes_json(tiny_autoencoder_dir, synthetic_files, tmp_path, capsys):
    out = tmp_path / "e.json"
    assert main(["eval", "autoencoder", "--model", str(tiny_autoencoder_dir), "--data",
                 str(synthetic_files / "valid.jsonl"), "--max-texts", "20", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(result["reconstruction"]["token_accuracy"]) == 7
    assert "robustness area" in capsys.readouterr().out


def test_eval_cli_rejects_other_models_and_empty_data(tiny_autoencoder_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert main(["eval", "autoencoder", "--model", str(tiny_autoencoder_dir), "--data", str(empty)]) == 2
    assert "no text found" in capsys.readouterr().err
