"""The main job (``latentlm quickstart``, run by ``make demo``).

On the built-in synthetic stories: write the corpus, train the tokenizer and
every model with the ``cpu-tiny`` presets, and print continuations of held-out
story openings with the checker's verdicts. A GPU is used when present.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from latentlm.data.synthetic import check_story, generate_stories, write_jsonl
from latentlm.data.tokenizer import train_tokenizer
from latentlm.generation import generate_text
from latentlm.recipes import run_training


def quickstart(out: Path, *, n_stories: int = 4000, seed: int = 0) -> None:
    t0 = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"latentlm quickstart -> {out} (device: {device})")
    out.mkdir(parents=True, exist_ok=True)
    train_file = write_jsonl(generate_stories(n_stories, seed=seed), out / "data" / "train.jsonl")
    held_out = generate_stories(50, seed=seed + 1)
    valid_file = write_jsonl(held_out, out / "data" / "valid.jsonl")
    print(f"[1/3] wrote {n_stories} synthetic stories to {train_file}")

    tok_dir = out / "tokenizer"
    tok = train_tokenizer([s.text for s in generate_stories(n_stories, seed=seed)], 4096)
    tok.save_pretrained(tok_dir)
    print(f"[2/3] trained a byte-level BPE tokenizer ({len(tok)} tokens) -> {tok_dir}")

    ar_dir = out / "ar"
    result = run_training("ar", [train_file], ar_dir, preset="cpu-tiny", valid=[valid_file],
                          tokenizer=tok_dir)
    print(f"[3/3] trained the autoregressive baseline: valid loss {result.valid_loss:.3f} nats/token")

    print("\ncontinuations of held-out openings (checker: well-formed sentences, consistent mentions):")
    for story in held_out[:3]:
        opening, _ = story.split()
        text = generate_text(ar_dir, opening, max_new_tokens=48, seed=seed)[0]
        check = check_story(text)
        print(f"\n  [ar] {text}\n       well-formed {check.well_formed_rate:.0%}, "
              f"consistent {check.consistency_rate:.0%}")
    print(f"\ndone in {time.perf_counter() - t0:.0f} s; models in {out}")
