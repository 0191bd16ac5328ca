"""The registry of model kinds: a kind declared in one file (tests/toy_kind.py) trains, saves, loads,
generates and compares through the library's own commands."""

import math
from pathlib import Path

import pytest

from latentlm.cli import main
from latentlm.eval.compare import CompareConfig, compare
from latentlm.eval.models import load_language_model
from latentlm.kinds import GENERATION_OPTIONS, KINDS, ModelKind, get_kind, register_kind

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def toy_kind():
    from tests import toy_kind

    register_kind(toy_kind.KIND)
    yield toy_kind
    KINDS.pop("bigram", None)


def test_a_kind_in_one_file_trains_loads_generates_and_compares(toy_kind, synthetic_files, tmp_path, capsys):
    out = tmp_path / "bigram"
    data = ["--data", str(synthetic_files / "train.jsonl"), "--valid", str(synthetic_files / "valid.jsonl"),
            "--tokenizer", str(synthetic_files / "tokenizer")]
    assert main(["train", "bigram", *data, "--out", str(out), "--set", "train.steps=40", "--set", "train.lr=0.1",
                 "--set", "train.batch_size=16", "--set", "train.warmup_steps=0", "--set", "data.seq_len=64"]) == 0
    lm = load_language_model(out)
    assert isinstance(lm, toy_kind.BigramAdapter)
    nll = lm.nll(["once upon a time there was a little girl named lily."])
    assert nll.exact and nll.nats_per_token < math.log(len(lm.tokenizer)) - 1  # it learned bigrams
    capsys.readouterr()
    assert main(["generate", "--model", str(out), "once upon a time", "--temperature", "0.5",
                 "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.startswith("once upon a time")
    assert main(["generate", "--model", str(out), "hi", "--num-inference-steps", "4"]) == 2
    assert "does not apply to" in capsys.readouterr().err
    cfg = CompareConfig(prompts=8, max_new_tokens=8, nll_texts=4, nfe_sweep=(), cloze_items=4, speed_lengths=(8,),
                        mauve=False, bootstrap=10)
    res = compare({"bigram": out}, synthetic_files / "valid.jsonl", tmp_path / "report", cfg=cfg, progress=False)
    s = res["sections"]
    assert "bigram" in s["quality"]["rows"] and s["likelihood/bigram"]["nats_per_token"] > 0


def test_the_toy_kind_is_named_nowhere_in_the_library():
    files = [p for p in ROOT.joinpath("latentlm").rglob("*.py") if "toy_kind" in p.read_text()]
    assert files == []


def test_a_kind_names_only_options_of_the_vocabulary():
    with pytest.raises(ValueError, match="unknown generation options"):
        ModelKind("x", "x", adapter="a:b", options=("steps",))
    for kind in KINDS.values():
        assert set(kind.options) <= set(GENERATION_OPTIONS)
    assert get_kind("latent").steps_sweep and "num_inference_steps" in get_kind("mdlm").options
