"""Train every model kind for a few steps and sample from it; print losses and samples as JSON.

usage: determinism_run.py OUT_DIR SEED
Run twice in two processes: the outputs must be identical (tests/test_reliability.py).
"""

import json
import sys
from pathlib import Path

import torch

from latentlm.data.synthetic import generate_stories, write_jsonl
from latentlm.data.tokenizer import train_tokenizer
from latentlm.eval.models import load_language_model
from latentlm.recipes import run_training

TINY = ["model.dim=32", "train.steps=4", "train.log_every=1", "train.batch_size=4", "train.eval_every=0", "train.warmup_steps=1"]
MODEL = {"ar": ["model.depth=1"], "mdlm": ["model.depth=1"], "denoiser": ["model.depth=1"],
         "autoencoder": ["model.encoder_depth=1", "model.decoder_depth=1", "model.latent_dim=8"]}


def main() -> None:
    out, seed = Path(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)
    stories = generate_stories(200, seed=seed)
    data = write_jsonl(stories, out / "train.jsonl")
    train_tokenizer([s.text for s in stories], 512).save_pretrained(out / "tok")
    result = {}
    for kind in ("autoencoder", "denoiser", "ar", "mdlm"):
        extra = {"autoencoder": out / "autoencoder"} if kind == "denoiser" else {"tokenizer": out / "tok"}
        r = run_training(kind, [data], out / kind, preset="cpu-tiny", overrides=TINY + MODEL[kind] +
                         [f"train.seed={seed}"], progress=False, **extra)
        result[kind] = {"losses": [h["loss"] for h in r.history]}
    prompts = [stories[0].split()[0], ""]
    for kind in ("denoiser", "ar", "mdlm"):
        lm = load_language_model(out / kind)
        gen = lm.generate(prompts, 12, generator=torch.Generator().manual_seed(seed))
        result[kind]["samples"] = gen.texts
    print(json.dumps(result))


if __name__ == "__main__":
    main()
