"""How wide is a model's MAUVE interval, and how many samples make it narrow?

    python benchmarks/mauve_interval.py --model runs/ts/ar --data ../shared/data/tinystories/test.jsonl \
        [--seeds 1 2 4] [--prompts 100000] [--bootstrap 100] [--cache runs/mauve_ar_test]

Continues every opening of ``--data`` (at most ``--prompts``) ``max(--seeds)`` times with the model's
default options (as ``compare``), then for each count of samples per opening prints MAUVE against the
real continuations and its 95% interval from half-samples of the openings (the interval ``compare``
reports), with the interval's width, and the score under 5 seeds of MAUVE's own quantisation (its
k-means) on the same samples. Samples are cached per batch in ``--cache``: a rerun only scores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from latentlm.data.readers import read_documents
from latentlm.device import resolve_device
from latentlm.errors import LatentLMError
from latentlm.eval import metrics as M
from latentlm.eval.compare import (
    CompareConfig,
    default_options,
    generate_samples,
    is_synthetic,
    openings,
)
from latentlm.eval.models import load_language_model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--prompts", type=int, default=100_000)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--bootstrap", type=int, default=100)
    p.add_argument("--cache", help="folder for the samples (default: none)")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    try:
        run(args)
    except LatentLMError as e:
        print(f"mauve_interval: error: {e}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace) -> None:
    cfg = CompareConfig(prompts=args.prompts, max_new_tokens=args.new_tokens, seeds=max(args.seeds),
                        mauve_bootstrap=args.bootstrap)
    docs = read_documents([args.data])
    pairs = openings(docs, cfg.prompts, cfg, is_synthetic(docs))
    prompts = [p for p, _ in pairs]
    lm = load_language_model(args.model, device=resolve_device(args.device))
    tok = lm.tokenizer
    real = [tok.decode(tok(c, add_special_tokens=False)["input_ids"][: cfg.max_new_tokens]) for _, c in pairs]
    feats_real = M.sentence_embeddings(real)
    cache = Path(args.cache) if args.cache else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    per_seed = []
    for s in range(max(args.seeds)):
        t0 = time.perf_counter()
        rows, _ = generate_samples(lm, prompts, cfg, default_options(lm.kind), seed=cfg.seed + s,
                                   cache=cache / f"seed{s}.partial" if cache else None)
        per_seed.append(M.sentence_embeddings([c for _, c in rows]))
        print(f"seed {s}: {len(rows)} samples in {time.perf_counter() - t0:.0f} s", flush=True)
    n = len(prompts)
    print("| samples per opening | samples | MAUVE | 95% interval | width | 5 k-means seeds |\n"
          "|---|---|---|---|---|---|")
    out = []
    for k in args.seeds:
        feats = np.concatenate(per_seed[:k])
        score = M.mauve_score(feats, feats_real, seed=cfg.seed)
        lo, hi = M.mauve_interval(feats, feats_real, [i % n for i in range(len(feats))], range(n),
                                  n_boot=args.bootstrap, seed=cfg.seed, point=score)
        quantisation = [M.mauve_score(feats, feats_real, seed=s) for s in range(5)]
        out.append({"seeds": k, "samples": len(feats), "mauve": score, "ci": [lo, hi], "width": hi - lo,
                    "quantisation_seeds": quantisation})
        print(f"| {k} | {len(feats)} | {score:.3f} | [{lo:.3f}, {hi:.3f}] | {hi - lo:.3f} | "
              f"{min(quantisation):.3f}-{max(quantisation):.3f} |", flush=True)
    print(json.dumps({"model": args.model, "data": args.data, "openings": n, "rows": out}))


if __name__ == "__main__":
    sys.exit(main())
