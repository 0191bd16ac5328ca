"""The Psi-sampler's corrector on synthetic stories: its strength and the times it acts at, against the
well-formed and consistent shares, word entropy and rep-4 of the continuations, at a fixed step count.

Takes a trained duo model (``benchmarks/duo_synthetic.py`` trains one at ``cpu-tiny``) and held-out
synthetic stories; every setting continues the same openings with the same seed.

    python benchmarks/psi_corrector.py --model runs/duo_synthetic/duo --data runs/duo_synthetic/data/valid.jsonl \
        [--prompts 128] [--new-tokens 64] [--steps 64] [--correctors 0 0.1 0.3 0.5 0.7 0.9 1] \
        [--intervals 0,1 0,0.5 0.5,1]
"""

from __future__ import annotations

import argparse
import time

import torch

from latentlm.data.readers import read_documents
from latentlm.eval import metrics as M
from latentlm.eval.compare import CompareConfig, cut_references, openings
from latentlm.eval.consistency import synthetic_probe
from latentlm.eval.models import load_language_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a trained duo model folder")
    p.add_argument("--data", required=True, help="held-out synthetic stories (.jsonl)")
    p.add_argument("--prompts", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--correctors", type=float, nargs="+", default=[0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
    p.add_argument("--intervals", nargs="+", default=["0,1", "0,0.5", "0.5,1"],
                   help="T_LO,T_HI: the times the corrector acts at")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    lm = load_language_model(args.model)
    cfg = CompareConfig(prompts=args.prompts, max_new_tokens=args.new_tokens)
    pairs = openings(read_documents([args.data]), args.prompts, cfg, synthetic=True)
    prompts = [o for o, _ in pairs]
    real = cut_references([c for _, c in pairs], cfg)
    print(f"real text: word entropy {M.unigram_entropy(real):.2f}, rep-4 {M.rep_n(real, 4):.3f} "
          f"({len(prompts)} openings)")
    print("| corrector | interval | well-formed | consistent | word entropy | rep-4 | seconds |")
    print("|---|---|---|---|---|---|---|")
    for c in args.correctors:
        for spec in args.intervals if c > 0 else args.intervals[:1]:  # no corrector: the interval is moot
            lo, hi = (float(x) for x in spec.split(","))
            t0 = time.perf_counter()
            out = lm.generate(prompts, args.new_tokens, generator=torch.Generator().manual_seed(args.seed),
                              decoder="psi", num_inference_steps=args.steps, corrector=c,
                              corrector_interval=(lo, hi))
            probe = synthetic_probe(prompts, out.texts)
            print(f"| {c:g} | [{lo:g}, {hi:g}] | {probe.well_formed:.3f} | {probe.consistent:.3f} | "
                  f"{M.unigram_entropy(out.continuations):.2f} | {M.rep_n(out.continuations, 4):.3f} | "
                  f"{time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
