"""The generability report (latentlm eval latents) on cases with known answers."""

import json
import math

import pytest
import torch

from latentlm.cli import main
from latentlm.diffusion.schedules import NoiseSchedule
from latentlm.eval.latents import (
    latent_geometry,
    partial_prompt_groups,
    robustness,
    split_reconstruction,
)


class OneHotAutoencoder(torch.nn.Module):
    """An identity-like autoencoder: a latent is the one-hot codes of its k tokens side by side (scaled to
    norm sqrt(d)), decoded by the argmax of each code. It reconstructs every row exactly."""

    def __init__(self, vocab: int, k: int = 2, max_seq_len: int = 64, pad: int = 0, eot: int = 1) -> None:
        super().__init__()
        self.vocab, self.k = vocab, k

        class Config:
            tokens_per_latent, max_seq_len, pad_token_id, eot_token_id = k, 64, pad, eot

        Config.max_seq_len = max_seq_len
        self.config = Config

    def encode(self, ids, mask=None):
        pad = (-ids.shape[1]) % self.k
        ids = torch.nn.functional.pad(ids, (0, pad), value=self.config.pad_token_id)
        z = torch.nn.functional.one_hot(ids, self.vocab).float().reshape(len(ids), -1, self.k * self.vocab)
        return z * math.sqrt(self.k * self.vocab) / math.sqrt(self.k)

    def decode_tokens(self, z, temperature=0.0, generator=None):
        return z.reshape(len(z), -1, self.vocab).argmax(-1)


@pytest.fixture
def stories(synthetic_texts):
    return list(synthetic_texts[:24])


def test_an_identity_like_autoencoder_reconstructs_every_split_and_partial_group(tiny_tokenizer, stories):
    from latentlm.data.tokenizer import sentence_end_ids

    ae = OneHotAutoencoder(len(tiny_tokenizer), pad=tiny_tokenizer.pad_token_id, eot=tiny_tokenizer.eos_token_id)
    ends = torch.tensor(sentence_end_ids(tiny_tokenizer))
    rows = {r.split: r for r in split_reconstruction(ae, tiny_tokenizer, stories, ends, batch_size=8)}
    assert set(rows) == {"document", "token", "sentence"}
    for r in rows.values():
        assert r.accuracy == 1.0 and r.entropy == pytest.approx(r.real_entropy) and r.n_tokens > 0
    assert rows["document"].n_tokens > rows["token"].n_tokens  # a continuation is a document less its prompt
    partial = partial_prompt_groups(ae, tiny_tokenizer, stories, batch_size=8)
    assert partial["accuracy"] == 1.0 and partial["n_prompts"] > 0
    geometry = latent_geometry(ae, tiny_tokenizer, stories, batch_size=8)
    assert geometry["round_trip_drift"] == 0.0
    assert geometry["mean_norm"] == pytest.approx(math.sqrt(geometry["dim"]))  # the norm of every latent
    assert 1 <= geometry["participation_ratio"] <= geometry["dim"]
    # decoded from z_t / alpha_t: exact at low noise, near chance at pure noise
    curve = robustness(ae, tiny_tokenizer, stories, NoiseSchedule("cosine"), (0.02, 0.99), batch_size=8)
    assert curve[0]["accuracy"] == 1.0 and curve[1]["accuracy"] < 0.2 and curve[1]["noise_per_dim"] > 10


def test_a_decoder_that_drops_a_group_position_is_seen(tiny_tokenizer, stories):
    """A decoder wrong at the second token of every group: half the tokens of every split, and exactly the
    partial groups of two tokens (a prompt ending one token into a group never sees the error)."""
    from latentlm.data.tokenizer import sentence_end_ids

    class SecondWrong(OneHotAutoencoder):
        def decode_tokens(self, z, temperature=0.0, generator=None):
            out = super().decode_tokens(z).reshape(len(z), -1, self.k).clone()
            out[..., 1] = (out[..., 1] + 1) % self.vocab
            return out.reshape(len(z), -1)

    ae = SecondWrong(len(tiny_tokenizer), pad=tiny_tokenizer.pad_token_id, eot=tiny_tokenizer.eos_token_id)
    rows = split_reconstruction(ae, tiny_tokenizer, stories, torch.tensor(sentence_end_ids(tiny_tokenizer)))
    assert all(0.4 < r.accuracy < 0.6 for r in rows)
    assert partial_prompt_groups(ae, tiny_tokenizer, stories)["accuracy"] == 1.0  # k = 2: partial = 1 token
    assert latent_geometry(ae, tiny_tokenizer, stories)["round_trip_drift"] > 0.5


def test_eval_latents_cli_on_a_trained_autoencoder(tiny_autoencoder_dir, synthetic_files, tmp_path, capsys):
    out = tmp_path / "latents.json"
    assert main(["eval", "latents", "--model", str(tiny_autoencoder_dir), "--data",
                 str(synthetic_files / "valid.jsonl"), "--max-texts", "16", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    document = report["reconstruction"][0]
    assert document["split"] == "document" and document["accuracy"] > 0.9
    assert report["robustness"][0]["accuracy"] > report["robustness"][-1]["accuracy"]
    assert "| document |" in capsys.readouterr().out
    assert main(["eval", "latents", "--model", str(tiny_autoencoder_dir), "--data",
                 str(synthetic_files / "valid.jsonl"), "--max-texts", "0"]) == 2
