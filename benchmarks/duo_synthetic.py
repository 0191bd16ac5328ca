"""Uniform-state diffusion (duo) and score entropy with uniform transitions (SEDD) next to MDLM on the
built-in synthetic stories, cpu-tiny presets.

Trains each on the quickstart's data (4,000 stories, its tokenizer) and compares them with ``compare``:
the synthetic probe's well-formed and consistent shares, the likelihood bounds, and quality against
steps for MDLM's ancestral decoder, duo's ancestral sampler and its Psi-sampler, and SEDD's Tweedie
tau-leaping. Resumable: a finished
model or compare section is reused.

    python benchmarks/duo_synthetic.py --out runs/duo_synthetic [--psi-corrector 0.5] [--prompts 128]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from latentlm.data.synthetic import generate_stories, write_jsonl
from latentlm.data.tokenizer import DEFAULT_VOCAB_SIZE, train_tokenizer
from latentlm.eval.compare import CompareConfig, compare
from latentlm.eval.report import summary_table
from latentlm.recipes import run_training


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--stories", type=int, default=4000)
    p.add_argument("--prompts", type=int, default=128)
    p.add_argument("--psi-corrector", type=float, default=0.5)
    p.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256], help="NFE sweep")
    args = p.parse_args()
    out = Path(args.out)
    train = write_jsonl(generate_stories(args.stories, seed=0), out / "data" / "train.jsonl")
    valid = write_jsonl(generate_stories(2 * max(args.prompts, 32), seed=1), out / "data" / "valid.jsonl")
    tok = out / "tokenizer"
    if not (tok / "tokenizer.json").is_file():
        train_tokenizer([json.loads(line)["text"] for line in train.read_text().splitlines()],
                        DEFAULT_VOCAB_SIZE).save_pretrained(tok)
    seconds = {}
    for kind in ("mdlm", "duo", "sedd"):
        folder = out / kind
        t0 = time.perf_counter()
        if not (folder / "config.json").is_file():
            run_training(kind, [train], folder, preset="cpu-tiny", valid=[valid], tokenizer=tok)
        seconds[kind] = time.perf_counter() - t0
        print(f"{kind}: trained in {seconds[kind]:.0f} s (this run; 0 when it was already trained)")
    cfg = CompareConfig(prompts=args.prompts, nfe_sweep=tuple(args.steps), curves=False, speed_lengths=(64,))
    models = {"mdlm": out / "mdlm", "duo": out / "duo", "duo-psi": out / "duo", "sedd": out / "sedd"}
    options = {"duo-psi": {"decoder": "psi", "corrector": args.psi_corrector}}
    results = compare(models, valid, out / "compare", train=train, cfg=cfg, options=options)
    print(summary_table(results))


if __name__ == "__main__":
    main()
