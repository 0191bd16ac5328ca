"""MDLM decoders at matched NFE: quality against network evaluations.

On synthetic stories the quality is the checker's (share of well-formed
sentences, share of consistent mentions of the prompt's facts); on other text
it is the unigram entropy and the rate of repeated 4-grams of the
continuations (real held-out continuations printed for reference).

    python benchmarks/mdlm_decoders.py --model runs/mdlm --data valid.jsonl [--synthetic] \
        [--prompts 32] [--new-tokens 128] [--nfe 16 32 64 128]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter

import torch

from latentlm.baselines.mdlm_decoders import DECODERS
from latentlm.data import read_documents
from latentlm.data.synthetic import check_story, split_sentences
from latentlm.eval.models import load_language_model


def unigram_entropy(texts: list[str]) -> float:
    words = [w for t in texts for w in t.split()]
    counts = Counter(words)
    n = len(words)
    return -sum(c / n * math.log2(c / n) for c in counts.values()) if n else 0.0


def rep4(texts: list[str]) -> float:
    """Share of 4-grams that repeat an earlier 4-gram of the same text."""
    rep = total = 0
    for t in texts:
        w = t.split()
        grams = [tuple(w[i : i + 4]) for i in range(len(w) - 3)]
        rep += len(grams) - len(set(grams))
        total += len(grams)
    return rep / max(total, 1)


def synthetic_quality(prompts: list[str], texts: list[str]) -> dict:
    wf = cons = n_s = n_m = 0
    for p, t in zip(prompts, texts):
        check = check_story(t)
        skip = len(split_sentences(p))
        sents = check.sentences[skip:]
        ms = [m for m in check.mentions if m.sentence >= skip]
        wf += sum(s.well_formed for s in sents)
        n_s += len(sents)
        cons += sum(m.consistent for m in ms)
        n_m += len(ms)
    return {"well_formed": wf / max(n_s, 1), "consistent": cons / max(n_m, 1), "sentences": n_s, "mentions": n_m}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--synthetic", action="store_true", help="score with the synthetic-story checker")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--prompt-tokens", type=int, default=32, help="prompt length for non-synthetic data")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--nfe", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    args = p.parse_args()
    lm = load_language_model(args.model, "mdlm")
    docs = read_documents(args.data)[: args.prompts]
    if args.synthetic:
        from latentlm.data.synthetic import SyntheticStory  # noqa: F401 - the prompts are the story openings

        prompts = [" ".join(split_sentences(d)[:2]) for d in docs]
    else:
        prompts = [lm.tokenizer.decode(lm.tokenizer(d)["input_ids"][: args.prompt_tokens]) for d in docs]
    rows = []
    for nfe in args.nfe:
        for decoder in DECODERS:
            t0 = time.perf_counter()
            out = lm.generate(prompts, args.new_tokens, decoder=decoder, num_inference_steps=nfe,
                              generator=torch.Generator().manual_seed(args.seed))
            row = {"decoder": decoder, "steps": nfe, "nfe": out.nfe, "seconds": time.perf_counter() - t0,
                   "entropy": unigram_entropy(out.continuations), "rep4": rep4(out.continuations)}
            if args.synthetic:
                row.update(synthetic_quality(prompts, out.texts))
            rows.append(row)
            print(json.dumps(row), flush=True)
    cols = ["decoder", "steps", "nfe"] + (["well_formed", "consistent"] if args.synthetic else []) + ["entropy", "rep4"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    if not args.synthetic:
        real = [d[len(pr):] for d, pr in zip(docs, prompts)]
        print(f"\nreal continuations: entropy {unigram_entropy(real):.3f}, rep4 {rep4(real):.3f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
