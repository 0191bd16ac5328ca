"""Any saved transformers causal LM next to ours: generate(), exact likelihood, every table of compare."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from latentlm.baselines import CausalLM
from latentlm.data.synthetic import generate_stories, write_jsonl
from latentlm.data.tokenizer import train_tokenizer
from latentlm.errors import CheckpointError
from latentlm.eval.compare import CompareConfig, compare
from latentlm.eval.models import HFCausalLMAdapter, load_language_model


@pytest.fixture(scope="module")
def folders(tmp_path_factory, synthetic_texts, tiny_tokenizer):
    """A tiny random GPT-2 with a tokenizer of its own (300 tokens), and our AR with the shared one."""
    root = tmp_path_factory.mktemp("hf")
    tok = train_tokenizer(synthetic_texts, vocab_size=300)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=32, n_layer=1, n_head=4,
                               bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(root / "gpt2")
    tok.save_pretrained(root / "gpt2")
    CausalLM(vocab_size=len(tiny_tokenizer), dim=32, depth=1, n_heads=4, max_seq_len=256).save_pretrained(root / "ar")
    tiny_tokenizer.save_pretrained(root / "ar")
    write_jsonl(generate_stories(40, seed=7), root / "valid.jsonl")
    write_jsonl(generate_stories(100, seed=8), root / "train.jsonl")
    return root


def test_likelihood_is_the_one_computed_from_the_models_logits(folders):
    lm = load_language_model(folders / "gpt2")
    assert isinstance(lm, HFCausalLMAdapter) and lm.exact and lm.context == 256
    texts = ["lily had a red kite.", "the sun was warm and the dog ran to the park."]
    out = lm.nll(texts, prefix_len=2)
    by_hand = 0.0
    for text in texts:
        ids = [lm.tokenizer.eos_token_id] + lm.tokenizer(text)["input_ids"] + [lm.tokenizer.eos_token_id]
        logp = lm.model(torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
        by_hand -= sum(float(logp[i, ids[i + 1]]) for i in range(2, len(ids) - 1))  # after 2 tokens, eot included
    assert out.exact and out.stderr == 0
    assert out.nats_per_token * out.n_tokens == pytest.approx(by_hand, rel=1e-5)
    assert out.n_tokens == sum(len(lm.tokenizer(t)["input_ids"]) - 1 for t in texts)


def test_generation_is_seeded_and_keeps_the_prompts(folders):
    lm = load_language_model(folders / "gpt2")
    prompts = ["lily had", "once upon a time there was a"]
    a = lm.generate(prompts, 12, generator=torch.Generator().manual_seed(3))
    b = lm.generate(prompts, 12, generator=torch.Generator().manual_seed(3))
    c = lm.generate(prompts, 12, generator=torch.Generator().manual_seed(4))
    assert a.texts == b.texts and a.texts != c.texts
    assert all(t.startswith(p) for t, p in zip(a.texts, prompts)) and 0 < a.nfe <= 12
    greedy = lm.generate(prompts, 12, temperature=0)
    assert greedy.texts == lm.generate(prompts, 12, temperature=0, generator=torch.Generator().manual_seed(9)).texts
    assert lm.generate(prompts, 12, stop_at_eot=False).nfe == 12  # every row to the asked length (timing)


def test_compare_reports_a_transformers_model_in_every_table(folders, tmp_path):
    cfg = CompareConfig(prompts=6, max_new_tokens=12, nll_texts=4, cloze_items=4, nfe_sweep=(2,), sweep_prompts=3,
                        speed_lengths=(8,), speed_batch=2, window=4, bootstrap=10)
    res = compare({"ar": folders / "ar", "gpt2": folders / "gpt2"}, folders / "valid.jsonl", tmp_path / "r",
                  train=folders / "train.jsonl", cfg=cfg, progress=False)
    s = res["sections"]
    assert s["likelihood/gpt2"]["exact"] and s["likelihood/gpt2"]["bits_per_char"] > 0
    assert "gpt2" in s["quality"]["rows"] and "gpt2" in s["consistency"]["probe"]
    assert 0 <= s["cloze/gpt2"]["accuracy"] <= 1
    assert {r["model"] for r in s["nfe_sweep"]} == {"ar", "gpt2"}
    assert {r["model"] for r in s["speed"]} == {"ar", "gpt2"}
    report = (tmp_path / "r" / "report.md").read_text()
    assert report.count("| gpt2 |") >= 4


def test_a_transformers_folder_without_a_tokenizer_is_refused(folders, tmp_path):
    import shutil

    shutil.copytree(folders / "gpt2", tmp_path / "m")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / "m" / f).unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_language_model(tmp_path / "m")


def test_the_command_line_generates_with_a_transformers_model(folders, capsys):
    from latentlm.cli import main

    assert main(["generate", "--model", str(folders / "gpt2"), "lily had", "--max-new-tokens", "6",
                 "--seed", "2"]) == 0
    assert capsys.readouterr().out.startswith("lily had")
