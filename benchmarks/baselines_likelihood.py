"""Likelihood of trained language models on a dataset: nats/token and bits per character.

AR is exact; MDLM and the latent model are upper bounds (Monte Carlo, standard error).

    python benchmarks/baselines_likelihood.py --model ar=runs/ar --model mdlm=runs/mdlm \
        --data ../shared/data/tinystories/valid.jsonl [--max-texts N] [--samples 32]
"""

from __future__ import annotations

import argparse
import json
import time

from latentlm.data import read_documents
from latentlm.eval.models import load_language_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=DIR")
    p.add_argument("--data", required=True)
    p.add_argument("--max-texts", type=int)
    p.add_argument("--samples", type=int, default=32, help="Monte Carlo draws per text for bounds")
    p.add_argument("--out", help="JSON file for the results")
    args = p.parse_args()
    texts = read_documents(args.data)[: args.max_texts]
    rows = {}
    for spec in args.model:
        name, _, folder = spec.partition("=")
        lm = load_language_model(folder, name)
        t0 = time.perf_counter()
        res = lm.nll(texts, progress=True) if lm.kind == "ar" else lm.nll(texts, n_samples=args.samples, progress=True)
        rows[name] = {"kind": lm.kind, "nats_per_token": res.nats_per_token, "stderr": res.stderr,
                      "bits_per_char": res.bits_per_char, "exact": res.exact, "n_tokens": res.n_tokens,
                      "n_chars": res.n_chars, "texts": len(texts), "seconds": time.perf_counter() - t0}
    print(f"\n{len(texts)} texts of {args.data}\n")
    print("| model | nats/token | bits/char | kind |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        se = "" if r["exact"] else f" ± {r['stderr']:.4f}"
        print(f"| {name} | {'' if r['exact'] else '<= '}{r['nats_per_token']:.4f}{se} | "
              f"{'' if r['exact'] else '<= '}{r['bits_per_char']:.4f} | {'exact' if r['exact'] else 'bound'} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
