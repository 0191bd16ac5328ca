"""Fine-tuning: ``run_training(..., init_from=DIR)`` / ``latentlm train KIND --init-from DIR``."""

import json

import pytest
import torch

from latentlm.data import load_tokenizer
from latentlm.errors import CheckpointError, ConfigError
from latentlm.loading import load_model
from latentlm.recipes import (
    RunContext,
    get_recipe,
    load_initial_weights,
    resolve_run_config,
    run_training,
)


@pytest.fixture(scope="module")
def small_ar(synthetic_files, tiny_tokenizer, tmp_path_factory):
    """A cpu-tiny AR trained for 3 steps with a 512-token tokenizer (the default would train 4,096)."""
    root = tmp_path_factory.mktemp("ft")
    tiny_tokenizer.save_pretrained(root / "tok512")
    run_training("ar", [synthetic_files / "train.jsonl"], root / "ar", preset="cpu-tiny",
                 overrides=["train.steps=3"], tokenizer=root / "tok512", progress=False)
    return root


def test_loaded_weights_are_the_source_weights(small_ar):
    source = load_model(small_ar / "ar")
    cfg = resolve_run_config("ar", "cpu-tiny")
    fresh = get_recipe("ar").build_model(cfg, load_tokenizer(small_ar / "ar"), RunContext())
    assert not all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), source.state_dict().values()))
    load_initial_weights(fresh, "ar", small_ar / "ar")
    for k, v in source.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_fine_tune_uses_the_source_tokenizer_and_records_it(small_ar, synthetic_files):
    out = small_ar / "ft"
    result = run_training("ar", [synthetic_files / "train.jsonl"], out, preset="cpu-tiny",
                          overrides=["train.steps=2"], init_from=small_ar / "ar", progress=False)
    assert result.step == 2
    assert load_tokenizer(out).get_vocab() == load_tokenizer(small_ar / "ar").get_vocab()  # 512, not a new 4,096
    assert json.loads((out / "run_config.json").read_text())["init_from"] == str(small_ar / "ar")


def test_bad_starting_points_are_clear_errors(small_ar, synthetic_files, tmp_path):
    data = [synthetic_files / "train.jsonl"]
    with pytest.raises(ConfigError, match="another architecture"):
        run_training("ar", data, tmp_path / "a", preset="cpu-tiny", overrides=["train.steps=1", "model.dim=64"],
                     init_from=small_ar / "ar", progress=False)
    with pytest.raises(ConfigError, match="holds a CausalLM; a mdlm run starts from a MaskedDiffusionLM"):
        run_training("mdlm", data, tmp_path / "b", preset="cpu-tiny", overrides=["train.steps=1"],
                     init_from=small_ar / "ar", progress=False)
    with pytest.raises(ConfigError, match="is not the tokenizer of"):
        run_training("ar", data, tmp_path / "c", preset="cpu-tiny", overrides=["train.steps=1"],
                     tokenizer=synthetic_files / "tokenizer", init_from=small_ar / "ar", progress=False)
    with pytest.raises(ConfigError, match="does not exist: pass the folder of a trained ar"):
        run_training("ar", data, tmp_path / "d", preset="cpu-tiny", init_from=tmp_path / "missing", progress=False)
    (tmp_path / "text").mkdir()
    for bad, message in ((tmp_path / "text", "is not a saved latentlm model"), ("", "does not exist")):
        with pytest.raises((ConfigError, CheckpointError), match=message):
            run_training("ar", data, tmp_path / "e", preset="cpu-tiny", init_from=bad, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()  # nothing written before the check
