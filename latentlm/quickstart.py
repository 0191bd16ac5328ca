"""The main job (``latentlm quickstart``, run by ``make demo``).

On the built-in synthetic stories, with the ``cpu-tiny`` presets: write the
corpus, train the tokenizer, the autoencoder, the denoiser (exported as a
:class:`~latentlm.LatentDiffusionPipeline`), and the two baselines (MDLM, AR);
then print continuations of a held-out opening by every model and run
``latentlm compare`` on held-out stories (the synthetic probe scores
well-formed sentences and mentions consistent with the facts the opening
introduced). Training uses a GPU when present. Reruns resume finished or
interrupted steps.

On CPU the denoiser trains ``CPU_DENOISER_STEPS`` (1,550) of the preset's 3,100
steps, so that the job fits 15 minutes on a 2-core machine; the full preset is
what docs/latent_diffusion.md measures.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from latentlm.choices import QUICKSTART_PROMPTS, QUICKSTART_STORIES
from latentlm.data.synthetic import generate_stories, write_jsonl
from latentlm.data.tokenizer import DEFAULT_VOCAB_SIZE, train_tokenizer
from latentlm.device import device_name, mixed_precision_reason, resolve_device
from latentlm.eval.compare import CompareConfig, compare, default_options
from latentlm.eval.models import load_language_model
from latentlm.eval.report import summary_table
from latentlm.recipes import run_training

CPU_DENOISER_STEPS = 1550
N_STORIES = QUICKSTART_STORIES  # training stories
N_PROMPTS = QUICKSTART_PROMPTS  # held-out openings continued by every model


def _trained(folder: Path) -> bool:
    return (folder / "config.json").is_file() or (folder / "model_index.json").is_file()


def quickstart(out: Path, *, n_stories: int = N_STORIES, seed: int = 0, n_prompts: int = N_PROMPTS) -> dict:
    """Run the main job into ``out`` (see the module docstring); returns compare's results."""
    t0 = time.perf_counter()
    device = resolve_device("auto")
    print(f"latentlm quickstart -> {out} (device: {device_name(device)}; training in {mixed_precision_reason()})")
    out.mkdir(parents=True, exist_ok=True)
    train_stories = generate_stories(n_stories, seed=seed)
    held_out = generate_stories(2 * max(n_prompts, 32), seed=seed + 1)  # openings + MAUVE's reference
    train_file = write_jsonl(train_stories, out / "data" / "train.jsonl")
    valid_file = write_jsonl(held_out, out / "data" / "valid.jsonl")
    print(f"[1/7] {n_stories} synthetic stories -> {train_file}")
    tok_dir = out / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        train_tokenizer([s.text for s in train_stories], DEFAULT_VOCAB_SIZE).save_pretrained(tok_dir)
    print(f"[2/7] byte-level BPE tokenizer -> {tok_dir}")

    common = dict(preset="cpu-tiny", valid=[valid_file])
    # on CPU the denoiser trains CPU_DENOISER_STEPS of the preset's steps so that the whole job fits
    # 15 minutes on 2 cores; on a GPU it trains the full preset
    den_over = [] if device.type == "cuda" else [f"train.steps={CPU_DENOISER_STEPS}"]
    steps = [("autoencoder", dict(tokenizer=tok_dir)),
             ("denoiser", dict(autoencoder=out / "autoencoder", overrides=den_over)),
             ("mdlm", dict(tokenizer=tok_dir)), ("ar", dict(tokenizer=tok_dir))]
    for i, (kind, extra) in enumerate(steps, start=3):
        folder = out / kind
        if not _trained(folder):
            run_training(kind, [train_file], folder, **common, **extra)
        print(f"[{i}/7] {kind} trained -> {folder}")

    prompts = [s.split()[0] for s in held_out[:n_prompts]]
    models = {"latent": out / "denoiser", "mdlm": out / "mdlm", "ar": out / "ar"}
    print("\ncontinuations of a held-out opening:")
    print(f"  [opening] {prompts[0]}")
    for name, folder in models.items():
        lm = load_language_model(folder, name, device)
        gen = lm.generate(prompts[:1], 64, generator=torch.Generator().manual_seed(seed), **default_options(lm.kind))
        print(f"  [{name}] ...{gen.continuations[0][:300]}")

    print("\n[7/7] latentlm compare (likelihood, sample quality, consistency, speed)")
    cfg = CompareConfig(prompts=n_prompts, max_new_tokens=64, nll_texts=32, nll_samples=4, cloze_items=32,
                        nfe_sweep=(8, 16, 32, 64), sweep_prompts=16, speed_lengths=(64, 128), seed=seed)
    results = compare(models, valid_file, out / "report", train=train_file, cfg=cfg, progress=True, device=device)
    print("\n" + summary_table(results))
    print(f"\n{len(prompts)} held-out openings, 64 new tokens each; done in {time.perf_counter() - t0:.0f} s; "
          f"models in {out}; report: {out / 'report' / 'report.md'}")
    return results
