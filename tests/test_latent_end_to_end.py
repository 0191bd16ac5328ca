"""Denoiser training through the CLI, the exported pipeline folder, generate / info / nll."""

import json

import pytest
import torch

from latentlm.cli import main
from latentlm.errors import CheckpointError
from latentlm.eval.models import load_language_model


@pytest.fixture(scope="module")
def pipeline_dir(tiny_autoencoder_dir, synthetic_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("latent") / "pipe"
    assert main(["train", "denoiser", "--preset", "cpu-tiny", "--autoencoder", str(tiny_autoencoder_dir),
                 "--data", str(synthetic_files / "train.jsonl"), "--valid", str(synthetic_files / "valid.jsonl"),
                 "--out", str(out), "--set", "train.steps=20", "--set", "train.eval_every=10",
                 "--set", "loss.row_lengths=2"]) == 0
    return out


def test_export_is_a_complete_pipeline(pipeline_dir, capsys):
    for part in ("model_index.json", "tokenizer", "autoencoder", "denoiser", "scheduler"):
        assert (pipeline_dir / part).exists(), part
    assert main(["info", "--model", str(pipeline_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["class"] == "LatentDiffusionPipeline"
    assert info["parameters"] == info["components"]["autoencoder"] + info["components"]["denoiser"]
    # the denoiser's run: its own parameters trained, its autoencoder's frozen
    assert info["training"]["trained_params"] == info["components"]["denoiser"]
    assert info["training"]["frozen_params"] == info["components"]["autoencoder"]


def test_generate_cli(pipeline_dir, capsys):
    assert main(["generate", "--model", str(pipeline_dir), "once upon a time", "--max-new-tokens", "16",
                 "--num-inference-steps", "4", "--num-samples-per-prompt", "2", "--scheduler", "dpm++"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("once upon a time") for line in lines)
    assert "(NFE 4)" in captured.err
    assert main(["generate", "--model", str(pipeline_dir), "once upon a time", "--max-new-tokens", "16",
                 "--num-inference-steps", "4", "--scheduler", "ddpm", "--guidance-scale", "2", "--guidance-interval", "0", "0.6"]) == 0
    assert "(NFE 6)" in capsys.readouterr().err  # guided at t = 0.5 and 0.25 of 1, 0.75, 0.5, 0.25
    assert main(["generate", "--model", str(pipeline_dir), "hi", "--decoder-temperature", "-1"]) == 2
    assert "decoder_temperature must be a finite number >= 0" in capsys.readouterr().err
    assert main(["generate", "--model", str(pipeline_dir), "once upon a time", "--max-new-tokens", "8",
                 "--num-inference-steps", "2", "--decoder-temperature", "1"]) == 0


def test_latent_adapter_nll_is_a_positive_bound(pipeline_dir):
    lm = load_language_model(pipeline_dir)
    res = lm.nll(["lily had a red kite.", "the sun was warm."], n_samples=4)
    assert res.nats_per_token > 0 and res.stderr > 0 and not res.exact
    cond = lm.nll(["lily had a red kite."], prefix_len=2, n_samples=4)
    assert cond.n_tokens == len(lm.tokenizer("lily had a red kite.")["input_ids"]) - 2 + 1
    long = lm.nll(["lily had a red kite. " * 60], n_samples=2)  # scored on the tokens every model scores
    assert long.n_tokens == lm.context - 1 and long.per_text_tokens == [lm.context - 1]
    out = lm.generate(["lily had"], 8, generator=torch.Generator().manual_seed(0), num_inference_steps=3)
    assert out.texts[0].startswith("lily had") and out.nfe == 3


def test_denoiser_needs_an_autoencoder(synthetic_files, tmp_path, capsys):
    assert main(["train", "denoiser", "--data", str(synthetic_files / "train.jsonl"), "--out", str(tmp_path)]) == 2
    assert "needs --autoencoder" in capsys.readouterr().err


def test_denoiser_fine_tunes_from_its_pipeline(pipeline_dir, tiny_autoencoder_dir, synthetic_files, tmp_path, capsys):
    common = ["train", "denoiser", "--preset", "cpu-tiny", "--data", str(synthetic_files / "train.jsonl"),
              "--valid", str(synthetic_files / "valid.jsonl"), "--init-from", str(pipeline_dir),
              "--set", "train.steps=2", "--set", "loss.row_lengths=2"]
    assert main([*common, "--autoencoder", str(tiny_autoencoder_dir), "--out", str(tmp_path / "ft")]) == 0
    assert (tmp_path / "ft" / "model_index.json").is_file()
    with pytest.warns(UserWarning, match="schedule 'cosine' -> 'shifted-cosine'"):
        assert main([*common, "--autoencoder", str(tiny_autoencoder_dir), "--out", str(tmp_path / "sched"),
                     "--set", "model.schedule=shifted-cosine"]) == 0
    other = tmp_path / "other_ae"  # same architecture, other weights: the denoiser's latents would mean nothing
    assert main(["train", "autoencoder", "--preset", "cpu-tiny", "--data", str(synthetic_files / "train.jsonl"),
                 "--tokenizer", str(tiny_autoencoder_dir), "--out", str(other), "--set", "train.steps=1"]) == 0
    capsys.readouterr()
    assert main([*common, "--autoencoder", str(other), "--out", str(tmp_path / "bad")]) == 2
    assert "trained on another autoencoder" in capsys.readouterr().err


@pytest.mark.slow
def test_two_time_experts_train_into_one_pipeline(tiny_autoencoder_dir, synthetic_files, tmp_path, capsys):
    out = tmp_path / "experts"
    cmd = ["train", "denoiser", "--preset", "cpu-tiny", "--autoencoder", str(tiny_autoencoder_dir),
           "--data", str(synthetic_files / "train.jsonl"), "--valid", str(synthetic_files / "valid.jsonl"),
           "--out", str(out), "--set", "train.steps=3", "--set", "train.eval_every=0", "--set", "experts.boundary=0.4",
           "--set", 'experts.low_noise=["loss.time_mean=-0.5", "train.steps=2"]']
    assert main(cmd) == 0
    index = json.loads((out / "model_index.json").read_text())
    assert index["boundary"] == 0.4 and index["denoiser_2"][1] == "LatentDenoiser"
    high = json.loads((out / "high_noise" / "run_config.json").read_text())
    low = json.loads((out / "low_noise" / "run_config.json").read_text())
    assert (high["loss"]["time_mean"], high["train"]["steps"]) == (0.25, 3)  # the preset's
    assert (low["loss"]["time_mean"], low["train"]["steps"]) == (-0.5, 2)  # with the low-noise overrides
    capsys.readouterr()
    assert main(["info", "--model", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["boundary"] == 0.4 and set(info["components"]) == {"autoencoder", "denoiser", "denoiser_2"}
    assert main(["generate", "--model", str(out), "once upon a time", "--max-new-tokens", "8", "--num-inference-steps", "4"]) == 0
    weights = sorted((out / "denoiser_2").glob("*.safetensors"))[0].read_bytes()
    assert main(cmd) == 0  # both runs are complete: resumed at their last step, nothing retrained
    assert sorted((out / "denoiser_2").glob("*.safetensors"))[0].read_bytes() == weights
    capsys.readouterr()
    assert main([*cmd[:-4], "--set", "experts.boundary=1.5"]) == 2
    assert "experts.boundary must be a time in (0, 1)" in capsys.readouterr().err


def test_block_causal_denoiser_trains_and_samples_in_its_presets_mode(tiny_autoencoder_dir, synthetic_files,
                                                                       tmp_path, capsys):
    out = tmp_path / "blocks"
    cmd = ["train", "denoiser", "--preset", "cpu-tiny", "--autoencoder", str(tiny_autoencoder_dir),
           "--data", str(synthetic_files / "train.jsonl"), "--out", str(out), "--set", "train.steps=3",
           "--set", "train.eval_every=0", "--set", "model.block_size=4", "--set", "model.sampling_mode=block-ar"]
    assert main(cmd) == 0
    capsys.readouterr()
    assert main(["info", "--model", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sampling_mode"] == "block-ar" and info["denoiser"]["block_size"] == 4
    gen = ["generate", "--model", str(out), "once upon a time", "--max-new-tokens", "32", "--num-inference-steps", "4"]
    assert main(gen) == 0
    assert "(NFE 8)" in capsys.readouterr().err  # 32 tokens = 8 latents = 2 blocks of 4 steps: block-ar
    assert main([*gen, "--mode", "parallel"]) == 0
    assert "(NFE 4)" in capsys.readouterr().err
    assert main([*gen, "--mode", "staggered", "--window-blocks", "2"]) == 0
    assert "(NFE 6)" in capsys.readouterr().err  # the second block enters after 2 steps
    assert main([*gen, "--mode", "staggered", "--window-blocks", "9"]) == 2  # 36 latents in flight, 8 fit
    assert "use window_blocks <= 8" in capsys.readouterr().err
    for bad, message in ((["model.block_size=5"], "must divide the window of 32"),
                         (["model.block_size=0"], "block_size must be a positive number"),
                         (["model.sampling_mode=staggered"], "needs a block-causal denoiser"),
                         (["model.block_size=4", "model.sampling_mode=staggered", "model.window_blocks=16"],
                          "puts 64 latents in flight"),
                         (["model.sampling_mode=sideways"], "sampling_mode must be one of")):
        assert main([*cmd[:-4], "--out", str(tmp_path / "bad"), *[x for b in bad for x in ("--set", b)]]) == 2
        assert message in capsys.readouterr().err


def test_decoder_adaptation_trains_the_decoder_alone_and_exports_the_pipeline(pipeline_dir, synthetic_files, tmp_path,
                                                                               capsys):
    from latentlm.cost import run_cost
    from latentlm.loading import load_pipeline

    out = tmp_path / "adapted"
    assert main(["train", "decoder", "--preset", "cpu-tiny", "--pipeline", str(pipeline_dir),
                 "--data", str(synthetic_files / "train.jsonl"), "--valid", str(synthetic_files / "valid.jsonl"),
                 "--out", str(out), "--set", "train.steps=3", "--set", "train.eval_every=3"]) == 0
    before, after = load_pipeline(pipeline_dir), load_pipeline(out)
    old, new = before.autoencoder.state_dict(), after.autoencoder.state_dict()
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed and all(k.startswith(("from_latent.", "decoder.", "head.")) for k in changed), changed
    assert all(torch.equal(a, b) for a, b in zip(before.denoiser.state_dict().values(),
                                                 after.denoiser.state_dict().values()))
    assert after.config.training_times == before.config.training_times
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"estimate_acc", "noisy_acc"} <= set(metrics[0])
    # its cost: the decoder side trained, the encoder and the denoiser making its estimates frozen
    cost = run_cost(out)
    ae_params = sum(p.numel() for p in after.autoencoder.parameters())
    assert 0 < cost.trained_params < ae_params and cost.flops_per_token > 0
    assert cost.trained_params + cost.frozen_params == ae_params + sum(p.numel() for p in after.denoiser.parameters())
    rows = json.loads((pipeline_dir / "run_config.json").read_text())["loss"]["row_lengths"]  # 2 here
    assert json.loads((out / "run_config.json").read_text())["denoiser_loss"]["row_lengths"] == rows
    assert cost.tokens == 3 * 32 * rows * after.autoencoder.config.max_seq_len  # 3 steps of 32 rows
    capsys.readouterr()
    common = ["--data", str(synthetic_files / "train.jsonl"), "--out", str(tmp_path / "x"), "--preset", "cpu-tiny"]
    assert main(["train", "decoder", *common]) == 2
    assert "needs --pipeline" in capsys.readouterr().err
    assert main(["train", "ar", *common, "--pipeline", str(pipeline_dir)]) == 2
    assert "--pipeline is for decoder adaptation" in capsys.readouterr().err
    # rows are the autoencoder's lengths: a data.seq_len would be ignored, so it is refused
    assert main(["train", "decoder", *common, "--pipeline", str(pipeline_dir), "--set", "data.seq_len=64"]) == 2
    assert "does not apply to a decoder run" in capsys.readouterr().err
    assert main(["train", "denoiser", *common, "--autoencoder", str(pipeline_dir / "autoencoder"),
                 "--set", "data.seq_len=64"]) == 2
    assert "set loss.row_lengths to 1 or 2 instead" in capsys.readouterr().err
    # an adapted pipeline is adapted again with its denoiser's rows; a damaged record is a typed error
    from latentlm.recipes import _saved_denoiser_loss

    assert _saved_denoiser_loss(out).row_lengths == rows
    saved = json.loads((out / "run_config.json").read_text())
    (out / "run_config.json").write_text(json.dumps({**saved, "denoiser_loss": {"row_lengths": "two"}}))
    with pytest.raises(CheckpointError, match=r"run_config.json \[denoiser_loss\]"):
        run_cost(out)
    assert main(["train", "decoder", *common, "--pipeline", str(out)]) == 2
    assert "denoiser_loss" in capsys.readouterr().err
