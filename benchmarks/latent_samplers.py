"""Sampler table and likelihood bound of a trained latent pipeline on real text (TinyStories).

    python benchmarks/latent_samplers.py --model runs/denoiser --data ../shared/data/tinystories/valid.jsonl \
        --judge runs/judge [--prompts 32] [--steps 8 16 32 64] [--bound-texts 274] [--bound-samples 8]

For each sampler (DDPM, DDIM, DPM-Solver++, flow-Euler, predictor-corrector =
DDIM + one Langevin corrector step) and step count: wall-clock seconds per
sample (batch of all openings, 2 CPU threads unless told otherwise), NFE, and
quality proxies of the continuations: generation perplexity under the judge,
unigram entropy and rep-4, next to the same numbers on the real continuations.
Then the likelihood bound on the data in nats/token with its standard error.
Prints JSON rows as they come and a markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from latentlm.data.readers import read_documents
from latentlm.eval import metrics as M
from latentlm.eval.compare import CompareConfig, System, judge_scores, openings, perplexity
from latentlm.eval.models import load_language_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--judge", required=True)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--samplers", nargs="+", default=["ddpm", "ddim", "dpm++", "flow-euler", "pc"])
    p.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--bound-texts", type=int, default=0, help="texts for the likelihood bound (0: skip)")
    p.add_argument("--bound-samples", type=int, default=8)
    args = p.parse_args()
    docs = read_documents([args.data])
    cfg = CompareConfig(prompts=args.prompts, max_new_tokens=args.new_tokens)
    pairs = openings(docs, args.prompts, cfg, synthetic=False)
    prompts = [o for o, _ in pairs]
    lm, judge = load_language_model(args.model, "latent"), load_language_model(args.judge, "judge")
    tok = lm.tokenizer
    real = System("real", prompts, [tok.decode(tok(c, add_special_tokens=False)["input_ids"][: args.new_tokens])
                                    for _, c in pairs])
    rows = [{"sampler": "real text", "steps": None, "nfe": None, "s_per_sample": None,
             "gen_ppl": perplexity(judge_scores(judge, real)), "entropy": M.unigram_entropy(real.continuations),
             "rep4": M.rep_n(real.continuations, 4)}]
    print(json.dumps(rows[0]), flush=True)
    for sampler in args.samplers:
        for steps in args.steps:
            pc = sampler == "pc"
            opts = {"num_inference_steps": steps, "scheduler": "ddim" if pc else sampler, "corrector_steps": 1 if pc else 0}
            t0 = time.perf_counter()
            gen = lm.generate(prompts, args.new_tokens, generator=torch.Generator().manual_seed(0), **opts)
            dt = time.perf_counter() - t0
            s = System(sampler, prompts, gen.continuations, gen.texts)
            row = {"sampler": "pc (ddim + langevin)" if pc else sampler, "steps": steps, "nfe": gen.nfe,
                   "s_per_sample": dt / len(prompts), "gen_ppl": perplexity(judge_scores(judge, s)),
                   "entropy": M.unigram_entropy(s.continuations), "rep4": M.rep_n(s.continuations, 4)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nexample ({rows[-1]['sampler']}, {rows[-1]['steps']} steps): {gen.texts[0][:500]}\n")
    print("| sampler | steps | NFE | s/sample | judge gen. PPL | entropy | rep-4 |\n|---|---|---|---|---|---|---|")
    def f(v, fmt: str) -> str:
        return "-" if v is None else fmt.format(v)

    for r in rows:
        print(f"| {r['sampler']} | {f(r['steps'], '{}')} | {f(r['nfe'], '{}')} | {f(r['s_per_sample'], '{:.3f}')} | "
              f"{r['gen_ppl']:.2f} | {r['entropy']:.2f} | {r['rep4']:.3f} |")
    if args.bound_texts:
        texts = docs[: args.bound_texts]
        t0 = time.perf_counter()
        out = lm.nll(texts, n_samples=args.bound_samples, progress=True)
        print(json.dumps({"bound_nats_per_token": out.nats_per_token, "stderr": out.stderr,
                          "bits_per_char": out.bits_per_char, "texts": len(texts), "tokens": out.n_tokens,
                          "samples_per_text": args.bound_samples, "seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()
